"""What custom objects cost a predict task: package size, pack time, open time in a fresh worker.

    PYTHONPATH=src KERAS_BACKEND=tensorflow python bench/custom_objects_bench.py

A scoring worker opens the model package once (then caches it by id), so the cost
per task is the open in a fresh Python worker. Prints one JSON line: for the same
model with built-in layers and with a custom layer, loss and metric defined in this
script (`__main__`, shipped by value), the package bytes, driver pack seconds, and
the median open seconds over fresh processes (Keras and keras_spark already imported, not
timed), and of that the seconds to unpickle the custom objects. The two models have the
same shape: Dense, a scaling layer (Rescaling / the custom Scale), Dense; mse+mae / custom.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import keras

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_custom_objects import WorstError, custom_model, halved_mse  # noqa: E402,F401  defined outside any package

from keras_spark.model_package import pack_model, read_package  # noqa: E402

_OPEN = """
import sys, time, json
import keras
import keras_spark.models  # what every worker imports anyway: not part of the package's cost
from pyspark import cloudpickle
from keras_spark.model_package import open_model, read_package
package = open(sys.argv[1], "rb").read()
started = time.perf_counter()
cloudpickle.loads(read_package(package)["custom_objects"])
unpickled = time.perf_counter() - started
started = time.perf_counter()
open_model(package, compile=False)
print(json.dumps([time.perf_counter() - started, unpickled]))
"""


def plain_model():
    x = keras.Input(shape=(4,), name="x")
    h = keras.layers.Dense(8, activation="relu")(x)
    model = keras.Model(x, keras.layers.Dense(1, name="y")(keras.layers.Rescaling(2.0)(h)))
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return model


def measure(model, repeats: int = 7) -> dict:
    started = time.perf_counter()
    package = pack_model(model)
    pack_s = time.perf_counter() - started
    parts = read_package(package)
    with tempfile.NamedTemporaryFile(suffix=".pkg", delete=False) as f:
        f.write(package)
    opens = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", _OPEN, f.name], capture_output=True, text=True, check=True)
        opens.append(json.loads(done.stdout.strip().splitlines()[-1]))
    unpickle = [u for _, u in opens]
    opens = [o for o, _ in opens]
    os.unlink(f.name)
    return {"package_bytes": len(package), "keras_bytes": len(parts["keras"]),
            "custom_object_bytes": len(parts["custom_objects"]), "custom_objects": parts["custom_object_names"],
            "pack_s": round(pack_s, 4), "open_s_median": round(statistics.median(opens), 4),
            "open_s_all": [round(s, 4) for s in opens], "unpickle_custom_objects_s_median": round(
                statistics.median(unpickle), 5)}


if __name__ == "__main__":
    print(json.dumps({"backend": keras.backend.backend(), "builtin_only": measure(plain_model()),
                      "custom_layer_loss_metric": measure(custom_model())}))

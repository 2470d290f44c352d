"""fit(num_workers=2) under JAX with the custom objects of test_custom_objects and a weight column; then a
custom layer whose base class lives in the user's own module.

Run by test_custom_objects in its own process; prints `RESULT {...}`. The custom
layer, loss and metric live in test_custom_objects, a module the executors cannot
import (their PYTHONPATH has no tests/ folder), so they must travel by value.

The second model's layer `Scaled` is defined here (in `__main__`) on a base class from `mylayers`,
a module written into a temporary folder that only this driver's sys.path holds (not PYTHONPATH,
not the executors' working directory): `mylayers` must travel with the model by value too.
"""

import json
import os
import sys
import tempfile
import textwrap

os.environ["KERAS_BACKEND"] = "jax"
os.environ["PYSPARK_PYTHON"] = sys.executable
# A classic session, even when the test run started this process during its Connect tests.
for _name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):
    os.environ.pop(_name, None)
sys.path.insert(0, os.path.dirname(__file__))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

spark = (SparkSession.builder.master("local-cluster[2,1,1024]").config("spark.ui.enabled", "false")
         .config("spark.sql.shuffle.partitions", "4").getOrCreate())
spark.sparkContext.setLogLevel("OFF")

from builders import numeric_frame, to_numpy  # noqa: E402
from test_custom_objects import custom_model  # noqa: E402

from keras_spark.models import KerasSparkModel  # noqa: E402

df = numeric_frame(spark, 800, 4).withColumn("w", (F.col("id") % 2 + 1).cast("double"))
keras.utils.set_random_seed(5)
model = custom_model()
history = model.fit(df, batch_size=64, epochs=3, verbose=0, num_workers=2, sample_weight="w")
(x,) = to_numpy(df, "x")
scored = model.predict(df).orderBy("id").select("model_output.y").collect()
diff = float(np.abs(np.array([r[0] for r in scored]) - model.predict(x, verbose=0).reshape(-1)).max())
# Weighted rows with workers end as on one worker: distributed_run's every_kind (both engines).
result = {"history_keys": sorted(history.history), "loss": history.history["loss"], "max_score_diff": diff}

# -- a custom layer whose base lives in the user's own module ---------------------------------
_MYLAYERS = textwrap.dedent("""
    import keras


    def scaled(x, factor):
        return x * factor


    class Base(keras.layers.Layer):
        def __init__(self, factor=2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return scaled(x, self.factor)  # a function of this module, reached from the subclass's method

        def get_config(self):
            return dict(super().get_config(), factor=self.factor)
""")
helpers = tempfile.mkdtemp(prefix="user_helpers_")
with open(os.path.join(helpers, "mylayers.py"), "w") as f:
    f.write(_MYLAYERS)
sys.path.insert(0, helpers)  # the driver only
import mylayers  # noqa: E402


class Scaled(mylayers.Base):
    """Not registered, defined in the script; its base and the base's helper come from mylayers."""


def _executors_import_mylayers(_):
    import importlib.util

    yield importlib.util.find_spec("mylayers") is not None


result["executors_find_mylayers"] = any(spark.sparkContext.parallelize(range(2), 2)
                                        .mapPartitions(_executors_import_mylayers).collect())
keras.utils.set_random_seed(6)
inputs = keras.Input(shape=(4,), name="x")
scaled = KerasSparkModel(inputs, keras.layers.Dense(1, name="y")(Scaled(3.0)(keras.layers.Dense(4)(inputs))))
scaled.compile("adam", "mse")
objects = {"Scaled": Scaled}
scored = scaled.predict(df, custom_objects=objects).orderBy("id").select("model_output.y").collect()
result["base_module_score_diff"] = float(
    np.abs(np.array([r[0] for r in scored]) - scaled.predict(x, verbose=0).reshape(-1)).max())
history = scaled.fit(df, batch_size=64, epochs=2, verbose=0, num_workers=2, custom_objects=objects)
result["base_module_loss"] = history.history["loss"]
print("RESULT " + json.dumps(result), flush=True)
spark.stop()

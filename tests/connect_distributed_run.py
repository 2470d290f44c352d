"""fit(num_workers=2) under JAX or PyTorch (KERAS_BACKEND) through a Spark Connect server (run by test_connect).

The server's URL comes in KERAS_SPARK_CONNECT_URL. Prints one JSON line per scenario:
`RESULT {"name": ..., ...}`.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"

import keras  # noqa: E402
import numpy as np  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql.connect.session import SparkSession  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from builders import numeric_frame, regression_model  # noqa: E402

spark = SparkSession.builder.remote(os.environ["KERAS_SPARK_CONNECT_URL"]).getOrCreate()


def report(name, **figures):
    print("RESULT " + json.dumps(dict(name=name, **figures)), flush=True)


def trains_with_validation():
    keras.utils.set_random_seed(3)
    df, val = numeric_frame(spark, 4000, 4), numeric_frame(spark, 512, 2, seed=5)
    model = regression_model()
    history = model.fit(df, batch_size=64, epochs=3, num_workers=2, validation_data=val, verbose=0)
    report("trains_with_validation", loss=history.history["loss"], keys=sorted(history.history),
           stats=model.data_stats)


class FailAtEpoch1(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        from keras_spark import worker_rank

        if epoch == 1 and worker_rank() == 1:
            raise ValueError("this worker failed on purpose at epoch 1")


def worker_raises():
    try:
        regression_model().fit(numeric_frame(spark, 1000, 4), batch_size=32, epochs=3, num_workers=2,
                               callbacks=[FailAtEpoch1()], verbose=0)
        report("worker_raises", raised=None)
    except Exception as error:  # noqa: BLE001  the test checks the type
        report("worker_raises", raised=type(error).__name__, message=str(error)[:2000])


def big_weights_come_back_in_parts():
    # ~150 MB of weights and as much Adam state: more than one Connect message (128 MiB).
    keras.utils.set_random_seed(3)
    x = keras.Input((4,), name="x")
    h = keras.layers.Dense(6000)(keras.layers.Dense(6000)(x))
    model = __import__("keras_spark.models", fromlist=["KerasSparkModel"]).KerasSparkModel(
        x, keras.layers.Dense(1, name="y")(h))
    model.compile("adam", "mse")
    df = numeric_frame(spark, 64, 2).withColumn("y", F.col("y") / 4)
    model.fit(df, batch_size=32, epochs=1, num_workers=2, verbose=0)
    report("big_weights", params=int(model.count_params()),
           iterations=int(model.optimizer.iterations.numpy()), finite=bool(np.isfinite(model.get_weights()[0]).all()))


# KERAS_SPARK_BIG_WEIGHTS=1 runs only the (slow, opt-in) check that weights over 128 MiB return.
scenarios = [big_weights_come_back_in_parts] if os.environ.get("KERAS_SPARK_BIG_WEIGHTS") else [
    trains_with_validation, worker_raises]
for scenario in scenarios:
    scenario()
spark.stop()

"""A fit that a test interrupts from outside (run by test_cleanup): `python lifecycle_run.py PHASE`.

PHASE:
- spark_pass: fit over a slow source; writes `$MARKER_DIR/spark_pass` once the Spark pass runs.
- epoch: fit for many epochs; prints `TRAINING` once a few steps are done.
- abandon: fit in a daemon thread; the main thread returns once training runs (the process exits).
The test sends a signal (or waits for the exit) and then inspects TMPDIR and the processes.
"""

import os
import sys
import threading
import time

# A classic session, even when the test run started this process during its Connect tests.
for _name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):
    os.environ.pop(_name, None)
os.environ["PYSPARK_PYTHON"] = sys.executable
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
from builders import numeric_frame, regression_model  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402

phase = sys.argv[1]
marker_dir = os.environ["MARKER_DIR"]
spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
spark.sparkContext.setLogLevel("OFF")


class Training(keras.callbacks.Callback):
    def __init__(self, started: threading.Event):
        super().__init__()
        self.started = started

    def on_train_batch_end(self, batch, logs=None):
        if batch == 3:
            print("TRAINING", flush=True)
            self.started.set()


def slow_source(rows: int):
    def slow(batches):
        open(os.path.join(marker_dir, "spark_pass"), "a").close()
        for batch in batches:
            time.sleep(2.0)
            yield batch

    df = numeric_frame(spark, rows, 4)
    return df.mapInArrow(slow, df.schema)


started = threading.Event()
model = regression_model()
if phase == "spark_pass":
    model.fit(slow_source(100_000), batch_size=32, epochs=1, verbose=0)
elif phase == "epoch":
    model.fit(numeric_frame(spark, 20_000, 4), batch_size=32, epochs=1000, verbose=0, callbacks=[Training(started)])
elif phase == "abandon":
    df = numeric_frame(spark, 20_000, 4)
    fit = threading.Thread(daemon=True, target=lambda: model.fit(
        df, batch_size=32, epochs=1000, verbose=0, callbacks=[Training(started)]))
    fit.start()
    started.wait(300)
print("RETURNED", flush=True)

"""Fake-GPU scenarios in their own process (run by test_gpu): which GPUs each worker pinned.

    python tests/gpu_run.py predict [train]     (or KERAS_SPARK_TEST_SCENARIOS=predict,train)

A local-cluster[2,2,1024] application (two executors of two cores) whose workers discover
two GPUs through a script that only prints addresses; each executor takes one GPU
(spark.executor.resource.gpu.amount=1) and each task half of one (task amount 0.5), so
the two tasks of an executor share its GPU. Every scoring and training process appends
what it pinned to $KERAS_SPARK_DEVICE_LOG; each scenario prints `RESULT {json}`.
"""

import os
import shutil
import sys
import tempfile
import time

for _name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):  # a classic session, always
    os.environ.pop(_name, None)
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["TMPDIR"] = run_tmp = tempfile.mkdtemp(prefix="gpu_run_tmp_")
tempfile.tempdir = None
log_root = os.path.join(run_tmp, "device_logs")
discovery = os.path.join(run_tmp, "fake_gpus.sh")
with open(discovery, "w") as f:
    f.write('#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0", "1"]}\'\n')
os.chmod(discovery, 0o755)

import keras  # noqa: E402
from builders import frame_of_sizes, report  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402

from keras_spark.devices import DEVICE_LOG_ENV, read_log  # noqa: E402
from keras_spark.models import KerasSparkModel  # noqa: E402

started = time.perf_counter()
# Executors (and their training processes) inherit the driver's environment as it is now.
os.environ[DEVICE_LOG_ENV] = os.path.join(log_root, "session")
spark = (
    SparkSession.builder.master("local-cluster[2,2,1024]").config("spark.ui.enabled", "false")
    .config("spark.sql.shuffle.partitions", "4")
    .config("spark.worker.resource.gpu.discoveryScript", discovery)
    .config("spark.worker.resource.gpu.amount", "2")
    .config("spark.executor.resource.gpu.amount", "1")
    .config("spark.task.resource.gpu.amount", "0.5")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("OFF")
session_s = time.perf_counter() - started


def frame(sizes, seed=0):
    return frame_of_sizes(spark, sizes, seed)


def model():
    keras.utils.set_random_seed(3)
    x = keras.Input((4,), name="x")
    m = KerasSparkModel(x, keras.layers.Dense(1, name="y")(x))
    m.compile("sgd", "mse")
    return m


def predict():
    """Eight scoring tasks on two executors of one GPU each, two at a time per executor."""
    start = time.perf_counter()
    scored = model().predict(frame([400] * 8).repartition(8)).count()
    entries = [e for e in read_log(os.environ[DEVICE_LOG_ENV]) if e["role"] == "score"]
    report("predict", rows=scored, records=[e for e in entries if e["event"] == "pin"],
           after_import=[e for e in entries if e["event"] == "after_import"],
           seconds=time.perf_counter() - start, session_s=session_s)


def train():
    """num_workers=2 asks one whole GPU a process; num_workers=3 cannot have one each (2 executors x 1 GPU)."""
    start = time.perf_counter()
    m = model()
    m.fit(frame([300, 300, 300, 300]), batch_size=32, epochs=1, verbose=0, num_workers=2)
    records = [e for e in read_log(os.environ[DEVICE_LOG_ENV]) if e["role"] == "train"]
    refused = None
    try:
        model().fit(frame([100, 100, 100]), batch_size=30, epochs=1, verbose=0, num_workers=3)
    except ValueError as error:
        refused = str(error)
    report("train", records=records, devices_per_worker=m.data_stats["devices_per_worker"], refused=refused,
           seconds=time.perf_counter() - start)


for scenario in sys.argv[1:] or os.environ.get("KERAS_SPARK_TEST_SCENARIOS", "predict").split(","):
    globals()[scenario]()
spark.stop()
shutil.rmtree(run_tmp, ignore_errors=True)

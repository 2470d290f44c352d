"""Fake-GPU scenarios in their own process (run by test_gpu): which GPU each task used.

    python tests/gpu_run.py reuse predict [train]    (or KERAS_SPARK_TEST_SCENARIOS=reuse,predict,train)

Workers discover two GPUs through a script that only prints addresses. Two applications, one
after the other, each shared by its scenarios:
- "whole" (reuse): local-cluster[1,2,2048], one executor with both GPUs, one whole GPU a task
  and Spark's defaults otherwise (Python workers reused), so a worker serves tasks of both GPUs;
- "shared" (predict, train): local-cluster[2,2,1024], two executors of one GPU each and half a
  GPU a task (task amount 0.5), so the two tasks of an executor share its GPU.
Every scoring and training process appends what it used to $KERAS_SPARK_DEVICE_LOG; each
scenario prints `RESULT {json}`.
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
from pyspark.sql import functions as F  # noqa: E402

from keras_spark.devices import DEVICE_LOG_ENV, read_log  # noqa: E402
from keras_spark.models import KerasSparkModel  # noqa: E402

APPLICATIONS = {  # the GPU settings of each application, beside the fake discovery script
    "whole": ("local-cluster[1,2,2048]", {"spark.worker.resource.gpu.amount": "2",
                                          "spark.executor.resource.gpu.amount": "2",
                                          "spark.task.resource.gpu.amount": "1"}),
    "shared": ("local-cluster[2,2,1024]", {"spark.sql.shuffle.partitions": "4",
                                           "spark.worker.resource.gpu.amount": "2",
                                           "spark.executor.resource.gpu.amount": "1",
                                           "spark.task.resource.gpu.amount": "0.5"}),
}
SCENARIO_APPLICATION = {"reuse": "whole", "predict": "shared", "train": "shared"}
spark = None


def start(application: str) -> float:
    """Starts `application` (stopping the one before); seconds it took."""
    global spark
    if spark is not None:
        spark.stop()
    started = time.perf_counter()
    # The executors (and their Python workers and training processes) log there: the JVM's own
    # environment is the driver's as it was when the first application started.
    os.environ[DEVICE_LOG_ENV] = os.path.join(log_root, application)
    master, conf = APPLICATIONS[application]
    builder = (SparkSession.builder.master(master).config("spark.ui.enabled", "false")
               .config(f"spark.executorEnv.{DEVICE_LOG_ENV}", os.environ[DEVICE_LOG_ENV])
               .config("spark.worker.resource.gpu.discoveryScript", discovery))
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("OFF")
    return time.perf_counter() - started


def frame(sizes, seed=0):
    return frame_of_sizes(spark, sizes, seed)


def model():
    keras.utils.set_random_seed(3)
    x = keras.Input((4,), name="x")
    m = KerasSparkModel(x, keras.layers.Dense(1, name="y")(x))
    m.compile("sgd", "mse")
    return m


def reuse(session_s):
    """Three predicts of 4,000 rows in 16 tasks on one executor with GPUs 0 and 1, two reused workers."""
    start_s = time.perf_counter()
    m = model()
    df = spark.range(4000, numPartitions=16).select(F.array(*(F.col("id").cast("float") * k for k in (1, -1, 2, 0.5)))
                                                    .alias("x"))
    counts = [m.predict(df).count() for _ in range(3)]
    entries = [e for e in read_log(os.environ[DEVICE_LOG_ENV]) if e["role"] == "score"]
    report("reuse", counts=counts, pins=[e for e in entries if e["event"] == "pin"],
           scored=[e for e in entries if e["event"] == "scored"], seconds=time.perf_counter() - start_s,
           session_s=session_s)


def predict(session_s):
    """Eight scoring tasks on two executors of one GPU each, two at a time per executor."""
    start_s = time.perf_counter()
    scored = model().predict(frame([400] * 8).repartition(8)).count()
    entries = [e for e in read_log(os.environ[DEVICE_LOG_ENV]) if e["role"] == "score"]
    report("predict", rows=scored, records=[e for e in entries if e["event"] == "pin"],
           scored=[e for e in entries if e["event"] == "scored"],
           after_import=[e for e in entries if e["event"] == "after_import"],
           seconds=time.perf_counter() - start_s, session_s=session_s)


def train(session_s):
    """num_workers=2 asks one whole GPU a process; num_workers=3 cannot have one each (2 executors x 1 GPU)."""
    start_s = time.perf_counter()
    m = model()
    m.fit(frame([300, 300, 300, 300]), batch_size=32, epochs=1, verbose=0, num_workers=2)
    records = [e for e in read_log(os.environ[DEVICE_LOG_ENV]) if e["role"] == "train"]
    refused = None
    try:
        model().fit(frame([100, 100, 100]), batch_size=30, epochs=1, verbose=0, num_workers=3)
    except ValueError as error:
        refused = str(error)
    report("train", records=records, devices_per_worker=m.data_stats["devices_per_worker"], refused=refused,
           seconds=time.perf_counter() - start_s, session_s=session_s)


scenarios = sys.argv[1:] or os.environ.get("KERAS_SPARK_TEST_SCENARIOS", "predict").split(",")
for application in APPLICATIONS:  # one application for all its scenarios
    mine = [name for name in scenarios if SCENARIO_APPLICATION[name] == application]
    session_s = start(application) if mine else 0.0
    for scenario in mine:
        globals()[scenario](session_s)
        session_s = 0.0
if spark is not None:
    spark.stop()
shutil.rmtree(run_tmp, ignore_errors=True)

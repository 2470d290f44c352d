"""Python workers killed mid-task, with task retries (run by test_faults in its own process).

The master is local[2,4]: two task slots and up to four attempts a task, as a cluster
retries failed tasks. A thread kills one Spark Python worker (SIGKILL) while a job runs;
Spark reruns the task. Prints one `RESULT {json}` line per scenario.
"""

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

# A classic session, even when the test run started this process during its Connect tests.
for _name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):
    os.environ.pop(_name, None)
os.environ["PYSPARK_PYTHON"] = sys.executable
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from builders import numeric_frame, regression_model  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

TAG = os.environ["KERAS_SPARK_TEST_TAG"]  # in every process this run starts: how we find our workers
spark = (SparkSession.builder.master("local[2,4]").config("spark.ui.enabled", "false")
         .config("spark.sql.execution.arrow.maxRecordsPerBatch", "500").getOrCreate())
spark.sparkContext.setLogLevel("OFF")


def report(name, **figures):
    print("RESULT " + json.dumps(dict(name=name, **figures)), flush=True)


def _python_workers() -> list[int]:
    """Our Spark Python workers: the processes forked by our pyspark.daemon."""
    daemons, children = set(), {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if TAG.encode() not in Path(f"/proc/{pid}/environ").read_bytes():
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if b"pyspark.daemon" in cmdline:
            daemons.add(int(pid))
            children[int(pid)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return [pid for pid, parent in children.items() if parent in daemons]


class Killer:
    """Kills the Python workers once a job of `group` has run for `after_s` seconds.

    All of them at one instant: a worker between two tasks (reused, idle) fails nothing, and which
    one is busy cannot be told from outside; with more tasks than cores, some worker is busy."""

    def __init__(self, group: str, after_s: float):
        self.group, self.after_s, self.killed = group, after_s, []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        tracker = spark.sparkContext.statusTracker()
        while not tracker.getJobIdsForGroup(self.group):
            time.sleep(0.05)
        time.sleep(self.after_s)
        while not self.killed:
            workers = _python_workers()
            if workers and tracker.getActiveStageIds():
                for pid in workers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.killed.extend(workers)
            time.sleep(0.05)

    def failed_tasks(self) -> int:
        tracker = spark.sparkContext.statusTracker()
        stages = [s for j in tracker.getJobIdsForGroup(self.group) for s in tracker.getJobInfo(j).stageIds]
        return sum(tracker.getStageInfo(s).numFailedTasks for s in stages if tracker.getStageInfo(s))


def scoring_worker_killed():
    rows = 20_000
    df = numeric_frame(spark, rows, 8, spark_partitions=8)
    model = regression_model()
    spark.sparkContext.setJobGroup("scoring", "scoring with a worker killed")
    killer = Killer("scoring", after_s=1.0)
    scored = model.predict(df, batch_size=16).select("id", "x", "model_output").collect()
    spark.sparkContext.setJobGroup("other", "")
    ids = [r["id"] for r in scored]
    x = np.array([r["x"] for r in scored], np.float32)
    expected = model.predict(x, batch_size=1024, verbose=0).reshape(-1)
    got = np.array([r["model_output"]["y"] for r in scored], np.float32).reshape(-1)
    report("scoring_worker_killed", rows=len(ids), distinct=len(set(ids)), expected_rows=rows,
           max_diff=float(np.abs(got - expected).max()), killed=killer.killed, failed_tasks=killer.failed_tasks())


class RowSums(keras.metrics.Metric):
    """Sum and count of the label over an epoch: every row once gives exactly the DataFrame's."""

    def __init__(self, name="row_sum", what="sum", **kwargs):
        super().__init__(name=name, **kwargs)
        self.what = what
        # float32 (JAX runs without x64): labels are small integers, so every sum is exact.
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "float32")
        self.total.assign_add(keras.ops.sum(y) if self.what == "sum" else keras.ops.cast(keras.ops.size(y), "float32"))

    def result(self):
        return keras.ops.convert_to_tensor(self.total)


def fit_pass_worker_killed():
    rows, epochs = 6000, 2

    def slow(batches):
        for batch in batches:
            time.sleep(0.3)
            yield batch

    df = numeric_frame(spark, rows, 6, spark_partitions=6).withColumn("y", (F.col("id") % 7).cast("float"))
    source = df.mapInArrow(slow, df.schema)
    model = regression_model()
    model.compile("sgd", "mse", metrics=[RowSums("row_sum", "sum"), RowSums("row_count", "count")])
    spark.sparkContext.setJobGroup("fit", "fit with a worker killed in the Spark pass")
    killer = Killer("fit", after_s=0.5)
    history = model.fit(source, batch_size=64, epochs=epochs, verbose=0)
    spark.sparkContext.setJobGroup("other", "")
    report("fit_pass_worker_killed", row_sum=history.history["row_sum"], row_count=history.history["row_count"],
           expected_sum=float(sum(i % 7 for i in range(rows))), expected_count=rows,
           rows_trained=model.data_stats["rows"], epochs=epochs, killed=killer.killed,
           failed_tasks=killer.failed_tasks())


for scenario in sys.argv[1:] or ["scoring_worker_killed", "fit_pass_worker_killed"]:
    globals()[scenario]()
spark.stop()

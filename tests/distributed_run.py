"""fit(num_workers=2) scenarios under JAX or PyTorch (KERAS_BACKEND) in their own process (run by test_distributed).

Prints one JSON line per scenario: `RESULT {"name": ..., ...}`. The master is
local-cluster[2,1,1024]: two executors, and a second attempt for a failed barrier stage.
"""

import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

# A classic session, even when the test run started this process during its Connect tests.
for _name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):
    os.environ.pop(_name, None)

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ["PYSPARK_PYTHON"] = sys.executable
# Executors and their training processes inherit these: a temporary directory of this run's
# own (where the workers' caches go) and a tag that finds every process this run started.
os.environ["TMPDIR"] = run_tmp = tempfile.mkdtemp(prefix="dp_run_tmp_")
tempfile.tempdir = None
os.environ["KERAS_SPARK_TEST_TAG"] = run_tag = f"keras_spark_dp_{uuid.uuid4().hex}"

import keras  # noqa: E402
import numpy as np  # noqa: E402
from builders import frame_of_sizes, report  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402

from keras_spark import worker_rank  # noqa: E402
from keras_spark.models import KerasSparkModel  # noqa: E402

# Two executor JVMs of one core each: the closest this machine gets to a cluster. A failed
# barrier stage gets one rerun (spark.task.maxFailures=2).
spark = (SparkSession.builder.master("local-cluster[2,1,1024]").config("spark.ui.enabled", "false")
         .config("spark.task.maxFailures", "2").config("spark.sql.shuffle.partitions", "4").getOrCreate())
spark.sparkContext.setLogLevel("OFF")
scratch = tempfile.mkdtemp(prefix="dp_test_")


def frame(sizes, seed=0):
    return frame_of_sizes(spark, sizes, seed, scale=2.0, offset=1.0)


def model():
    keras.utils.set_random_seed(3)
    x = keras.Input((4,), name="x")
    h = keras.layers.Dense(8, activation="tanh")(x)
    m = KerasSparkModel(x, keras.layers.Dense(1, name="y")(h))
    m.compile(keras.optimizers.SGD(0.05), "mse", metrics=["mae"])
    return m


def one_and_two(make_model, df, **kwargs):
    """The same model fit on one worker and on two: (history of 1, history of 2, largest weight gap, model of 2).

    Round-robin interleave of 4 equal ids = two workers each interleaving 2 of them: every
    global batch holds the same rows, so the weights must agree.
    """
    one, two = make_model(), make_model()
    kwargs = dict(epochs=2, shuffle=False, num_parallel_calls=4, verbose=0, **kwargs)
    h1 = one.fit(df, **kwargs)
    h2 = two.fit(df, num_workers=2, **kwargs)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(one.get_weights(), two.get_weights(), strict=True))
    return h1, h2, diff, two


SPARSE_INPUTS = keras.backend.backend() == "jax"  # Keras has no sparse inputs under PyTorch


def every_kind():
    """Every column kind in one model (dense, sequence, image, vector, sparse vector under JAX) with a weight
    column and validation: two workers end with one worker's weights and the same metrics."""
    df, val = kinds_frame([160, 160, 160, 160]), kinds_frame([64, 64], seed=5)  # val: whole steps, no pads
    h1, h2, diff, two = one_and_two(kinds_model, df, batch_size=32, validation_data=val, sample_weight="w")
    report("every_kind", max_weight_diff=diff, history1=h1.history, history2=h2.history, epochs=h2.epoch,
           rows=two.data_stats["rows"], optimizer_iterations=int(two.optimizer.iterations.numpy()))


def uneven():
    """Uneven ids and bucketed sequences (and sparse rows under JAX): every row once an epoch; the second
    worker has no validation rows and pads every validation step."""
    sizes = [1500, 700, 300, 37]
    m = kinds_model(inputs=("x", "tokens", "v", "s"))
    h = m.fit(kinds_frame(sizes, seed=1, images=False), batch_size=32, epochs=3, verbose=0, num_workers=2,
              bucket_by_length=True, validation_data=kinds_frame([100], seed=2, images=False))
    report("uneven", total=sum(sizes), stats={k: v for k, v in m.data_stats.items() if k != "step_s"},
           loss=h.history["loss"], history_keys=sorted(h.history))


class RaiseOnRank1(keras.callbacks.Callback):
    """Callbacks run on every worker; this one fails only the second (not the chief), noting when in `stamp`
    (the executors share this machine's clock and disk)."""

    def __init__(self, stamp: str):
        super().__init__()
        self.stamp = stamp

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1 and worker_rank() == 1:
            with open(self.stamp, "w") as f:
                f.write(repr(time.time()))
            raise ValueError("this worker failed on purpose at epoch 1")


def _training_processes() -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            tagged = run_tag.encode() in Path(f"/proc/{pid}/environ").read_bytes()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if tagged and b"keras_spark.training_worker" in cmdline:
            found.append(pid)
    return found


def _left_behind(cache_dir: str, seconds: float = 20.0) -> tuple[list[str], list[str]]:
    """keras_spark_* directories (executors' temp dir and cache_dir) and training processes still there."""
    def left():
        folders = [d for d in (run_tmp, cache_dir) if os.path.isdir(d)]
        dirs = [name for d in folders for name in os.listdir(d) if name.startswith("keras_spark_")]
        return dirs, _training_processes()

    deadline = time.monotonic() + seconds
    while any(left()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left()


def worker_raises():
    cache_dir = os.path.join(scratch, "worker_raises_cache")
    for run, kwargs in enumerate([{}, {"cache_dir": cache_dir}]):
        m = model()
        stamp = os.path.join(scratch, f"worker_raised_{run}")
        try:
            m.fit(frame([400, 400]), batch_size=32, epochs=3, verbose=0, num_workers=2,
                  callbacks=[RaiseOnRank1(stamp)], **kwargs)
            raised = {"raised": None}
        except Exception as error:  # noqa: BLE001  the test asserts the type and message
            # From the worker's failure to fit's error: the start of the stage (processes, imports) is not a hang.
            with open(stamp) as f:
                seconds = time.time() - float(f.read())
            raised = dict(raised=type(error).__name__, message=str(error)[:500], seconds_after_failure=seconds)
        dirs, processes = _left_behind(cache_dir)
        report("worker_raises" if run == 0 else "worker_raises_cache_dir", dirs_left=dirs, processes_left=processes,
               **raised)


class FailOnce(keras.callbacks.Callback):
    """Records each epoch it sees; raises once, at the end of epoch 1 of the first attempt."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def on_epoch_end(self, epoch, logs=None):
        if worker_rank() != 0:
            return
        with open(os.path.join(self.folder, "epochs.txt"), "a") as f:
            f.write(f"{epoch}\n")
        marker = os.path.join(self.folder, "failed_once")
        if epoch == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("simulated crash after epoch 1")


def resume_after_failure():
    folder = tempfile.mkdtemp(dir=scratch)
    backup = keras.callbacks.BackupAndRestore(os.path.join(folder, "backup"))
    m = model()
    h = m.fit(frame([500, 500, 500]), batch_size=32, epochs=4, verbose=0, num_workers=2,
              callbacks=[backup, FailOnce(folder)])
    with open(os.path.join(folder, "epochs.txt")) as f:
        seen = [int(line) for line in f]
    report("resume_after_failure", epochs_seen=seen, history_epochs=h.epoch, loss=h.history["loss"])


def kinds_frame(sizes, seed=0, images=True):
    """Partition id i holding sizes[i] rows of every column kind, and y built from all of them:
    x (4 floats), tokens (1..30 ids, 0 pads), img (8x8 RGB PNG), v (a Spark ML vector fed densified),
    s (a 40-wide Spark ML vector of 0..9 non-zeros, some stored dense), w (weights 0, 0.5 or 2)."""
    from image_builders import encode
    from pyspark.ml.linalg import DenseVector, SparseVector, VectorUDT
    from pyspark.sql import types as T

    rng = np.random.default_rng(seed)
    data = []
    for pid, n in enumerate(sizes):
        for r in range(n):
            x = rng.normal(size=4).astype("float32")
            tokens = rng.integers(1, 20, size=rng.integers(1, 31)).astype("int32")
            pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            v = rng.normal(size=4)
            idx = np.sort(rng.choice(40, int(rng.integers(0, 10)), replace=False))
            dense = np.zeros(40)
            dense[idx] = rng.normal(size=len(idx))
            s = DenseVector(dense) if r % 9 == 4 else SparseVector(40, idx, dense[idx])
            y = x.sum() + tokens.mean() / 10 + pixels.mean() / 255 + v.sum()
            y += dense @ np.linspace(-1, 1, 40) if SPARSE_INPUTS else 0.0  # a term the model can learn
            data.append((pid, x.tolist(), tokens.tolist(), encode(pixels, "PNG") if images else None,
                         DenseVector(v), s, float(y), float(rng.choice([0.0, 0.5, 2.0]))))
    types = {"partition_id": T.IntegerType(), "x": T.ArrayType(T.FloatType()), "tokens": T.ArrayType(T.IntegerType()),
             "img": T.BinaryType(), "v": VectorUDT(), "s": VectorUDT(), "y": T.DoubleType(), "w": T.DoubleType()}
    schema = T.StructType([T.StructField(name, kind) for name, kind in types.items()])
    frame = spark.createDataFrame(data, schema)
    return frame if images else frame.drop("img")


def kinds_model(inputs=("x", "tokens", "img", "v", "s")):
    """One branch per input kind (the sparse one under JAX only), concatenated into y."""
    keras.utils.set_random_seed(5)
    branches, feeds = [], []
    if "x" in inputs:
        feeds.append(keras.Input((4,), name="x"))
        branches.append(keras.layers.Dense(8, activation="tanh")(feeds[-1]))
    if "tokens" in inputs:
        feeds.append(keras.Input((None,), dtype="int32", name="tokens"))
        h = keras.layers.Embedding(20, 8, mask_zero=True)(feeds[-1])  # the mask makes the fit blind to padding
        branches.append(keras.layers.GlobalAveragePooling1D()(h))
    if "img" in inputs:
        feeds.append(keras.Input((8, 8, 3), dtype="uint8", name="img"))
        h = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(feeds[-1]))
        branches.append(keras.layers.Dense(4)(h))
    if "v" in inputs:
        feeds.append(keras.Input((4,), name="v"))
        branches.append(feeds[-1])
    if "s" in inputs and SPARSE_INPUTS:
        feeds.append(keras.Input((40,), sparse=True, name="s"))
        branches.append(keras.layers.Dense(4)(feeds[-1]))
    m = KerasSparkModel(feeds, keras.layers.Dense(1, name="y")(keras.layers.Concatenate()(branches)))
    m.compile(keras.optimizers.SGD(0.05), "mse", metrics=["mae"])
    return m


def _with_nan_at(df, pid, position):
    """`df` with a NaN in x at the `position`-th row (from 0, in the DataFrame's order) of partition id `pid`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = F.row_number().over(Window.partitionBy("partition_id").orderBy("_source")) - 1
    nan_x = F.array(F.lit(float("nan")), F.lit(0.0), F.lit(0.0), F.lit(0.0)).cast("array<float>")
    hit = (F.col("partition_id") == pid) & (F.col("_row") == position)
    numbered = df.withColumn("_source", F.monotonically_increasing_id()).withColumn("_row", order)
    return numbered.withColumn("x", F.when(hit, nan_x).otherwise(F.col("x"))).drop("_row", "_source")


def refusals():
    df = frame([100, 100, 100])
    messages = {}
    for case, kwargs in {
        "odd_batch": dict(batch_size=33, num_workers=2),
        "too_many_workers": dict(batch_size=30, num_workers=3),
        "validation_batch": dict(batch_size=32, num_workers=2, validation_data=df, validation_batch_size=15),
        "empty_validation": dict(batch_size=32, num_workers=2, validation_data=df.limit(0)),
        "too_few_ids": dict(batch_size=32, num_workers=2, df=frame([100])),
        "bad_row": dict(batch_size=32, num_workers=2, df=_with_nan_at(df, pid=1, position=5)),
        "bad_validation_row": dict(batch_size=32, num_workers=2, validation_data=_with_nan_at(df, pid=2, position=7)),
    }.items():
        data = kwargs.pop("df", df)
        try:
            model().fit(data, verbose=0, **kwargs)
            messages[case] = None
        except Exception as error:  # noqa: BLE001  the test asserts the type and message
            messages[case] = f"{type(error).__name__}: {error}"
    report("refusals", messages=messages)


for scenario in sys.argv[1:] or ["refusals", "every_kind", "uneven", "worker_raises", "resume_after_failure"]:
    globals()[scenario]()
spark.stop()
shutil.rmtree(run_tmp, ignore_errors=True)  # the scenarios' own folders (scratch is inside it)

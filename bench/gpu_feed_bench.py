"""The fit feed on an accelerator, without Spark: keras-spark's feed vs data already on the device vs NumPy.

    python bench/gpu_feed_bench.py                     # W1 and W2, JAX and PyTorch, full sizes
    python bench/gpu_feed_bench.py --small             # the same at small sizes (a CPU-only machine)
    python bench/gpu_feed_bench.py --backends jax --workloads w1

W1: 2M rows x 32 float32 features + a float label, a small MLP.
W2: 200k rows of a 28x28 uint8 image + an integer label (the feed carries bytes; the model rescales).
The cache is written by the core's own CacheWriter from pyarrow batches (no Spark, no Java), then
read by the same BatchFeed + keras_input that `fit(df)` uses. Contenders, in the same process:
- `keras_spark`: fit on the feed (device prefetch on when the backend has an accelerator);
- `on_device`: the same batches, already on the device before fit (the limit);
- `numpy`: Keras's own fit(x, y) on NumPy arrays in memory;
- `keras_spark_without_staging`: the feed with device_prefetch bypassed, alternated with the feed
  (on CPU the two must match: staging is a no-op there).
Figures: steps/s of the median later epoch (the first compiles), and ratios to the two baselines.
Each backend runs in its own process (the Keras backend is fixed per process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

BATCH = 512
SIZES = {"w1": 2_000_000, "w2": 200_000}
SMALL_SIZES = {"w1": 100_000, "w2": 20_000}
PARTITIONS = 64


def arrow_batches(workload: str, rows: int, batch_rows: int = 10_000):
    """The workload as Arrow record batches (x/y or image/label, partition_id), as Spark would send them."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    for start in range(0, rows, batch_rows):
        n = min(batch_rows, rows - start)
        pid = pa.array((np.arange(start, start + n) % PARTITIONS).astype(np.int32))
        if workload == "w1":
            x = rng.random((n, 32), dtype=np.float32)
            feature = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 32)
            label = pa.array(2 * x[:, 0] + x[:, 1])
            yield pa.RecordBatch.from_arrays([feature, label, pid], names=["x", "y", "partition_id"])
        else:
            image = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            rows_of = pa.FixedSizeListArray.from_arrays(pa.array(image.reshape(-1)), 28)
            feature = pa.FixedSizeListArray.from_arrays(rows_of, 28)
            label = pa.array(rng.integers(0, 10, n).astype(np.int32))
            yield pa.RecordBatch.from_arrays([feature, label, pid], names=["image", "label", "partition_id"])


def spark_schema(workload: str):
    from pyspark.sql import types as T

    if workload == "w1":
        return T.StructType([T.StructField("x", T.ArrayType(T.FloatType())), T.StructField("y", T.FloatType()),
                             T.StructField("partition_id", T.IntegerType())])
    return T.StructType([T.StructField("image", T.ArrayType(T.ArrayType(T.ByteType()))),
                         T.StructField("label", T.IntegerType()), T.StructField("partition_id", T.IntegerType())])


def build_model(workload: str):
    import keras

    keras.utils.set_random_seed(0)
    if workload == "w1":
        x = keras.Input(shape=(32,), name="x")
        out = keras.layers.Dense(1, name="y")(keras.layers.Dense(64, activation="relu")(x))
        model = keras.Model(x, out)
        model.compile("adam", "mse")
    else:
        x = keras.Input(shape=(28, 28), dtype="uint8", name="image")
        h = keras.layers.Rescaling(1 / 255)(keras.layers.Flatten()(x))
        out = keras.layers.Dense(10, activation="softmax", name="label")(keras.layers.Dense(64, activation="relu")(h))
        model = keras.Model(x, out)
        model.compile("adam", "sparse_categorical_crossentropy")
    return model


def write_cache(workload: str, rows: int, directory: str):
    """The core's CacheWriter over the Arrow batches; the CachedData that fit's feed reads."""
    import keras

    from keras_spark import binding
    from keras_spark.spark.extract import _assemble, _write_rows

    model, schema = build_model(workload), spark_schema(workload)
    bindings = binding.bind_inputs(model, schema) + binding.bind_labels(model, schema, keras.config.floatx())
    names = schema.fieldNames()
    columns = [b.core_spec(names.index(b.column)) for b in bindings]
    info = json.loads(_write_rows(arrow_batches(workload, rows), os.path.join(directory, "rows"), columns,
                                  names.index("partition_id")))
    return _assemble(directory, bindings, [info])


def epoch_timer():
    import keras

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._start)

    return Timer()


def steps_per_s(timer, steps: int) -> float:
    import statistics

    return steps / statistics.median(timer.times[1:])


def run_feed(workload, cached, epochs, staging: bool = True):
    """fit on keras-spark's feed; `staging=False` bypasses device_prefetch (what the feed did before it)."""
    from keras_spark import feed as feed_module
    from keras_spark.feed import BatchFeed, keras_input

    feed_module.stage_on_device = _stage_on_device if staging else (lambda keras_x, wait: keras_x)
    model = build_model(workload)
    feed = BatchFeed(model, cached, batch_size=BATCH, shuffle=True, seed=1, num_parallel_calls=4)
    timer = epoch_timer()
    try:
        model.fit(keras_input(feed), steps_per_epoch=feed.steps_per_epoch, epochs=epochs, verbose=0,
                  callbacks=[timer])
        stats = feed.stats()
    finally:
        feed.close()
    return {"steps_per_s": steps_per_s(timer, feed.steps_per_epoch), "epochs_s": timer.times,
            "device": feed.device_wait.device, "device_wait_s": stats["device_wait_s"],
            "host_wait_s": stats["consumer_wait_s"]}


from keras_spark.feed import stage_on_device as _stage_on_device  # noqa: E402


def to_device_batches(x, y):
    """Every batch of (x, y) as the backend's tensors on its default device, made before fit."""
    import keras

    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]
    if keras.backend.backend() == "jax":
        import jax

        return [jax.block_until_ready(jax.device_put(b)) for b in batches]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return [tuple(tf.constant(a) for a in b) for b in batches]  # on the default device (the GPU if any)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return [tuple(torch.as_tensor(a).to(device) for a in b) for b in batches]


def run_on_device(workload, x, y, epochs):
    import itertools

    model = build_model(workload)
    batches = to_device_batches(x, y)
    timer = epoch_timer()
    endless = (batch for batch in itertools.cycle(batches))  # Keras takes generators, not any iterator
    model.fit(endless, steps_per_epoch=len(batches), epochs=epochs, verbose=0, callbacks=[timer])
    return {"steps_per_s": steps_per_s(timer, len(batches)), "epochs_s": timer.times}


def run_numpy(workload, x, y, epochs):
    model = build_model(workload)
    timer = epoch_timer()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0, callbacks=[timer])
    return {"steps_per_s": steps_per_s(timer, -(-len(x) // BATCH)), "epochs_s": timer.times}


def _median_run(runs: list[dict]) -> dict:
    ranked = sorted(runs, key=lambda r: r["steps_per_s"])
    return dict(ranked[len(ranked) // 2], all_steps_per_s=[r["steps_per_s"] for r in runs])


def one_backend(workload: str, rows: int, epochs: int, repeat: int) -> dict:
    """In this process's backend: the three contenders on the same data."""
    import keras
    import numpy as np

    from keras_spark.device_prefetch import accelerator

    with tempfile.TemporaryDirectory(prefix="gpu_feed_bench_") as directory:
        cached = write_cache(workload, rows, directory)
        table_columns = [np.concatenate(c) for c in zip(*[
            (b.column(0).flatten().flatten().to_numpy() if workload == "w2" else b.column(0).flatten().to_numpy(),
             b.column(1).to_numpy()) for b in arrow_batches(workload, rows)], strict=True)]
        x = table_columns[0].reshape((rows, 32) if workload == "w1" else (rows, 28, 28))
        y = table_columns[1]
        # The feed with and without device staging, alternated: on CPU staging must cost nothing.
        feed_runs, bypass_runs = [], []
        for _ in range(repeat):
            feed_runs.append(run_feed(workload, cached, epochs))
            bypass_runs.append(run_feed(workload, cached, epochs, staging=False))
        feed, bypass = _median_run(feed_runs), _median_run(bypass_runs)
        on_device = run_on_device(workload, x, y, epochs)
        numpy_fed = run_numpy(workload, x, y, epochs)
    return {
        "backend": keras.backend.backend(), "accelerator": accelerator(), "workload": workload, "rows": rows,
        "batch_size": BATCH, "epochs": epochs,
        "keras_spark": feed, "keras_spark_without_staging": bypass, "on_device": on_device, "numpy": numpy_fed,
        "ratios": {"feed_vs_on_device": feed["steps_per_s"] / on_device["steps_per_s"],
                   "feed_vs_feed_without_staging": feed["steps_per_s"] / bypass["steps_per_s"],
                   "feed_vs_numpy": feed["steps_per_s"] / numpy_fed["steps_per_s"]},
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="jax,torch")
    parser.add_argument("--workloads", default="w1,w2")
    parser.add_argument("--small", action="store_true", help="100k W1 / 20k W2 rows, for a CPU-only machine")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="fits of the feed with and without staging, alternated")
    parser.add_argument("--one", nargs=2, metavar=("WORKLOAD", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_backend(args.one[0], int(args.one[1]), args.epochs, args.repeat)), flush=True)
        return
    sizes = SMALL_SIZES if args.small else SIZES
    runs = []
    for backend in args.backends.split(","):
        for workload in args.workloads.split(","):
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
            command = [sys.executable, __file__, "--one", workload, str(sizes[workload]),
                       "--epochs", str(args.epochs), "--repeat", str(args.repeat)]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                runs.append({"backend": backend, "workload": workload, "error": done.stderr[-2000:]})
                continue
            runs.append(json.loads(lines[-1][len("RESULT "):]))
    from common import emit

    emit("gpu_feed_small" if args.small else "gpu_feed", {"small": args.small, "runs": runs})


if __name__ == "__main__":
    main()

"""Small DataFrames and models the tests share; data is generated in Spark, not downloaded."""

import os

import keras
import numpy as np
import pytest
from pyspark.sql import functions as F

from keras_spark.models import KerasSparkModel


def numeric_frame(spark, rows: int, partitions: int, features: int = 4, seed: int = 0, spark_partitions: int = 3):
    """id, partition_id, x (array<float> of `features`), y (float) = sum(x) with noise-free labels."""
    xs = [F.rand(seed + i).cast("float") for i in range(features)]
    df = (
        spark.range(rows, numPartitions=spark_partitions)
        .select(
            F.col("id"),
            (F.col("id") % partitions).cast("int").alias("partition_id"),
            F.array(*xs).alias("x"),
        )
        .withColumn("y", F.aggregate("x", F.lit(0.0).cast("float"), lambda acc, v: acc + v))
    )
    return df


def to_numpy(df, *columns):
    """The DataFrame's columns as NumPy arrays, ordered by id (test-side only)."""
    table = df.orderBy("id").toArrow()
    out = []
    for c in columns:
        col = table.column(c).combine_chunks()
        values = col.to_numpy(zero_copy_only=False)
        if values.dtype == object:
            values = np.stack([np.asarray(v) for v in values])
        out.append(values)
    return out


def frame_of_sizes(spark, sizes, seed: int = 0, scale: float = 1.0, offset: float = 0.0):
    """x (4 normal floats) and y = scale * sum(x) + offset, with partition id i holding sizes[i] rows."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    pid = np.concatenate([np.full(s, i) for i, s in enumerate(sizes)])
    x = rng.normal(size=(len(pid), 4)).astype("float32")
    return spark.createDataFrame(pd.DataFrame({"x": list(x), "y": scale * x.sum(1) + offset, "partition_id": pid}))


def report(name, **figures):
    """A scenario script's result: one `RESULT {json}` line that run_scenarios reads back."""
    import json

    print("RESULT " + json.dumps(dict(name=name, **figures)), flush=True)


class Shift(keras.layers.Layer):
    """Adds a constant. Not registered: it reaches the executors only as custom_objects={"Shift": Shift},
    a stage's customObjects or a user's custom_object_scope (and by value: tests/ is not installed)."""

    def __init__(self, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.offset = offset

    def call(self, x):
        return x + self.offset

    def get_config(self):
        return dict(super().get_config(), offset=self.offset)


def regression_model(features: int = 4) -> KerasSparkModel:
    x = keras.Input(shape=(features,), name="x")
    h = keras.layers.Dense(8, activation="relu")(x)
    y = keras.layers.Dense(1, name="y")(h)
    model = KerasSparkModel(x, y)
    model.compile(optimizer="adam", loss="mse")
    return model


# num_workers trains under JAX (keras.distribution) and PyTorch (torch.distributed): its scenarios run in
# subprocesses of the pass's backend, in the suite's jax and torch passes (the README's test command runs all).
DATA_PARALLEL_BACKENDS = ("jax", "torch")
in_the_data_parallel_passes = pytest.mark.skipif(
    os.environ.get("KERAS_BACKEND") not in DATA_PARALLEL_BACKENDS,
    reason="num_workers trains under JAX and PyTorch only (TensorFlow is refused with its reason, "
           "test_distributed): these scenarios run in the suite's jax and torch passes",
)
# What the engines share (the driver's checks, the stage's GPUs, callbacks on rank 0) runs once, under JAX.
only_in_the_jax_pass = pytest.mark.skipif(
    os.environ.get("KERAS_BACKEND") != "jax",
    reason="num_workers behaviour that no engine changes (driver-side checks, the stage's GPU requests, "
           "rank-0 callbacks); it runs once, in the suite's KERAS_BACKEND=jax pass",
)


def run_scenarios(script: str, env: dict, timeout: int, args: list[str] = (), cwd=None) -> dict:
    """Run tests/<script> [args] in its own process (in `cwd`); its `RESULT {json}` lines by their "name"."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, str(Path(__file__).with_name(script)), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    results = {}
    for line in done.stdout.splitlines():
        if "RESULT " in line:
            result = json.loads(line.split("RESULT ", 1)[1])
            results[result["name"]] = result
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return results

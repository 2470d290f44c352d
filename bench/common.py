"""What every benchmark shares: a local Spark, generated workloads, timing and JSON output.

The machine is shared and noisy: every script measures all contenders in the same
run on the same data and reports medians of repetitions and ratios to the limit.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ["PYSPARK_PYTHON"] = sys.executable

RESULTS = Path(__file__).with_name("results")


def spark_session(app: str, driver_memory: str = "4g"):
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]").appName(app)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def float_features(spark, rows: int, features: int, partitions: int, spark_partitions: int = 8):
    """rows x features float32 in an array column `x`, a float label `y`, ids 0..partitions-1."""
    from pyspark.sql import functions as F

    xs = [F.rand(i).cast("float") for i in range(features)]
    return (
        spark.range(rows, numPartitions=spark_partitions)
        .select(F.col("id"), (F.col("id") % partitions).cast("int").alias("partition_id"), F.array(*xs).alias("x"))
        .withColumn("y", (F.col("x")[0] * 2.0 + F.col("x")[1]).cast("float"))
    )


def images(spark, rows: int, partitions: int, side: int = 28, spark_partitions: int = 8):
    """rows of a side x side array<array<float>> image `image` and an integer label `label`."""
    from pyspark.sql import functions as F

    pixel = F.rand(3).cast("float")
    row = F.array_repeat(pixel, side)
    return (
        spark.range(rows, numPartitions=spark_partitions)
        .select(F.col("id"), (F.col("id") % partitions).cast("int").alias("partition_id"),
                F.array_repeat(row, side).alias("image"), (F.col("id") % 10).cast("int").alias("label"))
    )


def to_numpy(df, *columns):
    """Columns as dense NumPy arrays (fixed-size nested arrays become extra dimensions)."""
    table = df.select(*columns).toArrow()
    return [dense(table.column(c)) for c in columns]


def dense(column):
    import pyarrow as pa

    values, shape = column.combine_chunks(), [len(column)]
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        values = values.flatten()
        shape.append(len(values) // max(1, math.prod(shape)))
    return values.to_numpy(zero_copy_only=False).reshape(shape)


class EpochTimer:
    """A Keras callback that records each epoch's wall time."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times, self.ended_at = [], []

            def on_epoch_begin(self, epoch, logs=None):
                self._start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.ended_at.append(time.perf_counter())
                self.times.append(self.ended_at[-1] - self._start)

        return _Timer()


def median(values):
    return statistics.median(values) if values else None


def timed(fn, repeat: int = 3, warmup: int = 1):
    """Median seconds of `repeat` calls of fn after `warmup` calls, and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return median(times), result


def emit(name: str, figures: dict) -> None:
    """Print one JSON document and keep it as bench/results/<name>.json."""
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(figures, indent=2, default=float)
    (RESULTS / f"{name}.json").write_text(text + "\n")
    print(text)

"""Sparse kept sparse: cache bytes and fit rows/s of a 262,144-wide vector column, sparse against densified.

    python bench/sparse_bench.py [--rows 2000] [--epochs 3]      (KERAS_BACKEND=tensorflow or jax)

The data: `rows` Spark ML SparseVectors of size 262,144 (HashingTF's default) with ~50 non-zeros a
row (45..55, uniform), a float label. The same DataFrame trains the same model twice: once with
keras.Input(shape=(262144,), sparse=True) (the cache keeps indices and values; batches are the
backend's sparse tensors), once with sparse=False (the core densifies each vector: 1 MiB a row as
float32). The dense baseline is what bounds `rows`: 2,000 rows are 2 GiB of dense cache.

Figures: cache bytes a row (read from the cache files), the non-zeros' own bytes (int32 index +
float32 value each), fit rows/s over the steady epochs (the median of epochs 2..), and ratios.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from common import EpochTimer, emit, median, spark_session

WIDTH = 262_144
BATCH = 128


def sparse_frame(spark, rows: int, partitions: int):
    from pyspark.ml.linalg import SparseVector, VectorUDT
    from pyspark.sql import types as T

    rng = np.random.default_rng(0)
    weights = rng.normal(size=WIDTH).astype(np.float32)
    data, nnz = [], 0
    for r in range(rows):
        idx = np.sort(rng.choice(WIDTH, int(rng.integers(45, 56)), replace=False))
        values = rng.random(len(idx)).astype(np.float32)
        nnz += len(idx)
        data.append((r % partitions, SparseVector(WIDTH, idx, values), float(values @ weights[idx])))
    schema = T.StructType([T.StructField("partition_id", T.IntegerType()), T.StructField("x", VectorUDT()),
                           T.StructField("y", T.DoubleType())])
    return spark.createDataFrame(data, schema).repartition(4).cache(), nnz


def model_for(sparse: bool):
    import keras

    from keras_spark.models import KerasSparkModel

    keras.utils.set_random_seed(0)
    x = keras.Input(shape=(WIDTH,), sparse=sparse, name="x")
    h = keras.layers.Dense(16, activation="relu")(x)
    model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(h))
    model.compile("adam", "mse")
    return model


def cache_bytes(df, model) -> int:
    """Bytes of the x column's cache files after the one Spark pass (x only: the label is the same for both)."""
    from keras_spark.binding import bind_inputs
    from keras_spark.spark.extract import extract

    cached = extract(df, bind_inputs(model, df.schema), "partition_id")
    try:
        return sum(os.path.getsize(p) for name in os.listdir(cached.directory)
                   for p in [os.path.join(cached.directory, name)] if ".0.bin" in name)
    finally:
        cached.remove()


def fit_rows_per_s(df, model, rows: int, epochs: int) -> tuple[float, float]:
    timer = EpochTimer()
    start = time.perf_counter()
    model.fit(df, batch_size=BATCH, epochs=epochs, callbacks=[timer], verbose=0)
    return rows / median(timer.times[1:]), time.perf_counter() - start


def main() -> None:
    import keras

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    spark = spark_session("sparse_bench")
    df, nnz = sparse_frame(spark, args.rows, partitions=8)
    df.count()
    figures = {"backend": keras.backend.backend(), "rows": args.rows, "width": WIDTH, "batch_size": BATCH,
               "nonzeros_per_row": nnz / args.rows, "nonzero_bytes_per_row": 8 * nnz / args.rows}
    for kind, sparse in (("sparse", True), ("dense", False)):
        model = model_for(sparse)
        figures[f"{kind}_cache_bytes_per_row"] = cache_bytes(df, model) / args.rows
        rate, total = fit_rows_per_s(df, model, args.rows, args.epochs)
        figures[f"{kind}_fit_rows_per_s"] = rate
        figures[f"{kind}_fit_total_s"] = total
    sparse_cache = figures["sparse_cache_bytes_per_row"]
    figures["sparse_cache_over_nonzero_bytes"] = sparse_cache / figures["nonzero_bytes_per_row"]
    figures["dense_cache_over_sparse_cache"] = figures["dense_cache_bytes_per_row"] / sparse_cache
    figures["sparse_over_dense_rows_per_s"] = figures["sparse_fit_rows_per_s"] / figures["dense_fit_rows_per_s"]
    figures["targets"] = {"sparse_cache_over_nonzero_bytes": "<= 2.0", "sparse_over_dense_rows_per_s": ">= 1.0"}
    emit(f"sparse_{keras.backend.backend()}", figures)
    spark.stop()


if __name__ == "__main__":
    main()

"""The core alone: shuffled batches out of the cache, no model, beside the ceilings and the peers.

    python bench/core_bench.py [--rows 2000000]

Contenders, rows/s in one run on the same data (W1: 32 float32 features + a label):
- keras_spark_core: the C++ pipeline, shuffled, batch 512, 64 partition ids, 4 open at once; and
  the same with the larger pulls fit's TensorFlow adapter makes (16 batches a pull);
- numpy_copy: one plain copy of the same bytes (the memory-bandwidth ceiling);
- numpy_gather: a shuffled row gather `a[perm]` of the same bytes;
- seed_style: tf.data interleave over partitions, each read by a Spark filter + toPandas;
- petastorm: make_spark_converter(df).make_tf_dataset (or why it could not run).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from common import emit, float_features, median, spark_session, to_numpy

BATCH = 512


def core_rows_per_s(df, repeat: int, batch_size: int) -> tuple[float, dict]:
    import keras

    from keras_spark.binding import bind_inputs, bind_labels
    from keras_spark.feed import BatchFeed
    from keras_spark.models import KerasSparkModel
    from keras_spark.spark.extract import extract

    x = keras.Input(shape=(32,), name="x")
    model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(x))
    cached = extract(df, bind_inputs(model, df.schema) + bind_labels(model, df.schema), "partition_id")
    try:
        feed = BatchFeed(model, cached, batch_size=batch_size, shuffle=True, seed=1, num_parallel_calls=4,
                         num_threads=os.cpu_count())
        pipeline, steps = feed.pipeline, feed.steps_per_epoch
        times = []
        for epoch in range(repeat + 1):  # the first epoch warms the page cache
            start = time.perf_counter()
            for _ in range(steps):
                pipeline.next()
            if epoch:
                times.append(time.perf_counter() - start)
        stats = feed.stats()
        feed.close()
        return cached.rows / median(times), stats
    finally:
        cached.remove()


def numpy_rows_per_s(table: np.ndarray, repeat: int) -> tuple[float, float]:
    out = np.empty_like(table)
    perm = np.random.default_rng(0).permutation(len(table))
    copy, gather = [], []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        np.copyto(out, table)
        copy.append(time.perf_counter() - start)
        start = time.perf_counter()
        np.take(table, perm, axis=0, out=out)
        gather.append(time.perf_counter() - start)
    return len(table) / median(copy[1:]), len(table) / median(gather[1:])


def seed_style_rows_per_s(df, partitions: int) -> dict:
    import tensorflow as tf

    def read(pid):
        pdf = df.filter(df.partition_id == int(pid)).select("x", "y").toPandas()
        yield np.stack(pdf["x"].to_numpy()).astype("float32"), pdf["y"].to_numpy().astype("float32")

    sig = (tf.TensorSpec((None, 32), tf.float32), tf.TensorSpec((None,), tf.float32))
    ds = tf.data.Dataset.range(partitions).interleave(
        lambda i: tf.data.Dataset.from_generator(read, args=(i,), output_signature=sig).unbatch(),
        cycle_length=4, num_parallel_calls=4,
    ).shuffle(10_000).batch(BATCH)
    start, rows = time.perf_counter(), 0
    for x, _ in ds:
        rows += int(x.shape[0])
    seconds = time.perf_counter() - start
    return {"rows_per_s": rows / seconds, "rows_measured": rows, "partitions_measured": partitions}


def petastorm_rows_per_s(spark, df) -> dict:
    try:
        from petastorm.spark import SparkDatasetConverter, make_spark_converter

        spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, "file:///tmp/keras_spark_petastorm")
        converter = make_spark_converter(df.select("x", "y"))
        start, rows = time.perf_counter(), 0
        with converter.make_tf_dataset(batch_size=BATCH, num_epochs=1, shuffling_queue_capacity=10_000) as ds:
            for batch in ds:
                rows += int(batch.x.shape[0])
        return {"rows_per_s": rows / (time.perf_counter() - start), "rows_measured": rows}
    except Exception as error:  # an incompatible petastorm is a finding, not a crash
        return {"rows_per_s": None, "error": f"{type(error).__name__}: {error}"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed-style-partitions", type=int, default=4)
    args = parser.parse_args()
    spark = spark_session("bench-core")
    df = float_features(spark, args.rows, 32, args.partitions).cache()
    df.count()
    x, y = to_numpy(df, "x", "y")
    table = np.concatenate([x.astype("float32"), y.reshape(-1, 1).astype("float32")], axis=1)

    from keras_spark.feed import TF_BATCHES_PER_PULL

    ours, stats = core_rows_per_s(df, args.repeat, BATCH)
    pull = BATCH * TF_BATCHES_PER_PULL  # what fit's TensorFlow adapter asks the core for (W1 rows)
    ours_pull, _ = core_rows_per_s(df, args.repeat, pull)
    copy, gather = numpy_rows_per_s(table, args.repeat)
    seed = seed_style_rows_per_s(df, args.seed_style_partitions)
    peta = petastorm_rows_per_s(spark, df)
    emit("core", {
        "rows": args.rows, "row_bytes": table.shape[1] * 4, "batch_size": BATCH, "partitions": args.partitions,
        "rows_per_s": {"keras_spark_core": ours, f"keras_spark_core_pull{pull}": ours_pull, "numpy_copy": copy,
                       "numpy_gather": gather,
                       "seed_style": seed["rows_per_s"], "petastorm": peta["rows_per_s"]},
        "core_stats": stats, "seed_style": seed, "petastorm": peta,
        "ratios": {
            "core_vs_numpy_copy": ours / copy,
            f"core_pull{pull}_vs_numpy_copy": ours_pull / copy,
            "core_vs_numpy_gather": ours / gather,
            "core_vs_seed_style": ours / seed["rows_per_s"],
            "core_vs_petastorm": ours / peta["rows_per_s"] if peta["rows_per_s"] else None,
        },
    })


if __name__ == "__main__":
    main()

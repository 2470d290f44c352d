"""Sequences and strings: fit rows/s and padding, keras-spark (bucketed and not) against pad_sequences + fit.

    python bench/sequence_bench.py [--rows 20000] [--epochs 3]

Sequences: token-id rows of skewed lengths (log-normal, 1..200), a binary label, the same
model (Embedding -> Conv1D -> GlobalMaxPooling1D -> Dense) on the same rows:
- limit: keras.utils.pad_sequences on NumPy (every row to the longest), then Model.fit;
- keras-spark: fit on the DataFrame, each batch padded to its own longest row;
- keras-spark bucketed: the same with bucket_by_length=True.
Figures: rows/s of the later epochs (median), the padding fraction of each.

Shapes (`--shapes`, one backend a process, KERAS_BACKEND picks it): the fit of issue 22 item 4,
2,400 token rows of length 1..50 (uniform), Embedding -> LSTM(16) -> Dense, batch 64,
bucket_by_length=True, 4 epochs: the whole fit's seconds, the distinct batch shapes the model was fed
and the padding fraction (JAX compiles a step per shape).

    KERAS_BACKEND=jax python bench/sequence_bench.py --shapes
    KERAS_BACKEND=tensorflow python bench/sequence_bench.py --shapes

Strings: 200,000 strings of a Spark batch to a tf.string tensor, three ways: the core's padded
bytes viewed as NumPy `S<n>` then tf.constant (what keras-spark does), pyarrow's to_numpy (one
Python object a row) then tf.constant, and offsets + bytes cut by tf.strings.substr.
"""

from __future__ import annotations

import argparse
import time

from common import EpochTimer, emit, median, spark_session, timed

BATCH = 64
VOCAB = 1000


def token_frame(spark, rows: int, partitions: int = 16):
    from pyspark.sql import functions as F

    length = F.least(F.lit(200), F.greatest(F.lit(1), F.exp(F.randn(1) * 0.8 + 3.3).cast("int")))
    return (
        spark.range(rows, numPartitions=8)
        .select(F.col("id"), (F.col("id") % partitions).cast("int").alias("partition_id"), length.alias("n"))
        .withColumn("tokens", F.transform(F.sequence(F.lit(1), F.col("n")),
                                          lambda s: (F.abs(F.hash(F.col("id"), s)) % (VOCAB - 1) + 1).cast("int")))
        .withColumn("label", (F.array_contains("tokens", 7) | (F.col("n") > 40)).cast("float"))
        .drop("n")
    )


def model():
    import keras

    from keras_spark.models import KerasSparkModel

    keras.utils.set_random_seed(0)
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(VOCAB, 32)(tokens)
    h = keras.layers.Conv1D(32, 3, padding="same", activation="relu")(h)
    out = keras.layers.Dense(1, activation="sigmoid", name="label")(keras.layers.GlobalMaxPooling1D()(h))
    m = KerasSparkModel(tokens, out)
    m.compile("adam", "binary_crossentropy")
    return m


def fit_numpy(rows, labels, epochs):
    import keras
    import numpy as np

    start = time.perf_counter()
    x = keras.utils.pad_sequences(rows, padding="post")
    pad_s = time.perf_counter() - start
    lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
    m, timer = model(), EpochTimer()
    m.fit(x, labels, batch_size=BATCH, epochs=epochs, callbacks=[timer], verbose=0, shuffle=True)
    later = median(timer.times[1:])
    return {"pad_sequences_s": pad_s, "later_epoch_s": later, "rows_per_s": len(rows) / later,
            "padding_fraction": 1 - lengths.sum() / x.size, "padded_shape": list(x.shape)}


def fit_ours(df, rows, epochs, **options):
    m, timer = model(), EpochTimer()
    m.fit(df, batch_size=BATCH, epochs=epochs, callbacks=[timer], verbose=0, **options)
    later = median(timer.times[1:])
    stats = m.data_stats
    return {"later_epoch_s": later, "rows_per_s": rows / later, "first_epoch_s": timer.times[0],
            "padding_fraction": stats["padding_fraction"], "bucket_boundaries": stats["bucket_boundaries"],
            "padding_fraction_unbucketed_estimate": stats["padding_fraction_unbucketed"],
            "padding_fraction_bucketed_estimate": stats["padding_fraction_bucketed"]}


def strings_to_tensor(n: int = 200_000):
    import numpy as np
    import pyarrow as pa
    import tensorflow as tf

    from keras_spark import _core
    from keras_spark.kinds.string import as_strings

    rng = np.random.default_rng(0)
    words = np.array(["red", "green", "blue", "a longer phrase of text", "ünïcode ✓"])
    column = pa.array(words[rng.integers(0, len(words), n)].tolist())

    def ours():
        padded, _ = _core.to_padded(*column.__arrow_c_array__(), "s", "uint8", [-1], (0, True, -1, False, False, 0.0))
        return tf.constant(as_strings(padded, (1,)))

    def objects():
        return tf.constant(column.to_numpy(zero_copy_only=False).reshape(n, 1))

    arrow_offsets = np.frombuffer(column.buffers()[1], np.int32)[column.offset:column.offset + n + 1]
    offsets = tf.constant(arrow_offsets.astype(np.int64))
    data = tf.constant(column.buffers()[2].to_pybytes()[: int(arrow_offsets[-1])])

    def substr():
        return tf.strings.substr(data, offsets[:-1], offsets[1:] - offsets[:-1])

    figures = {}
    for name, fn in (("core_padded_bytes_view", ours), ("pyarrow_objects", objects), ("tf_strings_substr", substr)):
        seconds, result = timed(fn, repeat=5)
        assert result.numpy().reshape(-1)[3] == column[3].as_py().encode()
        figures[name] = {"seconds": seconds, "strings_per_s": n / seconds}
    figures["strings"] = n
    return figures


def uniform_tokens(spark, rows: int, longest: int = 50):
    from pyspark.sql import functions as F

    length = (F.col("id") * 7919 % longest + 1).cast("int")  # every length 1..longest, evenly
    return (
        spark.range(rows, numPartitions=4).select(F.col("id"), length.alias("n"))
        .withColumn("tokens", F.transform(F.sequence(F.lit(1), F.col("n")),
                                          lambda s: (F.abs(F.hash(F.col("id"), s)) % (VOCAB - 1) + 1).cast("int")))
        .withColumn("label", (F.col("n") > longest // 2).cast("float"))
        .drop("n")
    )


def lstm_model():
    import keras

    from keras_spark.models import KerasSparkModel

    keras.utils.set_random_seed(0)
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    h = keras.layers.LSTM(16)(keras.layers.Embedding(VOCAB, 16, mask_zero=True)(tokens))
    m = KerasSparkModel(tokens, keras.layers.Dense(1, activation="sigmoid", name="label")(h))
    m.compile("adam", "binary_crossentropy")
    return m


def fit_shapes(spark, rows: int, epochs: int) -> dict:
    import keras

    df = uniform_tokens(spark, rows).cache()
    df.count()
    m, timer = lstm_model(), EpochTimer()
    start = time.perf_counter()
    m.fit(df, batch_size=BATCH, epochs=epochs, callbacks=[timer], verbose=0, bucket_by_length=True)
    stats = m.data_stats
    return {"backend": keras.backend.backend(), "rows": rows, "epochs": epochs, "batch_size": BATCH,
            "fit_s": time.perf_counter() - start, "epoch_s": timer.times,
            "spark_pass_s": stats["spark_pass_s"], "train_s": stats["train_s"],
            "distinct_shapes": stats.get("distinct_shapes"), "padding_fraction": stats["padding_fraction"],
            "bucket_boundaries": stats["bucket_boundaries"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--shapes", action="store_true", help="only the LSTM fit of issue 22 item 4 (see above)")
    parser.add_argument("--label", default="", help="--shapes: a suffix for the result file (e.g. before, after)")
    args = parser.parse_args()
    spark = spark_session("bench-sequences")
    if args.shapes:
        figures = fit_shapes(spark, 2400, 4)
        emit(f"sequence_shapes_{figures['backend']}{'_' + args.label if args.label else ''}", figures)
        spark.stop()
        return
    df = token_frame(spark, args.rows).cache()
    table = df.select("tokens", "label").toArrow()
    rows = table.column("tokens").to_pylist()
    import numpy as np

    labels = table.column("label").to_numpy().astype(np.float32)
    limit = fit_numpy(rows, labels, args.epochs)
    plain = fit_ours(df, args.rows, args.epochs)
    bucketed = fit_ours(df, args.rows, args.epochs, bucket_by_length=True)
    emit("sequences", {
        "rows": args.rows, "batch_size": BATCH, "epochs": args.epochs,
        "mean_length": float(np.mean([len(r) for r in rows])), "max_length": max(len(r) for r in rows),
        "limit_pad_sequences_numpy": limit, "keras_spark": plain, "keras_spark_bucketed": bucketed,
        "ratios": {
            "rows_per_s_vs_limit": plain["rows_per_s"] / limit["rows_per_s"],
            "bucketed_rows_per_s_vs_limit": bucketed["rows_per_s"] / limit["rows_per_s"],
            "bucketed_rows_per_s_vs_unbucketed": bucketed["rows_per_s"] / plain["rows_per_s"],
        },
        "strings_to_tf": strings_to_tensor(),
    })
    spark.stop()


if __name__ == "__main__":
    main()

"""fit: keras-spark's epoch time beside the limit (the same model on NumPy) and the seed-style pipeline.

    python bench/fit_bench.py --workload w1 [--rows N] [--epochs 3]

w1: rows x 32 float32 features + a float label, 64 partition ids, a small MLP.
w2: rows of a 28x28 array<array<float>> image + an integer label, a small MLP.
Figures: first epoch (ours including the Spark pass), median of later epochs, ratios.
"""

from __future__ import annotations

import argparse
import time

from common import EpochTimer, emit, float_features, images, median, spark_session, to_numpy

BATCH = 512


def model_for(workload: str):
    import keras

    from keras_spark.models import KerasSparkModel

    keras.utils.set_random_seed(0)
    if workload == "w1":
        x = keras.Input(shape=(32,), name="x")
        h = keras.layers.Dense(64, activation="relu")(x)
        out = keras.layers.Dense(1, name="y")(h)
        model = KerasSparkModel(x, out)
        model.compile("adam", "mse")
    else:
        x = keras.Input(shape=(28, 28), name="image")
        h = keras.layers.Dense(64, activation="relu")(keras.layers.Flatten()(x))
        out = keras.layers.Dense(10, activation="softmax", name="label")(h)
        model = KerasSparkModel(x, out)
        model.compile("adam", "sparse_categorical_crossentropy")
    return model


def frame(spark, workload: str, rows: int, partitions: int):
    if workload == "w1":
        return float_features(spark, rows, 32, partitions), ("x", "y")
    return images(spark, rows, partitions), ("image", "label")


def run_ours(df, workload, epochs, partitions):
    model, timer = model_for(workload), EpochTimer()
    start = time.perf_counter()
    model.fit(df, batch_size=BATCH, epochs=epochs, callbacks=[timer], verbose=0,
              partition_col="partition_id", num_parallel_calls=4)
    total = time.perf_counter() - start
    # From the fit call to the end of epoch 1: binding, the Spark pass, the first epoch.
    first_with_spark = timer.ended_at[0] - start
    return {"first_epoch_s": first_with_spark, "later_epoch_s": median(timer.times[1:]),
            "epochs_s": timer.times, "fit_total_s": total, "core": model.data_stats}


def run_limit(x, y, workload, epochs):
    model, timer = model_for(workload), EpochTimer()
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, callbacks=[timer], verbose=0, shuffle=True)
    return {"first_epoch_s": timer.ended_at[0] - start, "later_epoch_s": median(timer.times[1:]),
            "epochs_s": timer.times}


def run_seed_style(spark, df, columns, workload, partitions, max_partitions):
    """The seed's description done naively: a Spark job (filter + toPandas) per partition id."""
    import numpy as np
    import tensorflow as tf

    feature, label = columns
    model = model_for(workload)
    used = min(partitions, max_partitions)

    def read(pid):
        pdf = df.filter(df.partition_id == int(pid)).select(feature, label).toPandas()
        x = np.stack([np.asarray(np.stack(v) if workload == "w2" else v, dtype="float32") for v in pdf[feature]])
        yield x, pdf[label].to_numpy()

    shape = (None, 32) if workload == "w1" else (None, 28, 28)
    sig = (tf.TensorSpec(shape, tf.float32), tf.TensorSpec((None,), tf.float32 if workload == "w1" else tf.int32))
    ds = tf.data.Dataset.range(used).interleave(
        lambda i: tf.data.Dataset.from_generator(read, args=(i,), output_signature=sig).unbatch(),
        cycle_length=4, num_parallel_calls=4,
    ).batch(BATCH)
    start = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    rows = df.filter(df.partition_id < used).count()
    return {"epoch_s_measured": seconds, "partitions_measured": used, "rows_measured": rows,
            "rows_per_s": rows / seconds}


def medians(runs: list[dict]) -> dict:
    keys = ("first_epoch_s", "later_epoch_s")
    out = {k: median([r[k] for r in runs]) for k in keys}
    out["runs"] = runs
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=["w1", "w2"], default="w1")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--partitions", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed-style-partitions", type=int, default=4,
                        help="partition ids the (slow) seed-style contender reads; its rows/s is reported")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    rows = args.rows or (2_000_000 if args.workload == "w1" else 200_000)
    spark = spark_session("bench-fit")
    df, columns = frame(spark, args.workload, rows, args.partitions)
    df = df.cache()
    df.count()
    x, y = to_numpy(df, *columns)

    # Warm-up: Spark's Python workers, TensorFlow's first tracing.
    small = df.filter(df.partition_id < 2)
    run_ours(small, args.workload, 1, args.partitions)
    run_limit(x[:10_000], y[:10_000], args.workload, 1)
    limit_runs, our_runs = [], []
    for _ in range(args.repeat):
        limit_runs.append(run_limit(x, y, args.workload, args.epochs))
        our_runs.append(run_ours(df, args.workload, args.epochs, args.partitions))
    limit, ours = medians(limit_runs), medians(our_runs)
    seed = run_seed_style(spark, df, columns, args.workload, args.partitions, args.seed_style_partitions)
    ours_rows_s = rows / ours["later_epoch_s"]
    emit(args.name or f"fit_{args.workload}", {
        "workload": args.workload, "rows": rows, "partitions": args.partitions, "batch_size": BATCH,
        "epochs": args.epochs, "repeat": args.repeat,
        "limit_numpy": limit, "keras_spark": ours, "seed_style": seed,
        "ratios": {
            "later_epoch_vs_limit": ours["later_epoch_s"] / limit["later_epoch_s"],
            "first_epoch_vs_limit_first": ours["first_epoch_s"] / limit["first_epoch_s"],
            "fit_rows_per_s_vs_seed_style": ours_rows_s / seed["rows_per_s"],
        },
    })


if __name__ == "__main__":
    main()

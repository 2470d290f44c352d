"""Checkpoints: the time training waits for a save at the default frequency (every epoch).

    python bench/checkpoint_bench.py [--rows 100000] [--epochs 3]   # -> bench/results/checkpoint_bench_<backend>.json

Two models on the w1 data (rows x 32 float32 features, 64 partition ids): w1 (a 32-64-1 MLP, 2.2 k
parameters) and a 1 M-parameter MLP (32-960-960-1). For each, one fit without checkpoints (the training
time), one with keras-spark's `checkpoint=` (a local directory), one with Keras's `BackupAndRestore`
and one with Keras's `ModelCheckpoint` (a `.keras` file every epoch), all on the same cached data. The
stall is the seconds spent in the save each epoch (keras-spark: `data_stats["checkpoint_s"]`; Keras's
callbacks: their `on_epoch_end`, timed), and its share of the training time without checkpoints.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import emit, float_features, spark_session

BATCH = 512


def model_for(name: str):
    import keras

    from keras_spark.models import KerasSparkModel

    keras.utils.set_random_seed(0)
    x = keras.Input(shape=(32,), name="x")
    widths = [64] if name == "w1" else [960, 960]
    h = x
    for width in widths:
        h = keras.layers.Dense(width, activation="relu")(h)
    model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(h))
    model.compile("adam", "mse")
    return model


def timed_callback(inner):
    """`inner`, with the seconds its on_epoch_end takes summed in `.seconds`."""
    import keras

    class Timed(keras.callbacks.Callback):
        seconds = 0.0

        def set_model(self, model):
            super().set_model(model)
            inner.set_model(model)

        def set_params(self, params):
            super().set_params(params)
            inner.set_params(params)

        def on_train_begin(self, logs=None):
            inner.on_train_begin(logs)

        def on_epoch_begin(self, epoch, logs=None):
            inner.on_epoch_begin(epoch, logs)

        def on_train_batch_end(self, batch, logs=None):
            inner.on_train_batch_end(batch, logs)

        def on_epoch_end(self, epoch, logs=None):
            started = time.perf_counter()
            inner.on_epoch_end(epoch, logs)
            Timed.seconds += time.perf_counter() - started

        def on_train_end(self, logs=None):
            inner.on_train_end(logs)

    return Timed()


def run(df, name: str, epochs: int, how: str) -> dict:
    import keras

    model = model_for(name)
    folder = tempfile.mkdtemp(prefix=f"ckpt-bench-{how}-")
    callbacks, keywords = [], {}
    if how == "keras_spark":
        keywords["checkpoint"] = f"{folder}/run"
    elif how == "backup_and_restore":
        callbacks.append(timed_callback(keras.callbacks.BackupAndRestore(f"{folder}/backup", delete_checkpoint=False)))
    elif how == "model_checkpoint":
        callbacks.append(timed_callback(keras.callbacks.ModelCheckpoint(f"{folder}/model.keras")))
    model.fit(df, batch_size=BATCH, epochs=epochs, verbose=0, num_parallel_calls=4, shuffle_seed=0,
              callbacks=callbacks, **keywords)
    stats = model.data_stats
    stall = stats.get("checkpoint_s") if how == "keras_spark" else (callbacks[0].seconds if callbacks else 0.0)
    return {"parameters": model.count_params(), "train_s": stats["train_s"], "save_s": stall,
            "save_s_per_epoch": stall / epochs, "checkpoint_bytes": stats.get("checkpoint_bytes")}


def main():
    import keras

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    spark = spark_session("checkpoint-bench")
    df = float_features(spark, args.rows, 32, 64).cache()
    df.count()
    figures = {"rows": args.rows, "epochs": args.epochs, "batch_size": BATCH, "backend": keras.backend.backend()}
    for name in ("w1", "mlp_1m"):
        runs = {how: run(df, name, args.epochs, how)
                for how in ("none", "keras_spark", "backup_and_restore", "model_checkpoint")}
        base = runs["none"]["train_s"]
        for figure in runs.values():
            figure["save_share_of_training"] = figure["save_s"] / base
        figures[name] = runs
    emit(f"checkpoint_bench_{keras.backend.backend()}", figures)
    spark.stop()


if __name__ == "__main__":
    main()

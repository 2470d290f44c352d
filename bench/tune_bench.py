"""keras_spark.tune (trials on two executors) vs Optuna running the same trials one after another on the driver.

One local-cluster[2,1,1024] (two executors of one core), the same data, search space, trial budget,
epochs and pruner (MedianPruner) for both. Prints one JSON object (kept as
bench/results/tune_<backend>.json): wall time, best objective, trials pruned; for tune also each
trial's set-up as a share of its training, each task's one-off data set-up and backend import, and
how busy the two task slots were.

    python bench/tune_bench.py [--backend jax|torch] [--rows 20000] [--trials 8] [--epochs 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

BACKEND = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "jax"
os.environ["KERAS_BACKEND"] = BACKEND
os.environ["PYSPARK_PYTHON"] = sys.executable
sys.path.insert(0, str(Path(__file__).parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from common import emit  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402

import keras_spark  # noqa: E402
from keras_spark.models import KerasSparkModel  # noqa: E402

FEATURES = 16


def build_model(trial):
    x = keras.Input((FEATURES,), name="x")
    h = keras.layers.Dense(trial.suggest_int("units", 8, 64, log=True), activation="relu")(x)
    model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(h))
    model.compile(keras.optimizers.Adam(trial.suggest_float("lr", 1e-4, 1e-1, log=True)), "mse")
    return model


def frames(spark, rows: int):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, FEATURES)).astype("float32")
    y = np.sin(x[:, :4]).sum(1) + 0.1 * x[:, 4:].sum(1)
    df = spark.createDataFrame(pd.DataFrame({"x": list(x), "y": y, "partition_id": np.arange(rows) % 8}))
    return df.randomSplit([0.8, 0.2], seed=1)


def on_the_driver(train, val, trials: int, epochs: int) -> dict:
    """Optuna's own optimize loop: each trial's fit reads the DataFrame again, on the driver."""

    class Report(keras.callbacks.Callback):
        def __init__(self, trial):
            super().__init__()
            self.trial, self.pruned = trial, False

        def on_epoch_end(self, epoch, logs=None):
            self.trial.report(float(logs["val_loss"]), epoch)
            if self.trial.should_prune():
                self.pruned, self.model.stop_training = True, True

    def objective(trial):
        model = build_model(trial)
        report = Report(trial)
        history = model.fit(train, validation_data=val, epochs=epochs, batch_size=64, verbose=0, callbacks=[report])
        if report.pruned:
            raise optuna.TrialPruned()
        return history.history["val_loss"][-1]

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    started = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return {"wall_s": time.perf_counter() - started, "best_value": study.best_value,
            "pruned": sum(t.state.name == "PRUNED" for t in study.trials)}


def with_tune(train, val, trials: int, epochs: int, parallelism: int) -> dict:
    result = keras_spark.tune(build_model, train, validation_data=val, n_trials=trials, parallelism=parallelism,
                              epochs=epochs, batch_size=64, sampler=optuna.samplers.TPESampler(seed=0),
                              pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    firsts = {task["trials"][0] for task in result.tasks if task["trials"]}
    later = [t for t in result.trials if t["number"] not in firsts and t["train_s"] > 0]
    busy = sum(t["setup_s"] + t["train_s"] for t in result.trials) / (parallelism * result.wall_s)
    return {
        "wall_s": result.wall_s, "best_value": result.best_value,
        "pruned": sum(t["state"] == "PRUNED" for t in result.trials),
        "trials_per_task": [len(task["trials"]) for task in result.tasks],
        "data_setup_s_per_task": [round(task["data_s"], 3) for task in result.tasks],
        "first_trial_setup_s": [round(t["setup_s"], 2) for t in result.trials if t["number"] in firsts],
        "backend_import_s_per_task": [round(task["import_s"], 2) for task in result.tasks],
        "later_setup_over_train": round(sum(t["setup_s"] for t in later) / max(1e-9, sum(t["train_s"] for t in later)),
                                        4),
        "later_data_setup_s_max": round(max((t["data_setup_s"] for t in later), default=0.0), 4),
        "later_build_model_s_median": round(float(np.median([t["setup_s"] - t["data_setup_s"] for t in later])), 3),
        "trial_train_s_median": float(np.median([t["train_s"] for t in result.trials if t["train_s"] > 0])),
        "slots_busy": round(busy, 3),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="jax")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    spark = (SparkSession.builder.master("local-cluster[2,1,1024]").config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false").getOrCreate())
    spark.sparkContext.setLogLevel("OFF")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    train, val = (f.cache() for f in frames(spark, args.rows))
    train.count(), val.count()
    figures = {"backend": BACKEND, "rows": args.rows, "trials": args.trials, "epochs": args.epochs,
               "master": "local-cluster[2,1,1024]"}
    figures["tune_parallelism_2"] = with_tune(train, val, args.trials, args.epochs, 2)
    figures["optuna_on_the_driver"] = on_the_driver(train, val, args.trials, args.epochs)
    emit(f"tune_{BACKEND}", figures)
    spark.stop()


if __name__ == "__main__":
    main()

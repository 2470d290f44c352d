"""keras_spark.tune scenarios under KERAS_BACKEND in their own process (run by test_tune).

Prints one JSON line per scenario: `RESULT {"name": ..., ...}`. The master is
local-cluster[2,1,1024]: two executors of one core, so two trial tasks in two executor processes.
"""

import os
import shutil
import sys
import tempfile
import time

# A classic session, even when the test run started this process during its Connect tests.
for _name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):
    os.environ.pop(_name, None)

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["TMPDIR"] = run_tmp = tempfile.mkdtemp(prefix="tune_run_tmp_")  # where the trial tasks' caches go
tempfile.tempdir = None

import keras  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from builders import frame_of_sizes, report  # noqa: E402
from optuna.storages.journal import JournalFileBackend  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

import keras_spark  # noqa: E402
from keras_spark.models import KerasSparkModel  # noqa: E402

spark = (SparkSession.builder.master("local-cluster[2,1,1024]").config("spark.ui.enabled", "false")
         .config("spark.sql.shuffle.partitions", "4").getOrCreate())
spark.sparkContext.setLogLevel("OFF")
train = frame_of_sizes(spark, [100, 100, 100, 100], seed=0, scale=2.0, offset=1.0)
val = frame_of_sizes(spark, [100], seed=1, scale=2.0, offset=1.0)


def build_model(trial):
    """Dense regression; `fail` raises (a trial that fails), a huge `lr` diverges (a trial to prune)."""
    lr = trial.suggest_float("lr", 1e-3, 100.0, log=True)
    units = trial.suggest_int("units", 4, 16)
    if trial.suggest_categorical("fail", [False, True]):
        raise RuntimeError("this trial fails on purpose")
    x = keras.Input((4,), name="x")
    h = keras.layers.Dense(units, activation="tanh")(x)
    model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(h))
    model.compile(keras.optimizers.SGD(lr), "mse")
    return model


GOOD = [{"lr": lr, "units": 8, "fail": False} for lr in (0.003, 0.01, 0.03, 0.05)]
BAD_LR = {"lr": 100.0, "units": 8, "fail": False}
FAILS = {"lr": 0.01, "units": 8, "fail": True}


def trials_of(study):
    return [{"number": t.number, "state": t.state.name, "params": t.params, "value": t.value,
             "reported": sorted(t.intermediate_values), "attrs": t.user_attrs,
             "start": t.datetime_start.timestamp() if t.datetime_start else None,
             "end": t.datetime_complete.timestamp() if t.datetime_complete else None}
            for t in study.get_trials(deepcopy=False)]


def enqueued():
    """Six known trials in a journal the test made (a user's storage): four good, one diverging, one raising."""
    path = os.path.join(run_tmp, "study.log")
    storage = optuna.storages.JournalStorage(JournalFileBackend(path))
    study = optuna.create_study(storage=storage, study_name="enqueued", direction="minimize")
    for params in (GOOD[0], BAD_LR, FAILS, *GOOD[1:]):
        study.enqueue_trial(params)
    started = time.time()
    result = keras_spark.tune(build_model, train, validation_data=val, n_trials=6, parallelism=2, epochs=3,
                              batch_size=32, storage=storage, study_name="enqueued",
                              pruner=optuna.pruners.ThresholdPruner(upper=1e4))
    rows = result.best_model.predict(val.limit(20)).select("x", F.col("model_output.y").alias("p")).collect()
    x = np.array([r["x"] for r in rows], dtype="float32")
    local = keras.ops.convert_to_numpy(result.best_model(x)).reshape(-1)
    report("enqueued", driver_pid=os.getpid(), trials=trials_of(optuna.load_study(study_name="enqueued",
                                                                                 storage=storage)),
           run_trials=result.trials, tasks=result.tasks, best_params=result.best_params,
           best_value=result.best_value, best_model_trial=result.best_model_trial,
           best_trial=result.best_trial.number, predicted=[r["p"] for r in rows], local=local.tolist(),
           wall_s=time.time() - started, journal_kept=os.path.exists(path))


def default_storage():
    """Optuna's own sampler (TPE, seeded) and MedianPruner on the default storage (a journal on the driver's
    disk, copied into memory); no validation: judged by the training loss."""
    result = keras_spark.tune(build_model, train, n_trials=4, parallelism=2, epochs=1, batch_size=32,
                              objective="loss", sampler=optuna.samplers.TPESampler(seed=1))
    left = sorted(name for name in os.listdir(run_tmp) if name.startswith("keras_spark_tune_"))
    report("default_storage", trials=trials_of(result.study), storage=type(result.study._storage).__name__,
           left=left, best_model=result.best_model is not None, tasks=result.tasks)


def timeout():
    """A timeout that has passed when the tasks start: they ask for no trial, and tune returns an empty study."""
    result = keras_spark.tune(build_model, train, n_trials=4, parallelism=2, objective="loss", timeout=0.0)
    report("timeout", trials=len(result.study.trials), tasks=result.tasks, best_model=result.best_model is not None,
           best_params=result.best_params, best_value=result.best_value)


def guide():
    """docs/guide/tuning.md's snippet as written (its getOrCreate finds this script's session)."""
    import contextlib
    import io
    import re
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "guide" / "tuning.md").read_text()
    code = re.findall(r"```python\n(.*?)```", page, re.S)[0]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "docs/guide/tuning.md", "exec"), {"__name__": "docs"})
    report("guide", printed=printed.getvalue())


def refusals():
    bad_x = train.where("partition_id = 2").collect()[7]["x"][0]  # the 8th row of id 2 gets a NaN label
    messages = {}
    for case, kwargs in {
        "val_objective_without_validation": dict(n_trials=1),
        "too_many_tasks": dict(n_trials=3, parallelism=3, validation_data=val),
        "nan_label": dict(n_trials=2, parallelism=2, objective="loss",
                          df=train.withColumn("y", F.when((F.col("partition_id") == 2) & (F.col("x")[0] == bad_x),
                                                          F.lit(float("nan"))).otherwise(F.col("y")))),
    }.items():
        data = kwargs.pop("df", train)
        try:
            keras_spark.tune(build_model, data, **kwargs)
            messages[case] = None
        except Exception as error:  # noqa: BLE001  the test asserts the type and message
            messages[case] = f"{type(error).__name__}: {error}"
    report("refusals", messages=messages)


for scenario in sys.argv[1:] or ["refusals", "enqueued", "default_storage", "timeout", "guide"]:
    globals()[scenario]()
spark.stop()
shutil.rmtree(run_tmp, ignore_errors=True)

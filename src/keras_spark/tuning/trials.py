"""The executor side of `tune`: one long-lived Spark task that runs trial after trial.

Each task receives every training and validation row once (the driver's plan replicates them,
one copy a task), writes them to a local cache through the C++ CacheWriter, then loops: ask the
study for a trial (through the study's storage, which the executors reach), build the model,
train it from the cache with Keras's own `fit`, report each epoch's objective (the pruner may
stop it at the epoch's end), tell the result. The backend is imported once a task, and the rows
are read once a task, whatever the number of trials it runs.
"""

from __future__ import annotations

import gc
import math
import os
import random
import time
import traceback
from dataclasses import dataclass
from typing import Any

TRACEBACK_ATTR = "keras_spark_traceback"
"""str: the user attribute that holds a failed trial's traceback."""
PID_ATTR = "keras_spark_pid"
"""str: the user attribute that holds the process id of the Spark task that ran the trial."""
TASK_ATTR = "keras_spark_task"
"""str: the user attribute that holds the index (0 to parallelism - 1) of the task that ran the trial."""
SETUP_ATTR = "keras_spark_setup_s"
"""str: the user attribute that holds a trial's set-up seconds: build_model, then its feeds over the cache."""
DATA_SETUP_ATTR = "keras_spark_data_setup_s"
"""str: the user attribute that holds a trial's data set-up seconds: opening its feeds over the task's cache."""
SURPLUS_ATTR = "keras_spark_surplus"
"""str: set (True) on a trial asked in the same instant as the last one wanted, told FAIL without running."""


@dataclass(frozen=True)
class TrialJob:
    """What every trial task is told; made once on the driver."""

    study_name: str
    storage: Any  # a storage URL (str) or a picklable optuna storage
    sampler: bytes  # the user's sampler and pruner, cloudpickled (None when Optuna's defaults)
    pruner: bytes
    build_model: bytes  # the user's build_model, cloudpickled
    backend: str
    n_trials: int
    before: frozenset  # numbers of the study's trials asked before this call (all but WAITING ones)
    deadline_s: float | None  # seconds after a task starts when it stops asking (timeout)
    objective: str
    maximize: bool
    batch_size: int
    validation_batch_size: int
    epochs: int
    shuffle: bool
    fit_kwargs: dict
    bindings: list
    columns: list  # core specs of the bound columns
    pid_index: int
    validation_offset: int | None  # validation ids travel as id + this
    allow_non_finite: bool
    cache_dir: str | None


def trial_task(batches, *, job: TrialJob):
    """mapInArrow over one replica of the rows: cache them, run trials, yield this task's summary."""
    from pyspark import TaskContext

    from keras_spark import scratch
    from keras_spark.spark.distributed import _result_row

    ctx = TaskContext.get()
    index = ctx.partitionId() if ctx else 0
    started = time.perf_counter()
    workdir = scratch.make_dir(f"trials{index}_", job.cache_dir)
    try:
        train, validation, data_s = _cache_rows(batches, workdir, job)
        summary = _run_trials(job, index, train, validation, started)
        summary.update(task=index, pid=os.getpid(), data_s=data_s, rows=train.rows)
        yield _result_row(index, summary)
    finally:
        scratch.remove(workdir)


def _cache_rows(batches, workdir: str, job: TrialJob):
    """This task's copy of the rows in a local cache: (training, validation or None, seconds)."""
    import json

    from keras_spark.errors import DataError
    from keras_spark.spark.distributed import _named_row, _split_cache
    from keras_spark.spark.extract import _assemble, _write_rows

    started = time.perf_counter()
    info = json.loads(_write_rows(batches, os.path.join(workdir, "rows"), job.columns, job.pid_index,
                                  job.allow_non_finite))
    if "error" in info:  # all of an id's rows are here in the DataFrame's order: named as fit names it
        raise DataError(_named_row(info, job.validation_offset))
    cached = _assemble(workdir, job.bindings, [info])
    train, validation = _split_cache(cached, job.validation_offset)
    return train, validation, time.perf_counter() - started


def _import_backend(backend: str):
    from keras_spark import devices

    os.environ.setdefault("KERAS_BACKEND", backend)
    placement = devices.use_task_devices(backend, 0.0, role="tune")  # CPU threads capped to the task's cores
    from keras_spark.quiet import import_backend

    import_backend()
    import keras

    devices.after_backend_import(placement)
    if keras.backend.backend() != backend:
        raise RuntimeError(f"this Spark Python worker runs Keras on '{keras.backend.backend()}', the driver on "
                           f"'{backend}': set KERAS_BACKEND={backend} for the executors (spark.executorEnv)")
    return keras


def _open_study(job: TrialJob):
    import optuna
    from pyspark import cloudpickle

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = cloudpickle.loads(job.sampler)
    if sampler is not None:
        sampler.reseed_rng()  # tasks with one seed would propose the same parameters, trial for trial
    return optuna.load_study(study_name=job.study_name, storage=job.storage, sampler=sampler,
                             pruner=cloudpickle.loads(job.pruner))


def _run_trials(job: TrialJob, index: int, train, validation, started: float) -> dict:
    """Trial after trial until the study holds n_trials of this call's trials, or the deadline passes."""
    from pyspark import cloudpickle

    began = time.perf_counter()
    keras = _import_backend(job.backend)
    import optuna

    import_s = time.perf_counter() - began

    study = _open_study(job)
    build_model = cloudpickle.loads(job.build_model)
    ran, best = [], None
    while _more_wanted(study, job, started):
        trial = study.ask()
        if _this_call(study, job).index(trial.number) >= job.n_trials:  # another task asked in the same instant
            trial.set_user_attr(SURPLUS_ATTR, True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            break
        record = _one_trial(keras, study, trial, build_model, job, index, train, validation)
        ran.append({k: v for k, v in record.items() if k != "weights"})
        if record["state"] == "COMPLETE" and (best is None or _better(record["value"], best["value"], job.maximize)):
            best = record
        keras.backend.clear_session()  # one trial's graphs and variables do not pile up in a long-lived task
        gc.collect()
    return {"trials": ran, "best": best, "import_s": import_s}


def _more_wanted(study, job: TrialJob, started: float) -> bool:
    if job.deadline_s is not None and time.perf_counter() - started >= job.deadline_s:
        return False
    return len(_this_call(study, job)) < job.n_trials


def _this_call(study, job: TrialJob) -> list[int]:
    """Numbers of the trials this call asked (enqueued trials count once asked), in order."""
    import optuna

    waiting = optuna.trial.TrialState.WAITING
    return sorted(t.number for t in study.get_trials(deepcopy=False)
                  if t.state != waiting and t.number not in job.before)


def _better(value: float, than: float, maximize: bool) -> bool:
    return value > than if maximize else value < than


def _one_trial(keras, study, trial, build_model, job: TrialJob, index: int, train, validation) -> dict:
    """Build, train and tell one trial; never raises (a failure is the trial's state)."""
    import optuna

    trial.set_user_attr(PID_ATTR, os.getpid())
    trial.set_user_attr(TASK_ATTR, index)
    record = {"number": trial.number, "pid": os.getpid(), "epochs": 0, "value": None, "setup_s": 0.0,
              "data_setup_s": 0.0, "train_s": 0.0}
    feeds = []
    try:
        began = time.perf_counter()
        model = build_model(trial)
        _check_model(model, job.bindings)
        built = time.perf_counter()
        feed, val_input, val_steps = _feeds(keras, model, train, validation, job, feeds)
        record["setup_s"], record["data_setup_s"] = time.perf_counter() - began, time.perf_counter() - built
        trial.set_user_attr(SETUP_ATTR, record["setup_s"])
        trial.set_user_attr(DATA_SETUP_ATTR, record["data_setup_s"])
        reporter = _EpochReporter(keras, trial, job.objective)
        began = time.perf_counter()
        from keras_spark.feed import keras_input

        kwargs = dict(job.fit_kwargs)
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [reporter.callback]
        history = keras.Model.fit(model, keras_input(feed), epochs=job.epochs, steps_per_epoch=feed.steps_per_epoch,
                                  validation_data=val_input, validation_steps=val_steps, shuffle=False, **kwargs)
        record["train_s"] = time.perf_counter() - began
        record["epochs"] = reporter.epochs
        if reporter.pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            record["state"] = "PRUNED"
            return record
        value = _final_value(history.history, job.objective)
        study.tell(trial, value)
        record.update(state="COMPLETE", value=value, weights=[keras.ops.convert_to_numpy(w)
                                                               for w in model.weights])
        return record
    except Exception:
        trial.set_user_attr(TRACEBACK_ATTR, traceback.format_exc())
        study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        record["state"] = "FAIL"
        return record
    finally:
        for feed in feeds:
            feed.close()


def _check_model(model, bindings) -> None:
    import keras

    if not isinstance(model, keras.Model) or not model.compiled:
        raise TypeError(f"build_model(trial) must return a compiled keras.Model; it returned {type(model).__name__}"
                        + ("" if not isinstance(model, keras.Model) else " that is not compiled"))
    wanted = sorted(b.keras_name for b in bindings if b.role != "weight")
    found = sorted([t.name for t in model.inputs] + list(model.output_names))
    if wanted != found:
        raise ValueError(f"every trial's model must have the inputs and outputs of the first one built on the "
                         f"driver, {wanted}; this trial's has {found}")


def _feeds(keras, model, train, validation, job: TrialJob, opened: list):
    from keras_spark.feed import keras_input
    from keras_spark.spark.training import _feed

    feed = _feed(model, train, job.batch_size, shuffle=job.shuffle, seed=random.getrandbits(62))
    opened.append(feed)
    if validation is None or validation.rows == 0:
        return feed, None, None
    val_feed = _feed(model, validation, job.validation_batch_size, shuffle=False, seed=0)
    opened.append(val_feed)
    return feed, keras_input(val_feed), val_feed.steps_per_epoch


def _final_value(history: dict, objective: str) -> float:
    if objective not in history:
        raise KeyError(f"objective={objective!r} is not among the figures fit reports, {sorted(history)}; "
                       f"use one of them (val_* needs validation_data)")
    value = float(history[objective][-1])
    if not math.isfinite(value):
        raise ValueError(f"the objective {objective!r} ended at {value}")
    return value


class _EpochReporter:
    """Reports each epoch's objective to the trial and stops training when the pruner says so."""

    def __init__(self, keras, trial, objective: str):
        self.epochs, self.pruned = 0, False
        reporter = self

        class _Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                if objective not in logs:
                    raise KeyError(f"objective={objective!r} is not among the figures of epoch {epoch}, "
                                   f"{sorted(logs)} (val_* needs validation_data)")
                reporter.epochs += 1
                value = float(logs[objective])
                trial.report(value, epoch)  # NaN and inf too: ThresholdPruner prunes them
                if trial.should_prune():
                    reporter.pruned = True
                    self.model.stop_training = True
                elif not math.isfinite(value):  # nothing more to learn: the trial fails with it (_final_value)
                    self.model.stop_training = True

        self.callback = _Callback()


def task_summaries(rows) -> list[dict]:
    """The tasks' summaries out of the job's result rows (chunked as distributed._result_row makes them)."""
    from keras_spark.spark.distributed import _joined_results

    return _joined_results(rows)



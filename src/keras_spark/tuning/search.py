"""`tune`: the driver's side of a search. It binds the columns, creates the study, runs ONE Spark
job of `parallelism` long-lived trial tasks (trials.py) and waits; it never trains."""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from keras_spark import scratch
from keras_spark.tuning.trials import TrialJob, _better, task_summaries, trial_task

_TASK_COLUMN = "__keras_spark_trial_task"
_RESULT_SCHEMA = "rank int, part int, payload binary"
_PROBE_ATTEMPTS = 8


@dataclass
class TuneResult:
    """What `tune` returns.

    Attributes:
        study (optuna.Study): the study, every trial with its state, parameters, per-epoch values
            (`intermediate_values`) and user attributes (`keras_spark_pid`, `keras_spark_task`,
            `keras_spark_setup_s`; `keras_spark_traceback` for a failed trial). With the default
            storage it is an in-memory copy (the journal file is removed); with your `storage` it
            lives there.
        best_params (dict): the best trial's parameters (`study.best_params`).
        best_value (float): the best trial's objective (`study.best_value`).
        best_trial (optuna.trial.FrozenTrial): the best trial (`study.best_trial`).
        best_model (KerasSparkModel | None): the model of the best trial this call ran, rebuilt on the
            driver by `build_model(optuna.trial.FixedTrial(params))` with the weights that trial's task
            trained and sent back (nothing is retrained); None when no trial completed.
        best_model_trial (int | None): the number of the trial `best_model` comes from (it differs from
            `best_trial.number` only when a study you resumed holds a better trial from before).
        trials (list[dict]): one dict per trial this call ran: `number`, `state`, `value`, `epochs`,
            `pid`, `task`, `setup_s` (build_model and its feeds), `data_setup_s` (its feeds over the
            task's cache, of `setup_s`) and `train_s` (Keras's fit).
        tasks (list[dict]): one dict per trial task: `task`, `pid`, `rows` (training rows it cached),
            `data_s` (seconds to read its rows into its cache, once), `import_s` (the backend's import,
            once), `trials` (numbers it ran).
        wall_s (float): seconds from the call to its return.
    """

    study: Any
    best_params: dict
    best_value: float | None
    best_trial: Any
    best_model: Any
    best_model_trial: int | None
    trials: list = field(default_factory=list)
    tasks: list = field(default_factory=list)
    wall_s: float = 0.0


def tune(build_model: Callable, df, *, n_trials: int, parallelism: int | None = None, validation_data=None,
         objective: str = "val_loss", direction: str = "minimize", epochs: int = 1, batch_size: int | None = None,
         validation_batch_size: int | None = None, shuffle: bool = True, sampler=None, pruner=None, storage=None,
         study_name: str | None = None, timeout: float | None = None, partition_col: str | None = None,
         cache_dir: str | None = None, allow_non_finite: bool = False, **fit_kwargs) -> TuneResult:
    """Search hyperparameters with Optuna; every trial trains on a Spark executor.

    One Spark job runs `parallelism` long-lived tasks. Each task reads the training and validation
    rows once into a local cache (the C++ cache `fit` reads), imports the backend once, then runs
    trial after trial: it asks the study for a trial (Optuna's sampler proposes), calls
    `build_model(trial)`, trains with Keras's `fit` from the cache, reports each epoch's `objective`
    (`trial.report`), stops at an epoch's end when the pruner says so (state PRUNED), and tells the
    last epoch's `objective` (COMPLETE). A trial that raises is told FAIL with its traceback in the
    user attribute `keras_spark_traceback`, and the task goes on. The driver creates the study and
    waits for the job; it never trains.

    Example:
        def build_model(trial):
            x = keras.Input((4,), name="x")
            h = keras.layers.Dense(trial.suggest_int("units", 4, 32), activation="relu")(x)
            model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(h))
            model.compile(keras.optimizers.Adam(trial.suggest_float("lr", 1e-3, 1e-1, log=True)), "mse")
            return model

        result = keras_spark.tune(build_model, train_df, validation_data=val_df, n_trials=20,
                                  parallelism=2, epochs=5, pruner=optuna.pruners.MedianPruner())
        result.best_params, result.best_model.predict(test_df)

    Args:
        build_model (Callable[[optuna.Trial], keras.Model]): returns a compiled functional Keras model
            (a `KerasSparkModel`, or a `keras.Model` that `best_model` wraps in one) built from the
            trial's suggestions. It travels to the executors by value (cloudpickle), with its module
            when that is a file outside site-packages (a script, a notebook's module); what it calls
            from installed packages must be installed on the executors. Every trial's model must have the same inputs
            and outputs: they are bound to columns once, on the driver, from one model built with a
            throwaway trial of random parameters (built, never trained; tried up to 8 times when
            build_model raises for some parameters).
        df (pyspark.sql.DataFrame): the training rows; inputs are fed from the columns named like the
            model's inputs, labels from those named like its outputs, as in `fit`.
        n_trials (int): trials this call runs (COMPLETE, PRUNED and FAIL all count). Tasks stop asking
            when the study holds this many of this call's trials; if two tasks ask for the last one in
            the same instant, the surplus trial is told FAIL without running, with the user attribute
            `keras_spark_surplus`.
        parallelism (int | None): trial tasks, so trials at once; at most the application's task slots
            (`spark.default.parallelism`); default min(slots, n_trials). Each task holds a copy of
            the rows.
        validation_data (pyspark.sql.DataFrame | None): validation rows (the same columns). Needed for a
            `val_*` objective.
        objective (str): the figure of `fit`'s History a trial is judged by, each epoch and at its end:
            "val_loss" (default), "loss", "val_<metric>" or "<metric>".
        direction (str): "minimize" (default) or "maximize" the objective.
        epochs (int): epochs a trial trains, unless pruned.
        batch_size (int | None): training batch size (32 when None).
        validation_batch_size (int | None): validation batch size (batch_size when None).
        shuffle (bool): shuffle the training rows each epoch (a fresh seed a trial).
        sampler (optuna.samplers.BaseSampler | None): Optuna's sampler (TPE when None). Each task
            unpickles its own copy and reseeds it (`reseed_rng`), so tasks do not propose the same
            parameters; a seeded search is therefore not reproducible trial for trial.
        pruner (optuna.pruners.BasePruner | None): Optuna's pruner (MedianPruner when None); it sees
            each epoch's objective as the trials run.
        storage (str | optuna.storages.BaseStorage | None): where the study lives; the executors must
            reach it. None: a journal file (`optuna.storages.JournalStorage(JournalFileBackend(...))`)
            in a scratch directory on the driver, for a classic session with a `local[...]` or
            `local-cluster[...]` master only (the executors share the driver's disk); the study is
            copied into memory when the job ends and the file removed. Elsewhere (a cluster, a Spark
            Connect client) pass a storage both reach: a database URL (e.g.
            "postgresql://user:pass@host/db"), or a `JournalStorage` whose file is on a store every
            executor mounts (NFS, a DBFS/Volumes path).
        study_name (str | None): the study's name in `storage`; an existing study of that name is
            resumed (its trials stay, `n_trials` more run). None: a new unique name.
        timeout (float | None): seconds, from each task's start, after which it asks for no more trials
            (its running trial finishes).
        partition_col (str | None): the column of partition ids the rows are cached by, as `fit`: None reads
            "partition_id", made when the DataFrame has none; a named column must exist.
        cache_dir (str | None): where each task writes its cache on its executor (the temporary directory
            when None).
        allow_non_finite (bool): accept NaN and infinite values in the data, as `fit`.
        **fit_kwargs (Any): passed to each trial's `keras.Model.fit`: e.g. `verbose` (0 when not given),
            `callbacks` (picklable; they run in the trial's task), `class_weight`.

    Returns:
        TuneResult: the study, the best parameters and value, and the best trial's trained model.

    Raises:
        ValueError: a bad argument, or no storage the executors can reach (see `storage`).
        keras_spark.errors.BindingError: a column missing or of the wrong type for the first model.
        keras_spark.errors.DataError: a bad value in the rows (from the tasks, before any trial).
    """
    import keras
    import optuna

    started = time.perf_counter()
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer; got {n_trials!r}")
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize'; got {direction!r}")
    if objective.startswith("val_") and validation_data is None:
        raise ValueError(f"objective={objective!r} is a validation figure: pass validation_data=<DataFrame>, "
                         f"or judge trials by a training figure (objective='loss')")
    spark = df.sparkSession
    parallelism = _checked_parallelism(spark, parallelism, n_trials)
    plan = _plan(build_model, df, validation_data, partition_col)
    with _study_storage(spark, storage) as (store, keep):
        study = optuna.create_study(storage=store, sampler=sampler, pruner=pruner, study_name=study_name,
                                    direction=direction, load_if_exists=study_name is not None)
        before = frozenset(t.number for t in study.get_trials(deepcopy=False)
                           if t.state != optuna.trial.TrialState.WAITING)
        job = _job(plan, study, store, build_model, sampler, pruner, n_trials, before, timeout, objective,
                   direction, epochs, batch_size, validation_batch_size, shuffle, fit_kwargs, cache_dir,
                   allow_non_finite, keras.backend.backend())
        try:
            summaries = _run_job(spark, plan, job, parallelism)
        finally:  # a failed job too: no task runs a trial any more
            fail_orphans(study, before)
        study = keep(study)
    return _result(study, summaries, build_model, direction, time.perf_counter() - started)


def _checked_parallelism(spark, parallelism, n_trials: int) -> int:
    from keras_spark.spark.session import task_slots

    slots = task_slots(spark)
    if parallelism is None:
        return max(1, min(slots, n_trials))
    if not isinstance(parallelism, int) or isinstance(parallelism, bool) or parallelism < 1:
        raise ValueError(f"parallelism must be a positive integer; got {parallelism!r}")
    if parallelism > slots:
        raise ValueError(f"parallelism={parallelism} needs {parallelism} task slots at once (long-lived trial "
                         f"tasks), but this Spark application has {slots}; use parallelism={slots} or fewer")
    return parallelism


@dataclass
class _Plan:
    selected: Any  # the bound columns (and validation rows, ids shifted past `offset`)
    bindings: list
    names: list
    partition_col: str
    offset: int | None


def _plan(build_model, df, validation_data, partition_col: str | None) -> _Plan:
    """Bind the columns from one model built on the driver with a throwaway trial (never trained)."""
    from pyspark.sql import functions as F

    from keras_spark.spark import is_spark_dataframe
    from keras_spark.spark.distributed import _with_validation
    from keras_spark.spark.training import _bind, with_partition_ids

    model = _probe_model(build_model)
    named = partition_col
    df, partition_col, _ = with_partition_ids(df, named)
    bindings = _bind(model, df, partition_col, with_labels=True)
    names = list(dict.fromkeys([b.column for b in bindings] + [partition_col]))
    selected = df.select(*[F.col(f"`{n}`") for n in names])
    offset = None
    if validation_data is not None:
        if not is_spark_dataframe(validation_data):
            raise TypeError("validation_data must be a Spark DataFrame like df")
        validation_data, _, _ = with_partition_ids(validation_data, named, frame="validation_data")
        _bind(model, validation_data, partition_col, with_labels=True)
        selected, offset = _with_validation(selected, validation_data, names, partition_col)
    del model
    return _Plan(selected, bindings, names, partition_col, offset)


def _probe_model(build_model, attempts: int = _PROBE_ATTEMPTS):
    """A model of random parameters (a throwaway in-memory study), to bind the columns; never trained.

    A build_model that raises for some parameters is tried again with others; the last error is raised.
    """
    import optuna

    with _optuna_quiet():  # not the user's study: no "A new study created" line
        probes = optuna.create_study(sampler=optuna.samplers.RandomSampler())
    for attempt in range(attempts):
        try:
            return build_model(probes.ask())
        except Exception:
            if attempt == attempts - 1:
                raise


@contextlib.contextmanager
def _optuna_quiet():
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


@contextlib.contextmanager
def _study_storage(spark, storage):
    """(the storage the executors use, a function that makes the study the caller keeps)."""
    if storage is not None:
        yield storage, lambda study: study
        return
    import optuna
    from optuna.storages.journal import JournalFileBackend

    _check_shared_disk(spark)
    directory = scratch.make_dir("tune_")
    try:
        store = optuna.storages.JournalStorage(JournalFileBackend(f"{directory}/journal.log"))

        def in_memory(study):
            memory = optuna.storages.InMemoryStorage()
            with _optuna_quiet():  # the study's copy, already announced
                optuna.copy_study(from_study_name=study.study_name, from_storage=store, to_storage=memory)
            return optuna.load_study(study_name=study.study_name, storage=memory)

        yield store, in_memory
    finally:
        scratch.remove(directory)


def _check_shared_disk(spark) -> None:
    from keras_spark.spark.session import is_connect

    master = "" if is_connect(spark) else (spark.sparkContext.master or "")
    if re.fullmatch(r"local(-cluster)?(\[[^\]]*\])?", master.strip()):
        return
    where = "a Spark Connect client" if is_connect(spark) else f"master {master!r}"
    raise ValueError(
        f"tune needs a study storage the executors reach; the default (a journal file on the driver's disk) "
        f"serves classic sessions with a local[...] or local-cluster[...] master only, and this is {where}. "
        f"Pass storage=: a database URL both reach (e.g. 'postgresql://user:pass@host/db', or 'mysql://...'), "
        f"or optuna.storages.JournalStorage(JournalFileBackend(path)) with `path` on a file system every "
        f"executor and this process mount")


def _job(plan: _Plan, study, store, build_model, sampler, pruner, n_trials, before, timeout, objective,
         direction, epochs, batch_size, validation_batch_size, shuffle, fit_kwargs, cache_dir, allow_non_finite,
         backend) -> TrialJob:
    from pyspark import cloudpickle

    from keras_spark.kinds import kind_of
    from keras_spark.spark.training import batch_size_or_default

    batch_size = batch_size_or_default(batch_size)
    fit_kwargs = dict(fit_kwargs)
    fit_kwargs.setdefault("verbose", 0)
    for refused in ("x", "y", "validation_split", "steps_per_epoch", "initial_epoch", "num_workers"):
        if refused in fit_kwargs:
            raise ValueError(f"tune does not take {refused}= (each trial trains `epochs` full passes over df)")
    return TrialJob(
        study_name=study.study_name, storage=store, sampler=cloudpickle.dumps(sampler),
        pruner=cloudpickle.dumps(pruner), build_model=_pickled_by_value(build_model), backend=backend,
        n_trials=n_trials, before=before, deadline_s=timeout, objective=objective,
        maximize=direction == "maximize", batch_size=batch_size,
        validation_batch_size=batch_size_or_default(validation_batch_size or batch_size, "validation_batch_size"),
        epochs=int(epochs), shuffle=bool(shuffle), fit_kwargs=fit_kwargs, bindings=plan.bindings,
        columns=[kind_of(b).core_spec(b, plan.names.index(b.column)) for b in plan.bindings],
        pid_index=plan.names.index(plan.partition_col), validation_offset=plan.offset,
        allow_non_finite=allow_non_finite, cache_dir=cache_dir,
    )


def fail_orphans(study, before: frozenset) -> list[int]:
    """Tell FAIL this call's trials still RUNNING once the job has ended: their task was lost (an executor
    died; Spark ran the task again, which asked for new trials). Returns their numbers."""
    import optuna

    running = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
               if t.number not in before]
    for number in running:
        study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    return running


def _pickled_by_value(build_model) -> bytes:
    """build_model's bytes; its module travels by value when the executors may not import it (a file of yours
    outside site-packages), as custom objects do (model_package)."""
    from pyspark import cloudpickle

    from keras_spark.model_package import _by_value, _ships_by_value

    module = getattr(build_model, "__module__", None)
    with _by_value({module} if module and _ships_by_value(module) else set()):
        return cloudpickle.dumps(build_model)


def _run_job(spark, plan: _Plan, job: TrialJob, parallelism: int) -> list[dict]:
    """ONE job: every row copied once to each of `parallelism` tasks, which then run the trials."""
    from pyspark.sql import functions as F

    from keras_spark.spark.distributed import _surfaced, routing_keys
    from keras_spark.spark.executors import check_executors, worker_python
    from keras_spark.spark.extract import _SOURCE_ORDER

    check_executors(spark, job.backend)
    keys = routing_keys(parallelism)  # key k's Spark hash sends its copy to partition k
    # Rows of one id keep the DataFrame's order (the shuffle does not), so a bad row is named as fit names it.
    copies = (plan.selected.withColumn(_SOURCE_ORDER, F.monotonically_increasing_id())
              .withColumn(_TASK_COLUMN, F.explode(F.array(*[F.lit(k) for k in keys])))
              .repartition(parallelism, F.col(_TASK_COLUMN)).drop(_TASK_COLUMN)
              .sortWithinPartitions(F.col(f"`{plan.partition_col}`"), F.col(_SOURCE_ORDER)).drop(_SOURCE_ORDER))
    try:
        with worker_python(spark):
            rows = copies.mapInArrow(functools.partial(trial_task, job=job), _RESULT_SCHEMA).collect()
    except Exception as error:  # a Py4J/Spark error that wraps the task's own (a DataError in the rows)
        raise _surfaced(error) from None
    return task_summaries(rows)


def _result(study, summaries: list[dict], build_model, direction: str, wall_s: float):
    trials, tasks, best = [], [], None
    for summary in summaries:
        tasks.append({"task": summary["task"], "pid": summary["pid"], "rows": summary["rows"],
                      "data_s": summary["data_s"], "import_s": summary["import_s"],
                      "trials": [t["number"] for t in summary["trials"]]})
        trials += [dict(t, task=summary["task"]) for t in summary["trials"]]
        candidate = summary["best"]
        if candidate is not None and (best is None or _better(candidate["value"], best["value"],
                                                              direction == "maximize")):
            best = candidate
    trials.sort(key=lambda t: t["number"])
    completed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    best_model = _rebuilt(study, build_model, best) if best is not None else None
    return TuneResult(
        study=study, best_params=study.best_params if completed else {},
        best_value=study.best_value if completed else None, best_trial=study.best_trial if completed else None,
        best_model=best_model, best_model_trial=best["number"] if best else None, trials=trials, tasks=tasks,
        wall_s=wall_s,
    )


def _rebuilt(study, build_model, best: dict):
    """The best trial's model on the driver: rebuilt from its parameters, the task's trained weights set."""
    import optuna

    from keras_spark.models import KerasSparkModel

    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == best["number"])
    model = build_model(optuna.trial.FixedTrial(frozen.params, number=frozen.number))
    model.set_weights(best["weights"])
    if isinstance(model, KerasSparkModel):
        return model
    wrapped = KerasSparkModel(inputs=model.inputs, outputs=model.outputs, name=model.name)  # shares the layers
    with contextlib.suppress(Exception):  # a compile config Keras cannot rebuild leaves it uncompiled
        wrapped.compile_from_config(model.get_compile_config())
    return wrapped

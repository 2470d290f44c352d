"""keras_spark.tune: Optuna trials as long-lived Spark tasks on the executors.

The scenarios run in one subprocess on a local-cluster[2,1,1024] master (tune_run.py); they train,
so their outcome can depend on the backend, but what they check (where trials run, how states and
pruning reach the study, the weights sent back) is code the backends share: they run in the JAX
pass only (see tests/README.md).
"""

import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from builders import run_scenarios

from keras_spark.tuning import DATA_SETUP_ATTR, PID_ATTR, SETUP_ATTR, TASK_ATTR, TRACEBACK_ATTR
from keras_spark.tuning.search import _check_shared_disk, fail_orphans


@pytest.fixture(scope="module")
def scenarios():
    if os.environ.get("KERAS_BACKEND") != "jax":
        pytest.skip("tune's scenarios train on two executors; what they check is backend-independent code around "
                    "Keras's fit, so they run once, in the suite's KERAS_BACKEND=jax pass")
    return run_scenarios("tune_run.py", dict(os.environ), timeout=900)


class _Context:
    def __init__(self, master):
        self.master = master


class _Session:
    def __init__(self, master):
        self.sparkContext = _Context(master)


@pytest.mark.backend_independent
@pytest.mark.session_independent
@pytest.mark.parametrize("master", ["local", "local[2]", "local[2,3]", "local[*]", "local-cluster[2,1,1024]"])
def test_the_default_storage_serves_masters_that_share_the_drivers_disk(master):
    _check_shared_disk(_Session(master))  # no error


@pytest.mark.backend_independent
@pytest.mark.session_independent
@pytest.mark.parametrize("master", ["yarn", "spark://host:7077", "k8s://https://host:443"])
def test_the_default_storage_is_refused_on_a_cluster_with_what_to_pass(master):
    with pytest.raises(ValueError, match=r"Pass storage=: a database URL") as refused:
        _check_shared_disk(_Session(master))
    assert repr(master) in str(refused.value)


def _by_params(result):
    return {(t["params"]["lr"], t["params"]["fail"]): t for t in result["trials"]}


def test_trials_run_in_executor_processes_never_the_driver(scenarios):
    result = scenarios["enqueued"]
    pids = {t["attrs"][PID_ATTR] for t in result["trials"]}
    assert result["driver_pid"] not in pids
    assert pids == {task["pid"] for task in result["tasks"]}
    assert len(pids) == 2  # two tasks, one on each executor


def test_each_task_reads_the_rows_once_and_runs_several_trials(scenarios):
    result = scenarios["enqueued"]
    assert sorted(task["task"] for task in result["tasks"]) == [0, 1]
    for task in result["tasks"]:
        assert task["rows"] == 400  # every training row, once, in each task's cache
        assert len(task["trials"]) >= 2
    ran = sorted(n for task in result["tasks"] for n in task["trials"])
    assert ran == list(range(6))  # n_trials, each run by exactly one task
    # A trial's data set-up is opening its feeds over the task's cache: no Spark pass (the target:
    # under 1 s); the rows were read once, when the task started.
    data_setups = [t["attrs"][DATA_SETUP_ATTR] for t in result["trials"] if DATA_SETUP_ATTR in t["attrs"]]
    assert len(data_setups) == 5 and max(data_setups) < 1.0  # every trial but the one whose build_model raised
    built = [t["attrs"] for t in result["trials"] if SETUP_ATTR in t["attrs"]]
    assert all(attrs[SETUP_ATTR] >= attrs[DATA_SETUP_ATTR] for attrs in built)


def test_two_tasks_run_trials_at_the_same_time(scenarios):
    trials = [t for t in scenarios["enqueued"]["trials"] if t["end"] is not None]
    overlaps = [(a["number"], b["number"]) for a in trials for b in trials
                if a["attrs"][TASK_ATTR] < b["attrs"][TASK_ATTR] and a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlaps


def test_a_pruner_stops_a_diverging_trial_after_its_first_epoch(scenarios):
    result = scenarios["enqueued"]
    trials = _by_params(result)
    bad = trials[(100.0, False)]
    assert bad["state"] == "PRUNED"
    assert bad["reported"] == [0]  # one epoch of three, then stopped
    good = [trials[(lr, False)] for lr in (0.003, 0.01, 0.03, 0.05)]
    assert [t["state"] for t in good] == ["COMPLETE"] * 4
    assert all(t["reported"] == [0, 1, 2] for t in good)  # every epoch's objective reached the study


def test_a_trial_that_raises_is_failed_with_its_traceback_and_the_study_goes_on(scenarios):
    result = scenarios["enqueued"]
    failed = _by_params(result)[(0.01, True)]
    assert failed["state"] == "FAIL"
    assert "RuntimeError: this trial fails on purpose" in failed["attrs"][TRACEBACK_ATTR]
    assert sum(t["state"] == "COMPLETE" for t in result["trials"]) == 4


def test_the_best_model_is_the_best_trials_and_predicts_on_a_dataframe(scenarios):
    result = scenarios["enqueued"]
    complete = [t for t in result["trials"] if t["state"] == "COMPLETE"]
    best = min(complete, key=lambda t: t["value"])
    assert result["best_trial"] == result["best_model_trial"] == best["number"]
    assert result["best_value"] == best["value"]
    assert result["best_params"] == best["params"]
    assert len(result["predicted"]) == 20
    # the weights the best trial's task trained, not a fresh model: the driver's model gives the same outputs
    np.testing.assert_allclose(result["predicted"], result["local"], rtol=1e-4, atol=1e-5)
    assert result["journal_kept"]  # the user's storage stays theirs


def test_the_default_storage_runs_optunas_sampler_and_leaves_nothing_on_disk(scenarios):
    result = scenarios["default_storage"]
    assert len(result["trials"]) == 4
    assert {t["state"] for t in result["trials"]} <= {"COMPLETE", "PRUNED", "FAIL"}
    assert result["storage"] == "InMemoryStorage"  # copied out of the journal, which is removed
    assert result["left"] == []
    assert all(t["attrs"][PID_ATTR] in {task["pid"] for task in result["tasks"]} for t in result["trials"])
    if any(t["state"] == "COMPLETE" for t in result["trials"]):
        assert result["best_model"]


def test_tasks_ask_for_no_trial_after_the_timeout(scenarios):
    result = scenarios["timeout"]
    assert result["trials"] == 0
    assert [task["trials"] for task in result["tasks"]] == [[], []]
    assert result["best_model"] is False and result["best_params"] == {} and result["best_value"] is None


def test_the_guide_snippet_runs_and_finds_a_good_model(scenarios):
    printed = scenarios["guide"]["printed"]
    best = re.search(r"best \{.*\}: val_loss ([0-9.e-]+)", printed)
    assert best and float(best.group(1)) < 0.5  # y = 2x + 1: predicting the mean scores 4/3
    states = re.findall(r"trial \d+ (COMPLETE|PRUNED|FAIL)", printed)
    assert len(states) == 6 and "FAIL" not in states
    assert "predicted" in printed


def test_refusals_name_what_to_do(scenarios):
    messages = scenarios["refusals"]["messages"]
    assert messages["val_objective_without_validation"].startswith("ValueError: objective='val_loss'")
    assert "pass validation_data" in messages["val_objective_without_validation"]
    assert messages["too_many_tasks"].startswith("ValueError: parallelism=3 needs 3 task slots")
    # a bad value fails the job before any trial, named as fit names it
    assert messages["nan_label"].startswith("DataError: ")
    assert "'y'" in messages["nan_label"] and "row 7 of partition id 2" in messages["nan_label"]


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_a_lost_tasks_running_trial_is_failed_when_the_job_ends_and_earlier_trials_are_left_alone():
    import optuna

    study = optuna.create_study()
    earlier = study.ask()  # RUNNING, from before this call (another process may still run it)
    before = frozenset({earlier.number})
    lost, done = study.ask(), study.ask()
    study.tell(done, 1.0)
    assert fail_orphans(study, before) == [lost.number]
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states == {earlier.number: "RUNNING", lost.number: "FAIL", done.number: "COMPLETE"}


def _small_model(trial):
    import keras

    from keras_spark.models import KerasSparkModel

    x = keras.Input((4,), name="x")
    h = keras.layers.Dense(trial.suggest_int("units", 2, 8), activation="tanh")(x)
    model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(h))
    model.compile(keras.optimizers.SGD(trial.suggest_float("lr", 1e-3, 1e-1, log=True)), "mse")
    return model


@pytest.mark.backend_independent  # how the job, its closure and the study's storage travel: the session's concern
def test_tune_through_the_session_with_a_storage_both_reach(spark):
    """Classic and Connect: build_model from this test module (by value), a journal outside /tmp (a Connect
    server may have a private /tmp), trials on the executors, the best model scored on them."""
    import optuna
    from builders import frame_of_sizes
    from optuna.storages.journal import JournalFileBackend

    import keras_spark
    from keras_spark.spark.session import is_connect

    df = frame_of_sizes(spark, [40, 40], seed=0)
    if is_connect(spark):
        with pytest.raises(ValueError, match="Spark Connect client"):
            keras_spark.tune(_small_model, df, n_trials=1, objective="loss")
    folder = Path(__file__).parent.parent / "build" / f"tune_test_{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    try:
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(folder / "journal.log")))
        result = keras_spark.tune(_small_model, df, n_trials=2, parallelism=2, epochs=1, objective="loss",
                                  storage=storage)
        assert [t.state.name for t in result.study.trials] == ["COMPLETE", "COMPLETE"]
        assert all(t.user_attrs[PID_ATTR] != os.getpid() for t in result.study.trials)
        assert result.best_model.predict(df.limit(3)).count() == 3
    finally:
        shutil.rmtree(folder, ignore_errors=True)

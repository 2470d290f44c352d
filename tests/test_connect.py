"""Spark Connect: a client whose files the Spark server cannot see trains, evaluates and scores.

The `isolated_connect` fixture is a Connect session to the run's one server, which
has a private /tmp (tests/connect_server.py): the client's temporary cache directory
does not exist for its executors, as on a remote cluster.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from builders import in_the_data_parallel_passes, numeric_frame, regression_model, run_scenarios, to_numpy

from keras_spark.spark import session
from keras_spark.spark.extract import CLIENT_WROTE, EXECUTORS_WROTE

# Where the backend and the session meet (the model shipped and scored, num_workers through Connect): every pass.
pytestmark = pytest.mark.connect_every_backend


@pytest.mark.backend_independent
def test_fit_with_validation_streams_rows_the_executors_cannot_write_for_the_client(isolated_connect):
    df, val = numeric_frame(isolated_connect, 3000, 4), numeric_frame(isolated_connect, 600, 2, seed=7)
    model = regression_model()
    history = model.fit(df, batch_size=64, epochs=3, validation_data=val, verbose=0)
    assert model.data_stats["cache_path"] == CLIENT_WROTE
    assert model.data_stats["validation_cache_path"] == CLIENT_WROTE
    assert model.data_stats["rows"] >= 3 * 3000  # rows served; prefetch may read ahead
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert len(history.history["val_loss"]) == 3


@pytest.mark.backend_independent
def test_evaluate_equals_keras_on_the_same_rows(isolated_connect):
    df = numeric_frame(isolated_connect, 1000, 3)
    model = regression_model()
    x, y = to_numpy(df, "x", "y")
    expected = model.evaluate(x, y, batch_size=100, verbose=0)
    assert model.evaluate(df, batch_size=100, verbose=0) == pytest.approx(expected, rel=1e-5)


def test_predict_equals_keras_and_ships_the_model_once_per_session(isolated_connect):
    df = numeric_frame(isolated_connect, 500, 2)
    model = regression_model()
    before = session.upload_count
    first = model.predict(df).orderBy("id").select("model_output.y").toArrow()
    again = model.predict(df).orderBy("id").select("model_output.y").toArrow()
    assert session.upload_count == before + 1  # same bytes, same session: already there
    (x,) = to_numpy(df, "x")
    expected = model.predict(x, verbose=0).reshape(-1)
    np.testing.assert_allclose(first.column("y").to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert first.equals(again)


@pytest.mark.backend_independent
def test_a_cache_dir_both_sides_see_is_written_by_the_executors(spark):
    from connect_server import shared_scratch

    shared = shared_scratch("keras_spark_shared_")  # outside /tmp, which an isolated server does not share
    try:
        model = regression_model()
        model.fit(numeric_frame(spark, 500, 2), batch_size=50, epochs=1, verbose=0, cache_dir=shared)
        assert model.data_stats["cache_path"] == EXECUTORS_WROTE
        assert os.listdir(shared) == []
    finally:
        os.rmdir(shared)


@pytest.mark.backend_independent
def test_task_slots_agree_with_the_master(spark):
    assert session.task_slots(spark) == 2  # local[2], classic and Connect


@pytest.mark.backend_independent
def test_the_servers_private_tmp_binds_back_what_a_cluster_node_has_installed():
    from connect_server import mount_plan

    plan = mount_plan(["/tmp/venv", "/tmp/venv/lib/python3.11/site-packages", "/usr/lib/jvm", "/tmp/clone/src"],
                      hold="/home/u/hold")
    assert plan == ["mount --bind '/tmp' '/home/u/hold'", "mount -t tmpfs tmpfs '/tmp'",
                    "mkdir -p '/tmp/clone/src'", "mount --bind '/home/u/hold/clone/src' '/tmp/clone/src'",
                    "mkdir -p '/tmp/venv'", "mount --bind '/home/u/hold/venv' '/tmp/venv'", "umount -l '/home/u/hold'"]
    assert mount_plan(["/usr/lib/jvm", "/opt/venv"], hold="/home/u/hold") == ["mount -t tmpfs tmpfs '/tmp'"]


@pytest.mark.backend_independent
def test_the_servers_private_tmp_shows_installed_paths_and_hides_the_clients_scratch():
    from connect_server import can_isolate, mount_plan

    if can_isolate() is not None:
        pytest.skip(f"this machine cannot make a private /tmp: {can_isolate()}")
    installed, scratch = tempfile.mkdtemp(dir="/tmp"), tempfile.mkdtemp(dir="/tmp")
    hold = tempfile.mkdtemp(dir=os.path.expanduser("~"))
    try:
        Path(installed, "module.py").write_text("")
        Path(scratch, "cache.bin").write_text("")
        check = " && ".join([*mount_plan([installed], hold), f"test -f {installed}/module.py",
                             f"! test -e {scratch}/cache.bin"])
        done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", check],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    finally:
        for path in (installed, scratch):
            shutil.rmtree(path)
        os.rmdir(hold)


@pytest.mark.backend_independent
def test_master_urls_give_their_slots():
    assert session._slots_of_master("local[3]") == 3
    assert session._slots_of_master("local[4,2]") == 4
    assert session._slots_of_master("local") == 1
    assert session._slots_of_master("local-cluster[2,3,1024]") == 6
    assert session._slots_of_master("yarn") is None


@pytest.fixture(scope="module")
def distributed_scenarios(spark, request):
    if not session.is_connect(spark):
        pytest.skip("the classic num_workers scenarios are in test_distributed.py")
    connect_server = request.getfixturevalue("connect_server")
    if not connect_server.isolated:
        pytest.skip("this machine cannot give the Connect server a private /tmp")
    if in_the_data_parallel_passes.args[0]:
        pytest.skip(in_the_data_parallel_passes.kwargs["reason"])
    env = dict(os.environ, KERAS_SPARK_CONNECT_URL=connect_server.url)
    env.pop("SPARK_CONNECT_MODE_ENABLED", None)
    return run_scenarios("connect_distributed_run.py", env, timeout=900)


def test_two_workers_train_with_validation_through_connect(distributed_scenarios):
    result = distributed_scenarios["trains_with_validation"]
    assert result["keys"] == ["loss", "val_loss"]
    assert result["loss"][-1] < result["loss"][0]
    assert sum(result["stats"]["rows_per_worker"]) == 4000


def test_a_failing_worker_is_a_training_error_with_its_message_through_connect(distributed_scenarios):
    result = distributed_scenarios["worker_raises"]
    assert result["raised"] == "TrainingError"
    assert "worker 1 failed: ValueError: this worker failed on purpose at epoch 1" in result["message"]

"""keras-spark leaves nothing behind and reports true figures.

Scratch directories are removed on success, failure and signal, swept when their owner
died; native pipelines are closed with their owner; data_stats counts rows trained.
The signal scenarios run a fit in a subprocess (lifecycle_run.py) and look at what it left.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest
from builders import numeric_frame, regression_model
from pyspark.sql import functions as F

from keras_spark import scratch
from keras_spark.shutdown import NativeHandle, terminate_cleanly


def _leftovers(parent) -> list[str]:
    return sorted(name for name in os.listdir(parent) if name.startswith("keras_spark_"))


def _dir_owned_by(parent, owner: scratch.Owner) -> str:
    path = os.path.join(parent, f"keras_spark_{owner.pid}_{uuid.uuid4().hex[:6]}")
    os.makedirs(path)
    Path(path, "data.bin").write_bytes(b"x" * 100)
    Path(path, scratch.OWNER_FILE).write_text(json.dumps(asdict(owner)))
    return path


# -- ownership, sweeping ---------------------------------------------------------------------
@pytest.mark.backend_independent
def test_a_directory_of_a_dead_process_is_swept_by_the_next_make_dir(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    stale = _dir_owned_by(tmp_path, scratch.Owner.of_process(child.pid))
    child.kill()
    child.wait()
    made = scratch.make_dir(parent=str(tmp_path))
    try:
        assert not os.path.exists(stale)
        assert os.path.isdir(made)
    finally:
        scratch.remove(made)


@pytest.mark.backend_independent
def test_a_directory_of_a_live_process_is_not_swept(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = _dir_owned_by(tmp_path, scratch.Owner.of_process(child.pid))
        assert scratch.sweep(str(tmp_path)) == []
        assert os.path.exists(os.path.join(live, "data.bin"))
    finally:
        child.kill()
        child.wait()


@pytest.mark.backend_independent
def test_a_reused_pid_is_not_taken_for_the_owner(tmp_path):
    me = scratch.Owner.current()
    stale = _dir_owned_by(tmp_path, scratch.Owner(me.host, me.boot, me.pid, start="1"))  # our pid, older start
    assert scratch.sweep(str(tmp_path)) == [stale]


@pytest.mark.backend_independent
def test_directories_of_other_hosts_or_without_an_owner_file_are_never_swept(tmp_path):
    me = scratch.Owner.current()
    remote = _dir_owned_by(tmp_path, scratch.Owner("another-host", None, 1 << 22, None))
    unowned = tmp_path / "keras_spark_made_by_someone_else"
    unowned.mkdir()
    assert scratch.sweep(str(tmp_path)) == []
    assert os.path.exists(remote) and unowned.exists() and me.is_alive()


@pytest.mark.backend_independent
def test_the_guardian_removes_a_directory_whose_owner_was_killed(tmp_path):
    code = (f"from keras_spark import scratch; import os, signal; p = scratch.make_dir(parent={str(tmp_path)!r}); "
            f"print(p, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == -signal.SIGKILL
    made = done.stdout.strip()
    assert made.startswith(str(tmp_path))
    deadline = time.monotonic() + 10
    while os.path.exists(made) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(made)


@pytest.mark.backend_independent
def test_a_scratch_dir_is_removed_when_its_block_raises(tmp_path):
    with pytest.raises(RuntimeError), scratch.scratch_dir(parent=str(tmp_path)) as path:
        Path(path, "rows").write_bytes(b"1234")
        raise RuntimeError("failed inside")
    assert _leftovers(tmp_path) == [] and scratch.owned() == []


@pytest.mark.backend_independent
def test_sigterm_removes_our_directories_then_chains_to_the_previous_handler(tmp_path):
    received = []

    def record(signum, frame):
        received.append(signum)

    previous = signal.signal(signal.SIGTERM, record)
    try:
        with terminate_cleanly():
            made = scratch.make_dir(parent=str(tmp_path))
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)  # the handler runs in the main thread at the next bytecode
            assert received == [signal.SIGTERM] and not os.path.exists(made)
        assert signal.getsignal(signal.SIGTERM) is record  # put back once the block ends
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- native objects ---------------------------------------------------------------------------
class _Native:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


class _Owner:
    pass


@pytest.mark.backend_independent
def test_a_native_object_is_closed_when_its_owner_is_collected():
    native, owner = _Native(), _Owner()
    handle = NativeHandle(owner, native)
    del owner
    assert native.closed and handle.closed
    with pytest.raises(RuntimeError, match="closed"):
        handle.get()


# -- true figures -----------------------------------------------------------------------------
@pytest.mark.session_independent
def test_data_stats_rows_are_the_rows_trained_epochs_times_the_dataframe(spark):
    df = numeric_frame(spark, rows=1000, partitions=4)
    model = regression_model()
    model.fit(df, batch_size=64, epochs=3, verbose=0)
    assert model.data_stats["rows"] == 3 * 1000
    assert model.data_stats["steps"] == 3 * 16  # ceil(1000 / 64) an epoch
    assert model.data_stats["rows_prefetched"] >= model.data_stats["rows"]


@pytest.mark.session_independent
def test_data_stats_rows_follow_a_users_steps_per_epoch(spark):
    df = numeric_frame(spark, rows=1000, partitions=4)
    model = regression_model()
    # 40 steps over passes of 16 steps (15 of 64 rows, then 40): two passes and 8 full steps.
    model.fit(df, batch_size=64, epochs=2, steps_per_epoch=20, verbose=0)
    assert model.data_stats["rows"] == 2 * 1000 + 8 * 64


# -- failures and signals ---------------------------------------------------------------------
@pytest.mark.backend_independent
def test_a_source_failing_mid_read_raises_its_error_and_leaves_nothing(spark, tmp_path):
    df = numeric_frame(spark, rows=3000, partitions=4)
    failing = df.withColumn("y", F.when(F.col("id") == 2500, F.raise_error(F.lit("source broke at row 2500")))
                            .otherwise(F.col("y")))
    with pytest.raises(Exception, match="source broke at row 2500"):
        regression_model().fit(failing, batch_size=64, epochs=1, verbose=0, cache_dir=str(tmp_path))
    time.sleep(1)  # the job's other task may still be running: it must not bring the directory back
    assert _leftovers(tmp_path) == [] and scratch.owned() == []


def _processes_tagged(tag: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        except OSError:
            continue
        if tag.encode() in environ:
            found.append(f"{pid}: {cmdline}")
    return found


def _until(condition, seconds: float):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
    return condition()


@pytest.fixture
def lifecycle(tmp_path):
    """Starts lifecycle_run.py PHASE with its own TMPDIR; yields a small controller."""
    started = []

    class Run:
        tmpdir = tmp_path / "tmp"
        markers = tmp_path / "markers"
        tag = f"keras_spark_test_{uuid.uuid4().hex}"

        def start(self, phase):
            self.tmpdir.mkdir()
            self.markers.mkdir()
            env = dict(os.environ, TMPDIR=str(self.tmpdir), MARKER_DIR=str(self.markers), KERAS_SPARK_TEST_TAG=self.tag)
            self.stderr_path = self.markers / "stderr.txt"
            with open(self.stderr_path, "w") as stderr:  # a file: a full pipe would block the child
                self.proc = subprocess.Popen(
                    [sys.executable, str(Path(__file__).with_name("lifecycle_run.py")), phase],
                    env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
            started.append(self.proc)
            return self

        def wait_for_line(self, text, seconds=300):
            deadline = time.monotonic() + seconds
            for line in self.proc.stdout:
                if text in line:
                    return
                assert time.monotonic() < deadline, f"no {text!r} within {seconds}s"
            raise AssertionError(f"exited before {text!r}: {self.proc.wait()} {self.stderr()[-3000:]}")

        def stderr(self):
            return self.stderr_path.read_text()

        def signal_and_wait(self, signum):
            self.proc.send_signal(signum)
            sent = time.monotonic()
            self.proc.wait(timeout=120)
            return time.monotonic() - sent

        def leftovers(self):
            return _leftovers(self.tmpdir)

        def processes(self):
            return _processes_tagged(self.tag)

    yield Run()
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _assert_nothing_left(run):
    assert _until(lambda: run.leftovers() == [], 10), run.leftovers()
    assert _until(lambda: run.processes() == [], 60), run.processes()  # the Spark JVM ends after its driver


@pytest.mark.backend_independent
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_the_spark_pass_ends_fit_and_leaves_nothing(lifecycle, signum):
    run = lifecycle.start("spark_pass")
    assert _until(lambda: (run.markers / "spark_pass").exists() and run.leftovers(), 300), "the Spark pass never ran"
    seconds = run.signal_and_wait(signum)
    assert seconds < 30
    assert run.proc.returncode != 0
    _assert_nothing_left(run)


# SIGTERM is keras-spark's own handler whatever the backend; SIGINT is a KeyboardInterrupt inside each backend's loop.
@pytest.mark.parametrize("signum", [pytest.param(signal.SIGTERM, marks=pytest.mark.backend_independent), signal.SIGINT],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_an_epoch_ends_fit_and_leaves_nothing(lifecycle, signum):
    run = lifecycle.start("epoch")
    run.wait_for_line("TRAINING")
    assert run.leftovers(), "the training cache should exist while training"
    seconds = run.signal_and_wait(signum)
    assert seconds < 30
    assert run.proc.returncode in (-signum, 1)  # the signal's own status, or KeyboardInterrupt's traceback
    _assert_nothing_left(run)


@pytest.mark.backend_independent  # the core's threads and keras-spark's directories, whatever runs the steps
def test_an_abandoned_fit_exits_without_leaks_threads_or_directories(lifecycle):
    run = lifecycle.start("abandon")
    run.wait_for_line("RETURNED")
    assert run.proc.wait(timeout=60) == 0
    stderr = run.stderr()
    assert "leaked" not in stderr, stderr[-3000:]
    _assert_nothing_left(run)


@pytest.mark.backend_independent
def test_a_sigint_that_keras_swallows_is_raised_again_at_the_next_pull():
    import keras_spark.shutdown as shutdown

    with shutdown.terminate_cleanly():
        try:  # as Keras's pythonify_logs does around the wait for a step's metrics
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
        except:  # noqa: E722
            pass
        with pytest.raises(KeyboardInterrupt):
            shutdown.raise_if_interrupted()
    shutdown.raise_if_interrupted()  # after the fit: nothing pending

"""GPUs without a GPU: Spark's fake GPU resources, pinning, memory settings, device prefetch on CPU.

The Spark scenarios run in their own local-cluster application with a discovery script
that reports two GPUs (tests/gpu_run.py); the suite's shared local[2] session cannot have
GPU resources. No CUDA is needed: what is asserted is what each worker was told
(CUDA_VISIBLE_DEVICES, memory settings), as it logged it.
"""

import os

import keras
import numpy as np
import pytest
from builders import numeric_frame, only_in_the_jax_pass, regression_model, run_scenarios

from keras_spark import device_prefetch, devices


@pytest.fixture(scope="module")
def scenarios():
    names = ["predict", "train"] if os.environ.get("KERAS_BACKEND") == "jax" else ["predict"]
    return run_scenarios("gpu_run.py", dict(os.environ, KERAS_SPARK_TEST_SCENARIOS=",".join(names)), timeout=600)


# -- predict on GPU executors -------------------------------------------------------------
def test_each_scoring_worker_sees_only_its_tasks_gpu(scenarios):
    records = scenarios["predict"]["records"]
    assert scenarios["predict"]["rows"] == 3200
    assert len({r["partition"] for r in records}) == 8  # every task logged
    for r in records:
        assert len(r["task_addresses"]) == 1 and r["task_addresses"][0] in {"0", "1"}
        assert r["visible_devices"] == r["task_addresses"][0]


def test_a_fractional_amount_lets_tasks_share_a_gpu(scenarios):
    records = scenarios["predict"]["records"]
    assert {r["gpu_amount"] for r in records} == {0.5}
    workers_by_gpu: dict[str, set] = {}
    for r in records:
        workers_by_gpu.setdefault(r["visible_devices"], set()).add(r["pid"])
    # One GPU an executor, two task slots: at least two Python workers pinned the same GPU.
    assert max(len(pids) for pids in workers_by_gpu.values()) >= 2


def test_memory_settings_for_a_shared_gpu_are_applied(scenarios):
    backend = keras.backend.backend()
    records = scenarios["predict"]["records"]
    first_tasks = {r["pid"]: r for r in reversed(records)}.values()  # each worker's first task pinned it
    assert all(not r["backend_imported_before"] for r in first_tasks)  # so the settings came in time
    for r in records:
        assert r["backend"] == backend
        if backend == "tensorflow":
            assert r["env"]["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
        elif backend == "jax":
            assert r["env"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
            assert r["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.450"  # 0.5 of the GPU x the headroom
    if backend == "torch":  # the allocator cap needs CUDA, which this machine lacks: it says so
        notes = [r for r in scenarios["predict"]["after_import"] if r["backend"] == "torch"]
        assert notes and all(r["wanted_torch_memory_fraction"] == 0.45 for r in notes)


# -- num_workers on GPUs --------------------------------------------------------------------
@only_in_the_jax_pass
def test_each_training_process_pins_one_whole_gpu(scenarios):
    result = scenarios["train"]
    records = sorted(result["records"], key=lambda r: r["partition"])
    assert [r["partition"] for r in records] == [0, 1]
    for r in records:
        assert len(r["task_addresses"]) == 1  # the stage asked one whole GPU a task, not the app's 0.5
        assert r["gpu_amount"] == 1.0 and r["visible_devices"] == r["task_addresses"][0]
        assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in r["env"]  # a whole GPU keeps JAX's preallocation
    assert [d["addresses"] for d in result["devices_per_worker"]] == [r["task_addresses"] for r in records]


@only_in_the_jax_pass
def test_too_few_gpus_for_num_workers_is_refused_before_training(scenarios):
    refused = scenarios["train"]["refused"]
    assert refused is not None
    assert refused.startswith("num_workers=3 trains one process per GPU")
    assert "2 executor(s) with 1 GPU(s) each" in refused and "use num_workers=2 or fewer" in refused


# -- the settings, without Spark ------------------------------------------------------------
@pytest.mark.backend_independent
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_a_whole_gpu_only_narrows_visibility(backend):
    env = devices.gpu_env(backend, ["1"], 1.0)
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env and "XLA_PYTHON_CLIENT_PREALLOCATE" not in env


@pytest.mark.backend_independent
def test_a_quarter_gpu_caps_jax_at_a_quarter_less_headroom():
    env = devices.gpu_env("jax", ["0"], 0.25)
    assert env == {"CUDA_VISIBLE_DEVICES": "0", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                   "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.225"}


@pytest.mark.backend_independent
def test_no_gpu_resource_sets_nothing():
    assert devices.gpu_env("tensorflow", [], 0.0) == {}


def test_a_reused_worker_keeps_the_gpu_it_pinned_and_says_so(monkeypatch):
    monkeypatch.setattr(devices, "_pinned", devices.DeviceRecord("score", "jax", ["0"], 1.0))
    monkeypatch.setattr(devices, "task_gpu_addresses", lambda: ["1"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    record = devices.use_task_devices("jax", 1.0)
    assert record.kept_from_earlier_task and record.visible_devices == "0"
    assert "spark.python.worker.reuse=false" in record.note


def test_without_a_task_gpu_threads_are_capped_as_before(monkeypatch):
    monkeypatch.setattr(devices, "_pinned", None)
    for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "XLA_FLAGS"):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    record = devices.use_task_devices(keras.backend.backend(), 0.0)  # outside a task: no GPUs
    assert not record.on_gpu and record.env == {}
    assert os.environ["OMP_NUM_THREADS"] == "1"


# -- device prefetch ----------------------------------------------------------------------------
def test_on_cpu_the_feed_is_handed_to_keras_unchanged():
    stream = iter([(np.zeros(2),)])
    wait = device_prefetch.DeviceWait()
    assert device_prefetch.stage_on_device(stream, wait) is stream
    assert not wait.on_device


def test_staging_keeps_order_and_depth_batches_in_flight():
    staged, handed = [], []

    def stage(batch):
        staged.append(batch)
        return batch

    def ready(batch):
        handed.append(batch)
        assert len(staged) - len(handed) <= 1  # depth 2: the handed batch plus one more in flight
        return batch

    wait = device_prefetch.DeviceWait()
    out = list(device_prefetch._ahead(range(5), stage, ready, 2, wait))
    assert out == [0, 1, 2, 3, 4] and wait.seconds >= 0


@pytest.mark.session_independent
def test_data_stats_report_the_wait_for_data_on_cpu_as_the_host_wait(spark):
    model = regression_model()
    model.fit(numeric_frame(spark, 512, 4), batch_size=64, epochs=1, verbose=0)
    stats = model.data_stats
    assert stats["device_wait_s"] == stats["consumer_wait_s"]


def _staging_device(backend: str) -> str | None:
    """A device the staged path can target on this CPU-only machine (None: it needs a real GPU)."""
    return {"jax": "cpu:0", "tensorflow": "/device:CPU:0"}.get(backend)


@pytest.mark.session_independent
def test_fit_through_device_staging_trains_every_row(spark, monkeypatch):
    backend = keras.backend.backend()
    if _staging_device(backend) is None:
        pytest.skip("PyTorch's staging needs CUDA (pinned host memory, CUDA streams); this machine has no GPU")
    # The accelerator path, aimed at the CPU: the same staging code a GPU would run.
    monkeypatch.setattr(device_prefetch, "accelerator", lambda backend=None: _staging_device(backend))
    model = regression_model()
    history = model.fit(numeric_frame(spark, 1000, 4), batch_size=64, epochs=2, verbose=0)
    assert model.data_stats["rows"] == 2000
    assert len(history.history["loss"]) == 2
    if backend == "jax":  # the wait is measured at the hand-off to Keras
        assert 0 < model.data_stats["device_wait_s"] != model.data_stats["consumer_wait_s"]


def test_jax_staging_hands_over_device_arrays_in_order():
    if keras.backend.backend() != "jax":
        pytest.skip("stages JAX arrays: runs in the JAX pass")
    import jax

    batches = [(np.full((2, 3), i, np.float32), np.full((2,), i, np.float32)) for i in range(4)]
    wait = device_prefetch.DeviceWait()
    out = list(device_prefetch._jax_ahead(iter(batches), 2, wait))
    assert all(isinstance(x, jax.Array) for batch in out for x in batch)
    assert [float(x[0, 0]) for x, _ in out] == [0, 1, 2, 3]

"""GPUs without a GPU: Spark's fake GPU resources, each task's device, memory settings, device prefetch on CPU.

The Spark scenarios run in their own local-cluster applications with a discovery script
that reports two GPUs (tests/gpu_run.py); the suite's shared local[2] session cannot have
GPU resources. No CUDA is needed: what is asserted is what each worker chose and logged
(the keras.device its task's model was loaded and run under, CUDA_VISIBLE_DEVICES, memory
settings); without a GPU the backend itself runs the model on its CPU.
"""

import os

import keras
import numpy as np
import pytest
from builders import numeric_frame, only_in_the_jax_pass, regression_model, run_scenarios

from keras_spark import device_prefetch, devices


@pytest.fixture(scope="module")
def scenarios():
    names = ["reuse", "predict", "train"] if os.environ.get("KERAS_BACKEND") == "jax" else ["reuse", "predict"]
    return run_scenarios("gpu_run.py", dict(os.environ, KERAS_SPARK_TEST_SCENARIOS=",".join(names)), timeout=600)


def _rows_off_their_gpu(scored: list[dict]) -> int:
    """Rows a task scored with a model on another device than the GPU Spark assigned the task."""
    return sum(e["rows"] for e in scored if e["model_device"] != f"gpu:{e['task_addresses'][0]}")


# -- predict on GPU executors -------------------------------------------------------------
def test_every_task_scores_on_its_own_gpu_in_reused_workers(scenarios):
    result = scenarios["reuse"]
    scored = result["scored"]
    assert result["counts"] == [4000] * 3
    assert len({(e["stage"], e["partition"]) for e in scored}) == 48  # 3 predicts x 16 tasks, each logged
    assert sum(e["rows"] for e in scored) == 12000
    # What the issue needs to show: Spark's default reuse has a worker serve tasks of both GPUs.
    gpus_by_worker: dict[int, set] = {}
    for e in scored:
        gpus_by_worker.setdefault(e["pid"], set()).add(e["task_addresses"][0])
    assert set().union(*gpus_by_worker.values()) == {"0", "1"}
    assert any(len(gpus) == 2 for gpus in gpus_by_worker.values())
    assert _rows_off_their_gpu(scored) == 0


def test_a_scoring_worker_keeps_its_executors_gpus_visible(scenarios):
    for r in scenarios["reuse"]["pins"] + scenarios["predict"]["records"]:
        assert len(r["task_addresses"]) == 1 and r["task_addresses"][0] in {"0", "1"}
        assert r["device"] == f"gpu:{r['task_addresses'][0]}"  # the executor has no CUDA_VISIBLE_DEVICES
        assert r["visible_devices"] is None  # not narrowed to one task's GPU


def test_a_reused_worker_loads_the_model_once_per_gpu(scenarios):
    loads: dict[tuple, int] = {}
    for e in scenarios["reuse"]["scored"]:
        loads[(e["pid"], e["model_device"])] = loads.get((e["pid"], e["model_device"]), 0) + e["loaded_model"]
    assert set(loads.values()) == {1}  # three predicts of one model: loaded once per worker and GPU


def test_a_fractional_amount_lets_tasks_share_a_gpu(scenarios):
    result = scenarios["predict"]
    records = result["records"]
    assert result["rows"] == 3200
    assert len({r["partition"] for r in records}) == 8  # every task logged
    assert {r["gpu_amount"] for r in records} == {0.5}
    workers_by_gpu: dict[str, set] = {}
    for r in records:
        workers_by_gpu.setdefault(r["task_addresses"][0], set()).add(r["pid"])
    # One GPU an executor, two task slots: at least two Python workers used the same GPU.
    assert max(len(pids) for pids in workers_by_gpu.values()) >= 2
    assert sum(e["rows"] for e in result["scored"]) == 3200 and _rows_off_their_gpu(result["scored"]) == 0


def test_memory_settings_for_a_shared_gpu_are_applied(scenarios):
    backend = keras.backend.backend()
    records = scenarios["predict"]["records"]
    first_tasks = {r["pid"]: r for r in reversed(records)}.values()  # each worker's first task set them
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


def test_whole_gpus_seen_together_take_memory_only_as_needed(scenarios):
    backend = keras.backend.backend()
    for r in scenarios["reuse"]["pins"]:
        assert r["gpu_amount"] == 1.0
        if backend == "tensorflow":
            assert r["env"] == {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}
        elif backend == "jax":  # preallocating would take 75% of both GPUs in every worker
            assert r["env"] == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        else:
            assert r["env"] == {}


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
@pytest.fixture
def clean_gpu_env(monkeypatch):
    """No GPU settings in this process, and whatever a test sets undone after it."""
    for name in ("CUDA_VISIBLE_DEVICES", "TF_FORCE_GPU_ALLOW_GROWTH", "XLA_PYTHON_CLIENT_PREALLOCATE",
                 "XLA_PYTHON_CLIENT_MEM_FRACTION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(devices, "_settings_applied", False)
    return monkeypatch


@pytest.mark.backend_independent
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_a_training_process_on_a_whole_gpu_only_narrows_visibility(backend):
    env = devices.gpu_env(backend, ["1"], 1.0)
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env and "XLA_PYTHON_CLIENT_PREALLOCATE" not in env


@pytest.mark.backend_independent
def test_a_quarter_gpu_caps_jax_at_a_quarter_less_headroom():
    env = devices.gpu_env("jax", ["0"], 0.25)
    assert env == {"CUDA_VISIBLE_DEVICES": "0", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                   "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.225"}
    assert devices.scoring_env("jax", 0.25, "0") == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                                                     "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.225"}


@pytest.mark.backend_independent
def test_jax_preallocates_only_where_a_scoring_worker_sees_one_gpu():
    assert devices.scoring_env("jax", 1.0, "3") == {}
    assert devices.scoring_env("jax", 1.0, "2,3") == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    assert devices.scoring_env("jax", 1.0, None) == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # the machine's all


@pytest.mark.backend_independent
def test_no_gpu_resource_sets_nothing():
    assert devices.gpu_env("tensorflow", [], 0.0) == {}


@pytest.mark.backend_independent
def test_an_address_is_its_position_in_the_executors_visible_devices():
    assert devices.local_ordinal("3", "2,3") == 1
    assert devices.local_ordinal("1", None) == 1
    with pytest.raises(RuntimeError, match="neither in this executor's CUDA_VISIBLE_DEVICES"):
        devices.local_ordinal("GPU-5e1f", "0,1")


def test_a_reused_worker_follows_each_task_to_its_gpu(clean_gpu_env):
    clean_gpu_env.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # the executor's own GPUs
    chosen = []
    for addresses in (["3"], ["2"], ["3"]):
        clean_gpu_env.setattr(devices, "task_gpu_addresses", lambda addresses=addresses: addresses)
        record = devices.use_task_devices(keras.backend.backend(), 1.0)
        chosen.append(record.device)
        assert record.visible_devices == "2,3" and os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert chosen == ["gpu:1", "gpu:0", "gpu:1"]


def test_a_task_runs_under_keras_device_of_its_gpu(clean_gpu_env):
    record = devices.DeviceRecord("score", keras.backend.backend(), ["1"], 1.0, device="gpu:1")
    clean_gpu_env.setattr(devices, "backend_gpu_count", lambda backend: 2)
    scope = devices.task_device_scope(record)
    assert scope.func is keras.device and scope.args == ("gpu:1",)
    clean_gpu_env.setattr(devices, "backend_gpu_count", lambda backend: 1)
    with pytest.raises(RuntimeError, match="sees 1 GPU"):
        devices.task_device_scope(record)


def test_where_the_backend_finds_no_gpu_the_task_runs_on_its_default_device_and_says_so():
    record = devices.DeviceRecord("score", keras.backend.backend(), ["1"], 1.0, device="gpu:1")
    scope = devices.task_device_scope(record)  # this machine has no GPU
    assert record.backend_gpus == 0 and "finds no GPU" in record.note
    with scope():
        assert keras.ops.add(1, 1) == 2


def test_without_a_task_gpu_threads_are_capped_as_before(clean_gpu_env):
    for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "XLA_FLAGS"):
        clean_gpu_env.delenv(name, raising=False)  # restored after the test
    record = devices.use_task_devices(keras.backend.backend(), 0.0)  # outside a task: no GPUs
    assert not record.on_gpu and record.env == {} and record.device is None
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

"""One place for devices: which GPUs a Spark task or training process owns, and where its model runs.

Spark hands a task its GPU addresses (`TaskContext.get().resources()["gpu"]`) when the
application asks for them (`spark.executor.resource.gpu.amount`, `spark.task.resource.gpu.amount`,
or a stage's `ResourceProfile`). Scoring and training use them differently, because Spark
reuses a scoring worker for task after task (`spark.python.worker.reuse`, on by default) while
a training process is started afresh for its one task:

    record = use_task_devices(backend, gpu_amount)   # scoring: before `import keras` in this worker
    scope = task_device_scope(record)                # after: keras.device("gpu:N") for this task
    with scope(): ...load or score the model...      # one loaded model per device (spark/score.py)
    after_backend_import(record)                     # PyTorch's allocator cap on that device

Scoring. CUDA reads `CUDA_VISIBLE_DEVICES` once per process, so a reused worker that narrowed it to
its first task's GPU could never follow a later task to another one. A scoring worker therefore
keeps every GPU of its executor visible (it never sets `CUDA_VISIBLE_DEVICES`) and runs each task's
model under `keras.device("gpu:N")`, N the task's address as the backend numbers it: its position
in the executor's own `CUDA_VISIBLE_DEVICES` when the executor has one (a cluster manager's or
yours), else the address itself. What a worker sets before its backend starts, when the task holds GPUs:
- TensorFlow: `TF_FORCE_GPU_ALLOW_GROWTH=true` (memory taken as needed on the GPUs used, not all at start);
- JAX: `XLA_PYTHON_CLIENT_PREALLOCATE=false` unless exactly one GPU is visible (JAX would otherwise
  take 75% of every visible GPU), and for a fractional amount a < 1 also
  `XLA_PYTHON_CLIENT_MEM_FRACTION` = a x MEMORY_HEADROOM;
- PyTorch, fractional amount: `torch.cuda.set_per_process_memory_fraction(a x MEMORY_HEADROOM, N)` on
  each device the worker runs a task on (PyTorch makes no context on a GPU it never uses).
A user's own memory variables are kept (setdefault). On GPU the backend's CPU threads are not
capped to the task's cores; without GPUs threads are capped as before (`score.limit_threads`).
TensorFlow and JAX make a CUDA context on each GPU the process sees: a few hundred MB on each of the
executor's GPUs, the price of following Spark's assignment in a reused worker.

Training. A `num_workers` process is fresh for its task: `gpu_env` narrows its `CUDA_VISIBLE_DEVICES`
to the task's one GPU before it starts (spark/distributed.py), and `training_record` logs it.

When the environment variable KERAS_SPARK_DEVICE_LOG names a directory, every decision is also
appended there as a JSON line (one file per process), which is how the tests see what a worker did:
a "pin" line when a task starts (its addresses, the device chosen, the settings), and a "scored"
line when it ends (the device its model was loaded on and ran under, the rows it scored).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

MEMORY_HEADROOM = 0.9  # of a fractional share: CUDA contexts and fragmentation live outside the allocator cap
DEVICE_LOG_ENV = "KERAS_SPARK_DEVICE_LOG"
_BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


@dataclass
class DeviceRecord:
    """What one task or training process was given and what keras-spark set for it."""

    role: str  # "score" or "train"
    backend: str
    task_addresses: list[str]  # the GPUs Spark assigned this task ([] on CPU)
    gpu_amount: float  # the per-task amount requested (0 on CPU)
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES as this process uses it
    env: dict = field(default_factory=dict)  # the memory and thread settings in effect
    backend_imported_before: bool = False  # True: settings came too late for the backend
    device: str | None = None  # the keras.device a scoring task's model runs under ("gpu:1"); None on CPU
    backend_gpus: int | None = None  # GPUs the backend found in this process (known once it is imported)
    torch_memory_fraction: float | None = None
    note: str = ""
    pid: int = field(default_factory=os.getpid)
    partition: int | None = None
    stage: int | None = None

    @property
    def on_gpu(self) -> bool:
        return bool(self.task_addresses)


_settings_applied = False  # this worker's memory settings were set (by its first GPU task)
_torch_capped: set[int] = set()  # devices whose PyTorch allocator this process has capped


def task_gpu_addresses() -> list[str]:
    """The GPU addresses Spark assigned the running task ([] outside a task or without GPUs)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        return []
    try:
        gpu = ctx.resources().get("gpu")
    except Exception:  # an older TaskContext without resources
        return []
    return list(gpu.addresses) if gpu is not None else []


def _task_ids() -> tuple[int | None, int | None]:
    """(partition, stage) of the running task; (None, None) outside one."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return (ctx.partitionId(), ctx.stageId()) if ctx is not None else (None, None)


def memory_env(backend: str, amount: float, one_gpu_visible: bool) -> dict[str, str]:
    """The backend's memory settings for a process using `amount` of a GPU (1: a whole one)."""
    fractional = 0 < amount < 1
    if backend == "tensorflow":
        return {"TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    if backend == "jax" and (fractional or not one_gpu_visible):
        env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # else JAX takes 75% of every GPU it sees
        if fractional:
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{amount * MEMORY_HEADROOM:.3f}"
        return env
    return {}


def gpu_env(backend: str, addresses: list[str], amount: float) -> dict[str, str]:
    """The environment a fresh process (a training worker) needs to see only `addresses`, at `amount` each."""
    if not addresses:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(addresses),
            **memory_env(backend, amount, one_gpu_visible=len(addresses) == 1)}


def scoring_env(backend: str, amount: float, visible: str | None) -> dict[str, str]:
    """A scoring worker's settings: memory only; `visible` (the executor's CUDA_VISIBLE_DEVICES) is left as it is."""
    one_visible = visible is not None and len(_visible_list(visible)) == 1  # unset: every GPU of the machine
    return memory_env(backend, amount, one_gpu_visible=one_visible)


def _visible_list(visible: str | None) -> list[str]:
    return [v.strip() for v in (visible or "").split(",") if v.strip()]


def local_ordinal(address: str, visible: str | None) -> int:
    """The backend's index of the GPU Spark calls `address`: its position in `visible`
    (this process's CUDA_VISIBLE_DEVICES) when listed there, else the address itself."""
    listed = _visible_list(visible)
    if address in listed:
        return listed.index(address)
    try:
        return int(address)
    except ValueError:
        raise RuntimeError(
            f"Spark assigned this task GPU '{address}', which is neither in this executor's "
            f"CUDA_VISIBLE_DEVICES ({visible!r}) nor a device index; make the GPU discovery script report "
            f"the indices CUDA_VISIBLE_DEVICES uses (or leave CUDA_VISIBLE_DEVICES unset)") from None


def _apply_env(env: dict[str, str]) -> dict[str, str]:
    """Sets `env` unless the user set them already; what is in effect."""
    for key, value in env.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in env}


def use_task_devices(backend: str, gpu_amount: float, role: str = "score") -> DeviceRecord:
    """The running task's GPU and this worker's memory settings (or its CPU thread cap without GPUs).

    Call before the backend is imported; the settings matter only the first time in a worker.
    The task's device is its first address, as the backend numbers it (`local_ordinal`).
    Returns what was done (also logged, see module doc).
    """
    global _settings_applied
    addresses = task_gpu_addresses()
    partition, stage = _task_ids()
    record = DeviceRecord(role=role, backend=backend, task_addresses=addresses, partition=partition, stage=stage,
                          gpu_amount=float(gpu_amount) if addresses else 0.0)
    record.backend_imported_before = _BACKEND_MODULES.get(backend, backend) in sys.modules
    record.visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not addresses:
        from keras_spark.spark.score import limit_threads, threads_per_task

        limit_threads(threads_per_task())  # as before GPUs: only effective before the backend's import
        log(record)
        return record
    record.device = f"gpu:{local_ordinal(addresses[0], record.visible_devices)}"
    record.env = _apply_env(scoring_env(backend, record.gpu_amount, record.visible_devices))
    if not _settings_applied and record.backend_imported_before:
        record.note = (f"{backend} was imported in this worker before keras-spark could set its GPU settings "
                       f"(by other code in the same Python worker); they apply only if it has not used CUDA yet")
    _settings_applied = True
    log(record)
    return record


def _jax_gpus() -> int:
    import jax

    return len(jax.devices("gpu"))


def _torch_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _tensorflow_gpus() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))  # lists them without starting the runtime


_GPU_COUNTERS = {"jax": _jax_gpus, "torch": _torch_gpus, "tensorflow": _tensorflow_gpus}


def backend_gpu_count(backend: str) -> int:
    """GPUs the (imported) backend sees in this process; 0 when it has none or no GPU support."""
    try:
        return _GPU_COUNTERS[backend]() if backend in _GPU_COUNTERS else 0
    except RuntimeError:  # JAX: "Unknown backend: 'gpu'" on a CPU-only jaxlib
        return 0


def task_device_scope(record: DeviceRecord) -> Callable[[], contextlib.AbstractContextManager]:
    """After the backend's import: a fresh `keras.device(record.device)` scope each call, for loading
    and scoring the task's model on its GPU; no scope on CPU, or where the backend finds no GPU (noted)."""
    if record.device is None:
        return contextlib.nullcontext
    record.backend_gpus = backend_gpu_count(record.backend)
    ordinal = int(record.device.split(":")[1])
    if record.backend_gpus == 0:
        record.note = (record.note + "; " if record.note else "") + (
            f"{record.backend} finds no GPU in this process though Spark assigned GPU(s) {record.task_addresses}: "
            f"the model runs on the backend's default device")
        return contextlib.nullcontext
    if ordinal >= record.backend_gpus:
        raise RuntimeError(
            f"Spark assigned this task GPU {record.task_addresses[0]} ({record.device} here, from "
            f"CUDA_VISIBLE_DEVICES={record.visible_devices!r}), but {record.backend} sees {record.backend_gpus} "
            f"GPU(s) in this worker; make the executors' GPU discovery script report the addresses this "
            f"executor's processes see (the indices in its CUDA_VISIBLE_DEVICES, or 0..n-1 without one)")
    import keras

    return functools.partial(keras.device, record.device)


def after_backend_import(record: DeviceRecord) -> DeviceRecord:
    """Settings that need the backend imported: PyTorch's memory cap for a fractional GPU, on the task's device."""
    if record.backend != "torch" or not (0 < record.gpu_amount < 1) or record.device is None:
        return record
    fraction = round(record.gpu_amount * MEMORY_HEADROOM, 3)
    ordinal = int(record.device.split(":")[1])
    if ordinal in _torch_capped:
        record.torch_memory_fraction = fraction
        return record
    import torch

    if not torch.cuda.is_available():
        record.note = (record.note + "; " if record.note else "") + (
            f"torch memory fraction {fraction} not applied: torch.cuda.is_available() is False here")
        log(dict(asdict(record), event="after_import", wanted_torch_memory_fraction=fraction))
        return record
    # Only the task's device: capping another would make PyTorch open a CUDA context there.
    torch.cuda.set_per_process_memory_fraction(fraction, ordinal)
    _torch_capped.add(ordinal)
    record.torch_memory_fraction = fraction
    log(dict(asdict(record), event="after_import"))
    return record


def log_scored(record: DeviceRecord, model_device: str | None, weights_on: str | None, rows: int,
               loaded: bool) -> None:
    """A scoring task's last line: the device its model was loaded on and ran under, and the rows it scored."""
    log(dict(asdict(record), event="scored", model_device=model_device, weights_on=weights_on, rows=rows,
             loaded_model=loaded))


def log(record) -> None:
    """Appends the record as a JSON line under $KERAS_SPARK_DEVICE_LOG (one file per process), if set."""
    directory = os.environ.get(DEVICE_LOG_ENV)
    if not directory:
        return
    entry = asdict(record) if isinstance(record, DeviceRecord) else dict(record)
    entry.setdefault("event", "pin")
    entry["time"] = time.time()
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"devices_{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


def read_log(directory: str) -> list[dict]:
    """Every record logged under `directory`, in time order (for tests and debugging)."""
    entries = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        with open(os.path.join(directory, name)) as f:
            entries += [json.loads(line) for line in f if line.strip()]
    return sorted(entries, key=lambda e: e["time"])


def training_record(backend: str, addresses: list[str], rank: int) -> DeviceRecord:
    """A `num_workers` training process's record: its one GPU came in its environment (spark/distributed.py)."""
    record = DeviceRecord(role="train", backend=backend, task_addresses=list(addresses), partition=rank,
                          gpu_amount=1.0 if addresses else 0.0,
                          backend_imported_before=_BACKEND_MODULES[backend] in sys.modules,
                          visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES") if addresses else None,
                          env={k: os.environ[k] for k in gpu_env(backend, addresses, 1.0) if k in os.environ})
    log(record)
    return record

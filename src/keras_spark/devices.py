"""One place for devices: which GPUs a Spark task or training process owns, set before the backend starts.

Spark hands a task its GPU addresses (`TaskContext.get().resources()["gpu"]`) when the
application asks for them (`spark.executor.resource.gpu.amount`, `spark.task.resource.gpu.amount`,
or a stage's `ResourceProfile`). A process that scores or trains for that task must see only
those GPUs and, when a fractional amount lets several tasks share one GPU, must not take all of
its memory. Both only work if they are set before the backend first touches CUDA, so:

    record = use_task_devices(backend, gpu_amount)   # before `import keras` in this process
    model = ...load the model...
    after_backend_import(record)                    # PyTorch's allocator cap needs torch imported

What is set, by backend, when the task holds GPUs:
- every backend: `CUDA_VISIBLE_DEVICES` = the task's addresses (Spark's assignment wins);
- TensorFlow: `TF_FORCE_GPU_ALLOW_GROWTH=true` (memory taken as needed, not all at start);
- JAX, fractional amount a < 1: `XLA_PYTHON_CLIENT_PREALLOCATE=false` and
  `XLA_PYTHON_CLIENT_MEM_FRACTION` = a x MEMORY_HEADROOM (a whole GPU keeps JAX's preallocation);
- PyTorch, fractional amount: `torch.cuda.set_per_process_memory_fraction(a x MEMORY_HEADROOM)`.
A user's own memory variables are kept (setdefault). On GPU the backend's CPU threads are not
capped to the task's cores; without GPUs threads are capped as before (`score.limit_threads`).

Spark reuses Python workers (`spark.python.worker.reuse`, on by default): a worker pins the GPUs
of the first task it serves, because CUDA reads `CUDA_VISIBLE_DEVICES` once per process. A later
task of the same worker given other addresses keeps running on the pinned ones; its record says
so (`kept_from_earlier_task`). Executors with one GPU each, or fractional amounts on one GPU,
never meet this; otherwise set `spark.python.worker.reuse=false`.

When the environment variable KERAS_SPARK_DEVICE_LOG names a directory, every decision is also
appended there as a JSON line (one file per process), which is how the tests see what a worker did.
"""

from __future__ import annotations

import json
import os
import sys
import time
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
    kept_from_earlier_task: bool = False  # a reused worker kept the GPUs of its first task
    torch_memory_fraction: float | None = None
    note: str = ""
    pid: int = field(default_factory=os.getpid)
    partition: int | None = None

    @property
    def on_gpu(self) -> bool:
        return bool(self.task_addresses)


_pinned: DeviceRecord | None = None  # the first GPU task this process served


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


def _partition() -> int | None:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return ctx.partitionId() if ctx is not None else None


def gpu_env(backend: str, addresses: list[str], amount: float) -> dict[str, str]:
    """The environment a process needs to use only `addresses`, sharing them at `amount` per task."""
    if not addresses:
        return {}
    env = {"CUDA_VISIBLE_DEVICES": ",".join(addresses)}
    fractional = 0 < amount < 1
    if backend == "tensorflow":
        env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    elif backend == "jax" and fractional:
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{amount * MEMORY_HEADROOM:.3f}"
    return env


def _apply_env(env: dict[str, str]) -> dict[str, str]:
    """Sets `env`: device visibility always (Spark's assignment), memory settings unless the user set them."""
    for key, value in env.items():
        if key == "CUDA_VISIBLE_DEVICES":
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in env}


def use_task_devices(backend: str, gpu_amount: float, role: str = "score") -> DeviceRecord:
    """Pins this Python worker to the running task's GPUs (or caps CPU threads when it has none).

    Call before the backend is imported; returns what was done (also logged, see module doc).
    """
    global _pinned
    addresses = task_gpu_addresses()
    record = DeviceRecord(role=role, backend=backend, task_addresses=addresses,
                          gpu_amount=float(gpu_amount) if addresses else 0.0, partition=_partition())
    record.backend_imported_before = _BACKEND_MODULES.get(backend, backend) in sys.modules
    if not addresses:
        from keras_spark.spark.score import limit_threads, threads_per_task

        limit_threads(threads_per_task())  # as before GPUs: only effective before the backend's import
    elif _pinned is not None:
        record.kept_from_earlier_task = _pinned.task_addresses != addresses
        record.torch_memory_fraction = _pinned.torch_memory_fraction
        if record.kept_from_earlier_task:
            record.note = (f"this reused Python worker was pinned to GPU(s) {_pinned.task_addresses} by an earlier "
                           f"task and CUDA cannot change that; set spark.python.worker.reuse=false or give each "
                           f"executor one GPU to keep workers and Spark's assignment in step")
    else:
        record.env = _apply_env(gpu_env(backend, addresses, record.gpu_amount))
        if record.backend_imported_before:
            record.note = (f"{backend} was imported in this worker before keras-spark could set its GPU settings "
                           f"(by other code in the same Python worker); they apply only if it has not used CUDA yet")
        _pinned = record
    record.visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    record.env = record.env or {k: os.environ[k] for k in gpu_env(backend, addresses, record.gpu_amount)
                                if k in os.environ}
    log(record)
    return record


def after_backend_import(record: DeviceRecord) -> DeviceRecord:
    """Settings that need the backend imported: PyTorch's per-process memory cap for a fractional GPU."""
    if record.backend != "torch" or not (0 < record.gpu_amount < 1) or record.torch_memory_fraction is not None:
        return record
    fraction = round(record.gpu_amount * MEMORY_HEADROOM, 3)
    import torch

    if not torch.cuda.is_available():
        record.note = (record.note + "; " if record.note else "") + (
            f"torch memory fraction {fraction} not applied: torch.cuda.is_available() is False here")
        log(dict(asdict(record), event="after_import", wanted_torch_memory_fraction=fraction))
        return record
    for device in range(torch.cuda.device_count()):
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    record.torch_memory_fraction = fraction
    log(dict(asdict(record), event="after_import"))
    return record


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

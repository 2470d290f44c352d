"""What each data-parallel training process is told: one typed, frozen record.

Built on the driver for the whole barrier stage (`fit_distributed`), completed by each
barrier task with what only it knows (its rank, its cache, the longest sequence row of all), then
by `_run_worker` with where the process leaves its result. Each step is a
`dataclasses.replace`, so no step can lose or misspell a setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class WorkerJob:
    # -- the stage: the same for every worker -----------------------------------------
    num_workers: int
    backend: str  # "jax" or "torch": the engine the training processes use (worker_engines.py)
    owner: dict[int, int]  # partition id -> worker rank
    local_batch: int  # global batch_size // num_workers
    epochs: int
    initial_epoch: int
    shuffle: bool
    seed: int
    num_parallel_calls: int | None
    verbose: Any
    fit_kwargs: dict
    callbacks: bytes  # the user's callbacks, cloudpickled
    cache_dir: str | None
    bindings: list
    columns: list  # core specs of the bound columns
    pid_index: int
    partition_col: str
    validation_offset: int | None  # validation ids travel as id + this
    validation_local_batch: int
    allow_non_finite: bool = False
    class_weight: dict | None = None
    # -- one barrier task --------------------------------------------------------------
    rank: int = -1
    cached: Any = None  # this worker's training rows (CachedData)
    validation: Any = None  # this worker's validation rows, or None
    coordinator: str = ""  # rank 0's host:port for the backend's distributed runtime
    sequence_steps: int | None = None  # the longest sequence row of all ranks (training and validation rows)
    sparse_row_entries: int | None = None  # the most entries of any sparse row of all ranks (batched sparse layout)
    package: bytes = b""  # the model package (model_package.py)
    threads: int = 1  # the task's cores
    gpu_addresses: list[str] = field(default_factory=list)  # the task's GPU (one), [] on CPU
    # -- one training process ----------------------------------------------------------
    result_path: str = ""
    error_path: str = ""
    scratch: str = ""

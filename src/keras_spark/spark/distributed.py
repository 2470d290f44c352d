"""fit(num_workers=N): synchronous data-parallel training in one Spark barrier stage.

The rows never pass through the driver:
1. A small Spark job counts rows per partition id; the ids are dealt to the N workers,
   largest first, so the workers' row counts are as even as whole ids allow.
2. One barrier stage: the bound columns are shuffled so that worker k's ids land in
   Spark partition k, and each of the N barrier tasks writes its rows to a cache on its
   own executor through the C++ CacheWriter (as the one-worker path does), agrees with
   the others on row counts, shapes and a coordinator address (`allGather`), then
   starts one training process (`keras_spark.training_worker`). The processes train
   data-parallel through their backend's runtime (worker_engines.py: JAX's
   `keras.distribution`, or a `torch.distributed` process group), all-reducing every step.
3. Rank 0 returns the trained weights, optimizer state and History as one small row.

A failed worker fails the stage with its traceback; the driver raises it as
`TrainingError`. With `spark.task.maxFailures` > 1 (the default on a cluster; `local[N,F]`
locally) Spark reruns the whole barrier stage, and a `BackupAndRestore` callback resumes
from the last finished epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pickle
import random
import socket
import subprocess
import sys
import time

import pyarrow as pa
from pyspark.sql import functions as F

from keras_spark import scratch, sequences
from keras_spark.devices import gpu_env, task_gpu_addresses
from keras_spark.errors import BindingError, DataError, TrainingError
from keras_spark.kinds import kind_of
from keras_spark.kinds.schema import describe_type
from keras_spark.kinds.sparse import most_row_entries
from keras_spark.spark import is_spark_dataframe, row_location
from keras_spark.spark.executors import check_executors, worker_python
from keras_spark.spark.extract import _SOURCE_ORDER, _assemble, _write_rows
from keras_spark.spark.score import threads_per_task
from keras_spark.spark.session import ship_bytes, task_slots
from keras_spark.spark.training_gpus import check_training_gpus, training_profile
from keras_spark.worker_job import WorkerJob

_RESULT_SCHEMA = "rank int, part int, payload binary"
_RESULT_CHUNK_BYTES = 16 << 20  # well under a Spark Connect message (128 MiB): weights come back in parts
_WORKER_FAILED = "keras-spark training worker"
_PEER_ERROR_GRACE_S = 3.0
VALIDATION_ID_OFFSET = 1 << 48  # validation ids travel as id + this, beside the training ids


# -- which worker takes which partition ids ---------------------------------------------
def assign_partitions(rows_by_pid: dict[int, int], num_workers: int) -> dict[int, int]:
    """Partition id -> worker: largest ids first, each to the worker with fewest rows so far."""
    loads = [0] * num_workers
    owner = {}
    for pid in sorted(rows_by_pid, key=lambda p: (-rows_by_pid[p], p)):
        worker = min(range(num_workers), key=lambda w: (loads[w], w))
        owner[pid] = worker
        loads[worker] += rows_by_pid[pid]
    return owner


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF


def spark_hash_int(value: int, seed: int = 42) -> int:
    """Spark's Murmur3 hash of an int column (`F.hash`, and what `repartition` uses)."""
    k = (value & 0xFFFFFFFF) * 0xCC9E2D51 & 0xFFFFFFFF
    k = _rotl32(k, 15) * 0x1B873593 & 0xFFFFFFFF
    h = _rotl32(seed ^ k, 13)
    h = (h * 5 + 0xE6546B64) & 0xFFFFFFFF
    h ^= 4
    h ^= h >> 16
    h = h * 0x85EBCA6B & 0xFFFFFFFF
    h ^= h >> 13
    h = h * 0xC2B2AE35 & 0xFFFFFFFF
    h ^= h >> 16
    return h - (1 << 32) if h >= 1 << 31 else h


def routing_keys(num_workers: int) -> list[int]:
    """For each worker k, an int whose Spark hash sends its rows to shuffle partition k."""
    keys: dict[int, int] = {}
    candidate = 0
    while len(keys) < num_workers:
        keys.setdefault(spark_hash_int(candidate) % num_workers, candidate)  # Python % is pmod
        candidate += 1
    return [keys[w] for w in range(num_workers)]


# -- the driver --------------------------------------------------------------------------
DATA_PARALLEL_BACKENDS = ("jax", "torch")


def _backend_refusal(num_workers: int, backend: str) -> str:
    """Why `num_workers > 1` is refused on `backend`, and what to do instead."""
    start = (f"num_workers={num_workers} runs multi-process data parallelism on the JAX and PyTorch backends; "
             f"this process runs Keras on '{backend}'. ")
    if backend == "tensorflow":
        why = ("Keras 3 has no dependable multi-worker engine on TensorFlow: its MultiWorkerMirroredStrategy "
               "code path has no tests in Keras and multi-worker training is an open issue "
               "(keras-team/keras#20585). ")
    else:
        why = f"keras-spark has no data-parallel engine for '{backend}'. "
    return (start + why + "Train the same model under KERAS_BACKEND=jax or KERAS_BACKEND=torch (set before keras is "
            "imported) when it has no TensorFlow-only layers (StringLookup, TextVectorization on strings, tf.* "
            "ops), or leave num_workers=1 to train on the driver")


def check_distributed(spark, *, num_workers: int, batch_size: int, backend: str, validation_data,
                      validation_batch_size: int) -> None:
    """Everything that can be refused before Spark runs."""
    if backend not in DATA_PARALLEL_BACKENDS:
        raise ValueError(_backend_refusal(num_workers, backend))
    for name, size in (("batch_size", batch_size), ("validation_batch_size", validation_batch_size)):
        if size % num_workers:
            raise ValueError(
                f"{name}={size} is the global batch and must split evenly over num_workers={num_workers}; "
                f"try {name}={math.ceil(size / num_workers) * num_workers}"
            )
    if validation_data is not None and not is_spark_dataframe(validation_data):
        raise TypeError("with num_workers > 1, validation_data must be a Spark DataFrame like x")
    slots = task_slots(spark)
    if num_workers > slots:
        raise ValueError(
            f"num_workers={num_workers} needs {num_workers} task slots at once (a barrier stage), "
            f"but this Spark application has {slots}"
        )
    check_training_gpus(spark, num_workers)


def _rows_by_partition(df, partition_col: str) -> dict[int, int]:
    counts = df.groupBy(F.col(f"`{partition_col}`")).count().collect()
    return {int(row[0]): int(row[1]) for row in counts if row[0] is not None}


def fit_distributed(model, df, bindings, *, num_workers: int, batch_size: int, epochs: int, partition_col: str,
                    num_parallel_calls, cache_dir, shuffle: bool, validation_data, initial_epoch: int,
                    callbacks=None, verbose="auto", allow_non_finite: bool = False, custom_objects=None,
                    class_weight=None, **fit_kwargs):
    """fit on N barrier tasks; `bindings` (and validation_data's schema) are already checked."""
    import keras

    from keras_spark.model_package import pack_model

    spark = df.sparkSession
    validation_batch_size = int(fit_kwargs.pop("validation_batch_size", None) or batch_size)
    check_distributed(spark, num_workers=num_workers, batch_size=batch_size, backend=keras.backend.backend(),
                      validation_data=validation_data, validation_batch_size=validation_batch_size)
    if not model.compiled:
        raise ValueError("the model must be compiled before fit (model.compile(...))")
    package = pack_model(model, custom_objects)  # before any Spark job: an unpicklable object fails here
    check_executors(spark, keras.backend.backend())
    names = list(dict.fromkeys([b.column for b in bindings] + [partition_col]))
    selected = df.select(*[F.col(f"`{n}`") for n in names])
    if validation_data is not None:
        weight = next((b.column for b in bindings if b.role == "weight"), None)
        selected, offset = _with_validation(selected, validation_data, names, partition_col, weight)
    else:
        offset = None

    # One small job counts both sets' rows per id; validation ids come shifted by `offset`.
    rows_by_pid = _rows_by_partition(selected, partition_col)
    train_rows = {p: n for p, n in rows_by_pid.items() if offset is None or p < offset}
    if offset is not None and max(rows_by_pid) >= 2 * offset:
        raise DataError(f"partition ids must be below {offset:,} to train with validation_data and num_workers > 1")
    if not train_rows:
        raise DataError("the DataFrame has no rows; keras-spark needs at least one row to train on")
    if len(train_rows) < num_workers:
        raise DataError(
            f"num_workers={num_workers} but the DataFrame has {len(train_rows)} partition id(s) in "
            f"'{partition_col}'; each worker streams whole partition ids, so use at most {len(train_rows)} workers"
        )
    if offset is not None and len(rows_by_pid) == len(train_rows):
        raise DataError("validation_data has no rows")
    owner = assign_partitions(train_rows, num_workers)
    owner.update(assign_partitions({p: n for p, n in rows_by_pid.items() if p not in train_rows}, num_workers))
    keys = routing_keys(num_workers)
    route = F.create_map(*[F.lit(x) for pid, w in owner.items() for x in (pid, keys[w])])
    # Rows of one id keep the DataFrame's order (the shuffle does not), so a bad row's position among
    # its id's rows is the one the user finds, as without workers.
    routed = (
        selected.withColumn(_SOURCE_ORDER, F.monotonically_increasing_id())
        .repartition(num_workers, route[F.col(f"`{partition_col}`")])
        .sortWithinPartitions(F.col(f"`{partition_col}`"), F.col(_SOURCE_ORDER)).drop(_SOURCE_ORDER)
    )
    job = WorkerJob(
        num_workers=num_workers, backend=keras.backend.backend(), owner=owner, local_batch=batch_size // num_workers,
        epochs=int(epochs),
        initial_epoch=int(initial_epoch), shuffle=bool(shuffle), seed=random.getrandbits(62),
        num_parallel_calls=num_parallel_calls, verbose=1 if verbose == "auto" else verbose, fit_kwargs=fit_kwargs,
        callbacks=_pickled(callbacks or []), cache_dir=cache_dir, bindings=bindings,
        columns=[kind_of(b).core_spec(b, names.index(b.column)) for b in bindings],
        pid_index=names.index(partition_col),
        partition_col=partition_col, validation_offset=offset,
        validation_local_batch=validation_batch_size // num_workers, allow_non_finite=allow_non_finite,
        class_weight=class_weight,
    )
    task = functools.partial(_barrier_task, job=job, package=ship_bytes(spark, package))
    try:
        # The shuffle after the barrier stage makes it a map stage, which Spark reruns
        # (all tasks together) after a failure; a failed barrier result stage is final.
        # One GPU per training process when the executors have GPUs (stage-level scheduling).
        with worker_python(spark):
            trained = routed.mapInArrow(task, _RESULT_SCHEMA, barrier=True, profile=training_profile(spark))
        rows = trained.repartition(1).collect()
    except Exception as error:  # a Py4J/Spark error that wraps the worker's own
        raise _surfaced(error) from None
    results = _joined_results(rows)
    return _apply(model, results, num_workers)


def _with_validation(selected, validation_data, names: list[str], partition_col: str, weight: str | None = None):
    """Training and validation rows in one DataFrame; validation ids shifted past the training ids."""
    if weight is not None:
        # Validation is unweighted, as on the driver: its rows weigh 1, even where it has a column of that name.
        validation_data = validation_data.withColumn(weight, F.lit(1).cast(selected.schema[weight].dataType))
    for name in names[:-1]:  # the partition ids may differ in integer width
        train_type, val_type = selected.schema[name].dataType, validation_data.schema[name].dataType
        if train_type != val_type:
            raise BindingError(
                f"validation_data column '{name}' has type {describe_type(val_type)}; with num_workers > 1 "
                f"it must have the training data's type, {describe_type(train_type)} (cast it in Spark)"
            )
    pid = F.col(f"`{partition_col}`")
    offset = VALIDATION_ID_OFFSET
    shifted = validation_data.select(*[(pid + F.lit(offset)).alias(n) if n == partition_col else F.col(f"`{n}`")
                                       for n in names])
    return selected.unionByName(shifted), offset


def _pickled(callbacks) -> bytes:
    from pyspark import cloudpickle

    return cloudpickle.dumps(list(callbacks))


def _surfaced(error: Exception) -> Exception:
    """The worker's own message out of Spark's wrapping, as a Python exception."""
    text = str(error)
    for kind in (DataError, TrainingError):
        marker = f"{kind.__name__}: "
        if marker in text:
            message = text[text.index(marker) + len(marker):]
            for end in ("\n\tat ", "\nJVM stacktrace", "SQLSTATE:"):
                message = message.split(end)[0]
            message = message.strip()
            return kind(message)
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("at ")]
    return TrainingError("the distributed training stage failed: " + ("\n".join(lines[:12]) or repr(error)))


def _apply(model, results: list[dict], num_workers: int):
    """The driver's model takes rank 0's weights, optimizer state and History."""
    import keras

    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise DataError(errors[0])
    chief = next(r for r in results if r["rank"] == 0)
    model.set_weights(chief["weights"])
    if chief["optimizer"]:
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        for variable, value in zip(model.optimizer.variables, chief["optimizer"], strict=True):
            variable.assign(value)
    history = keras.callbacks.History()
    history.set_model(model)
    history.history, history.epoch, history.params = chief["history"], chief["epoch"], chief["params"]
    model.history = history
    by_rank = sorted(results, key=lambda r: r["rank"])
    model.data_stats = {
        "num_workers": num_workers,
        "rows": chief["rows_trained"],  # all workers' real rows in the steps completed
        "rows_per_worker": [r["rows"] for r in by_rank],
        "rows_served_per_worker": [r["rows_served"] for r in by_rank],
        "steps_per_epoch": chief["steps_per_epoch"],
        "train_s": max(r["train_s"] for r in by_rank),
        "step_s": [r["step_s"] for r in by_rank],
        "devices_per_worker": [r.get("devices") for r in by_rank],
    }
    return history


# -- the executors -----------------------------------------------------------------------
def _barrier_task(batches, *, job: WorkerJob, package):
    """One barrier task: cache this worker's rows, agree with the others, train, report."""
    from pyspark import BarrierTaskContext

    ctx = BarrierTaskContext.get()
    rank = ctx.partitionId()
    # Spark kills the other tasks of a failed barrier stage (SIGKILL): the guardian removes it then.
    workdir = scratch.make_dir(f"worker{rank}_", job.cache_dir)
    try:
        info = json.loads(_write_rows(batches, os.path.join(workdir, "rows"), job.columns, job.pid_index,
                                      job.allow_non_finite))
        info["stray"] = _stray_ids(info, job.owner, rank)
        info["train_rows"] = _training_rows(info, job.validation_offset)
        if "error" not in info and info.get("rows"):
            info.update(_local_facts(workdir, job.bindings, info))
        if rank == 0:
            info["coordinator"] = f"{_task_host(ctx, rank)}:{_free_port()}"
        infos = [json.loads(m) for m in ctx.allGather(json.dumps(info))]
        problem = _agreement_problem(infos, job.validation_offset)
        if problem:  # every task sees the same infos, so all stop here together
            yield _result_row(rank, {"rank": rank, "error": problem})
            return
        cached = _assemble(workdir, job.bindings, [info])
        cached.shapes = [kind_of(b).agree_on_shape(b, [i["shapes"][c] for i in infos])
                         for c, b in enumerate(job.bindings)]
        train, validation = _split_cache(cached, job.validation_offset)
        result = _run_worker(workdir, rank, dataclasses.replace(
            job, rank=rank, cached=train, validation=validation, coordinator=infos[0]["coordinator"],
            sequence_steps=max((i.get("longest", 0) for i in infos), default=0) or None,
            sparse_row_entries=max((i.get("row_entries", 0) for i in infos), default=0) or None,
            package=package.value, threads=threads_per_task(), gpu_addresses=task_gpu_addresses(),
        ))
        yield _result_row(rank, result)
    finally:
        scratch.remove(workdir)


def _local_facts(workdir: str, bindings, info: dict) -> dict:
    """What the task's rows tell its peers: {"error": ...} for a NaN or negative weight, else
    {"longest": n}, its longest sequence row (the steps data-parallel JAX ranks all pad to), and
    {"row_entries": k}, the most entries of its sparse rows (each rank's sparse batches hold k a row)."""
    from keras_spark.weights import check_weight_values

    cached = _assemble(workdir, bindings, [info])
    try:
        check_weight_values(cached)
    except DataError as error:
        return {"error": str(error)}
    return {"longest": sequences.longest_row(cached), "row_entries": most_row_entries(cached)}


def _training_rows(info: dict, offset: int | None) -> int:
    """The task's rows less its validation rows (ids shifted past `offset`)."""
    validation = sum(int(n) for pid, _, n in info.get("runs", []) if offset is not None and pid >= offset)
    return info.get("rows", 0) - validation


def _split_cache(cached, offset: int | None):
    """The task's cache as (training, validation or None) views over the same files."""
    if offset is None:
        return cached, None
    views = []
    for keep in (lambda p: p < offset, lambda p: p >= offset):
        pairs = [(p, runs) for p, runs in zip(cached.partition_ids, cached.partitions, strict=True) if keep(p)]
        views.append(dataclasses.replace(
            cached, partition_ids=[p for p, _ in pairs], partitions=[r for _, r in pairs],
            rows=sum(n for _, runs in pairs for _, _, n in runs),
        ))
    return views[0], views[1]


def _stray_ids(info: dict, owner: dict, rank: int) -> list[int]:
    return sorted({int(pid) for pid, _, _ in info.get("runs", []) if owner.get(int(pid)) != rank})


def _agreement_problem(infos: list[dict], validation_offset: int | None = None) -> str | None:
    for i in infos:
        if "error" in i:
            return _named_row(i, validation_offset)
    for rank, i in enumerate(infos):
        if i["stray"]:
            return f"internal: worker {rank} received partition ids {i['stray'][:5]} it was not assigned"
        if i["train_rows"] == 0:
            return (f"worker {rank} received no rows although partition ids were assigned to it; did the "
                    f"DataFrame change between the row count and the training pass (a non-deterministic source)?")
    return None


def _named_row(failed: dict, validation_offset: int | None) -> str:
    """A task's write error with the bad row named as without workers: all of an id's rows are in one task,
    in the DataFrame's order, so its position there is its position in the id (validation ids unshifted)."""
    if validation_offset is not None and failed.get("partition_id", -1) >= validation_offset:
        shifted, pid = failed["partition_id"], failed["partition_id"] - validation_offset
        error = failed["error"].replace(f"partition id {shifted}", f"partition id {pid}")
        failed = dict(failed, partition_id=pid, error="validation_data: " + error)
    return row_location.describe(failed, 0, None)


def _result_row(rank: int, result: dict) -> pa.RecordBatch:
    """One rank's result as rows of at most _RESULT_CHUNK_BYTES each, numbered by `part`."""
    data = pickle.dumps(result)
    parts = [data[i:i + _RESULT_CHUNK_BYTES] for i in range(0, len(data), _RESULT_CHUNK_BYTES)] or [b""]
    return pa.RecordBatch.from_pydict(
        {"rank": [rank] * len(parts), "part": list(range(len(parts))), "payload": parts},
        schema=pa.schema([("rank", pa.int32()), ("part", pa.int32()), ("payload", pa.binary())]),
    )


def _joined_results(rows) -> list[dict]:
    by_rank: dict[int, list[tuple[int, bytes]]] = {}
    for row in rows:
        by_rank.setdefault(row["rank"], []).append((row["part"], row["payload"]))
    return [pickle.loads(b"".join(p for _, p in sorted(parts))) for _, parts in sorted(by_rank.items())]


def _task_host(ctx, rank: int) -> str:
    address = ctx.getTaskInfos()[rank].address
    return address.rsplit(":", 1)[0] if address else socket.gethostname()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _run_worker(workdir: str, rank: int, job: WorkerJob) -> dict:
    from pyspark import cloudpickle

    job_path = os.path.join(workdir, "job.pkl")
    job = dataclasses.replace(job, result_path=os.path.join(workdir, "result.pkl"),
                              error_path=os.path.join(workdir, "error.txt"), scratch=os.path.join(workdir, "scratch"))
    with open(job_path, "wb") as f:
        cloudpickle.dump(job, f)
    from keras_spark.worker_engines import PEER_LOST_EXIT

    # The process sees only its task's GPU, set before it imports the backend.
    env = dict(os.environ, KERAS_BACKEND=job.backend, **gpu_env(job.backend, job.gpu_addresses, 1.0))
    done = subprocess.run([sys.executable, "-m", "keras_spark.training_worker", job_path], env=env)
    if (done.returncode < 0 and not os.path.exists(job.error_path)) or done.returncode == PEER_LOST_EXIT:
        # Killed (JAX aborts a rank whose peer died) or a collective lost its peer (torch):
        # let the peer's own error fail the stage first.
        time.sleep(_PEER_ERROR_GRACE_S)
    if done.returncode != 0:
        detail = ""
        if os.path.exists(job.error_path):
            with open(job.error_path) as f:
                detail = f.read().strip()
        last = detail.splitlines()[-1] if detail else f"exit status {done.returncode}"
        raise TrainingError(f"{_WORKER_FAILED} {rank} failed: {last}\n{detail}")
    with open(job.result_path, "rb") as f:
        return pickle.load(f)

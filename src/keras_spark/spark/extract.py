"""One Spark pass: the bound columns of a DataFrame into a local, memory-mapped cache.

Each Spark task sorts its rows by partition id (inside the task, no shuffle) and
hands its Arrow batches to the C++ `CacheWriter`, which checks and converts them to
dense row-major tensors in files, one file per column per task. The driver only
collects a small JSON summary per task: which rows of which file hold which
partition id. Epochs then read the files, never Spark.

Whether the executors can write where the client reads is found out, not guessed:
the client leaves a marker file with a fresh token in the cache directory, and each
task looks for it. A task that sees it writes its rows there; a task that does not
(a Spark Connect server or cluster without a shared file system) sends its Arrow
batches as IPC bytes instead, and the client writes the same cache from them. On
Connect both happen in the same single Spark pass (its results stream to the client
in one job); a classic session collects the summaries and, only if some task could
not see the directory, streams the rows in a second pass (`toLocalIterator`).
`CachedData.path` says which way the rows came.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import secrets
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import functions as F

from keras_spark import _core, scratch, sequences, sparse
from keras_spark.binding import ColumnBinding
from keras_spark.errors import DataError
from keras_spark.spark import session

_PASS_SCHEMA = "info string, ipc binary"
_MARKER = ".keras_spark_marker"
EXECUTORS_WROTE = "executors wrote the cache"
CLIENT_WROTE = "rows streamed to the client, which wrote the cache"


@dataclass
class CachedData:
    """A DataFrame's bound columns as dense files on local disk, grouped by partition id."""

    directory: str
    bindings: list[ColumnBinding]
    chunk_files: list[list[str]]
    shapes: list[tuple[int, ...]]
    partition_ids: list[int]
    partitions: list[list[tuple[int, int, int]]]
    rows: int
    path: str = EXECUTORS_WROTE  # how the rows reached the cache: EXECUTORS_WROTE, CLIENT_WROTE or both

    def column_specs(self) -> list[tuple]:
        """(dtype, shape) a column as the core's Pipeline takes them; ("sparse" last for a sparse one)."""
        return [sparse.layout_spec(*sequences.core_column(b, s), b.sparse)
                for b, s in zip(self.bindings, self.shapes, strict=True)]

    def row_bytes(self) -> int:
        """Bytes of one row across all cached columns."""
        return sum(np.dtype(b.dtype).itemsize * math.prod(s) for b, s in zip(self.bindings, self.shapes, strict=True))

    def remove(self) -> None:
        """Delete the cache (extract made its directory, inside `cache_dir` when one was given)."""
        scratch.remove(self.directory)


def _write_rows(batches, prefix: str, columns, pid_index: int, allow_non_finite: bool = False) -> str:
    """Feed Arrow batches to one CacheWriter; the task's summary as JSON (errors are data)."""
    columns, ragged = sequences.split_core_specs(columns)
    writer = _core.CacheWriter(prefix, columns, pid_index, allow_non_finite=allow_non_finite, ragged=ragged)
    try:
        for batch in batches:
            writer.write(*batch.__arrow_c_array__())
    except _core.ColumnError as error:
        with contextlib.suppress(Exception):
            writer.finish()  # closes the files; the driver removes the directory
        return json.dumps({"error": str(error)})
    return json.dumps(writer.finish())


def _write_task(batches, *, directory: str, token: str, columns, pid_index: int, stream_if_unseen: bool,
                allow_non_finite: bool):
    """Executor side of the Spark pass (mapInArrow): write the rows where the client reads, or send them.

    A task that sees the client's marker writes its rows to the cache and yields one
    summary row. One that does not yields its batches as IPC bytes (`stream_if_unseen`)
    or, where the caller cannot take a stream, a summary that says so without reading.
    """
    if _sees_marker(directory, token):
        from pyspark import TaskContext

        ctx = TaskContext.get()
        task = f"{ctx.partitionId()}-{ctx.attemptNumber()}-{ctx.taskAttemptId()}" if ctx else str(os.getpid())
        info = _write_rows(batches, os.path.join(directory, f"task-{task}"), columns, pid_index, allow_non_finite)
        yield pa.RecordBatch.from_pydict({"info": [info], "ipc": [None]}, schema=_pass_schema())
    elif stream_if_unseen:
        yield from _to_ipc(batches)
    else:
        yield pa.RecordBatch.from_pydict({"info": [json.dumps({"unseen": True})], "ipc": [None]},
                                         schema=_pass_schema())


def _sees_marker(directory: str, token: str) -> bool:
    try:
        with open(os.path.join(directory, _MARKER)) as f:
            return f.read() == token
    except OSError:
        return False


def _pass_schema() -> pa.Schema:
    return pa.schema([("info", pa.string()), ("ipc", pa.binary())])


def _to_ipc(batches):
    """Each Arrow batch as IPC bytes in one row."""
    for batch in batches:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as stream:
            stream.write_batch(batch)
        yield pa.RecordBatch.from_pydict({"info": [None], "ipc": [sink.getvalue().to_pybytes()]},
                                         schema=_pass_schema())


def _select_sorted(df, bindings: list[ColumnBinding], partition_col: str):
    names = list(dict.fromkeys([b.column for b in bindings] + [partition_col]))
    selected = df.select(*[F.col(f"`{n}`") for n in names]).sortWithinPartitions(F.col(f"`{partition_col}`"))
    return selected, names


def extract(df, bindings: list[ColumnBinding], partition_col: str, *, cache_dir: str | None = None,
            stream: bool | None = None, allow_non_finite: bool = False) -> CachedData:
    """Read `df` once and cache its bound columns; raises DataError for bad values.

    The cache is made in `cache_dir` (default: the client's temporary directory) and
    removed by `CachedData.remove`. Executors write to it where they can see it; rows
    of tasks that cannot come through the client. `stream=True` sends every row
    through the client whatever the executors can see. NaN or infinite values are a
    DataError naming the column and row unless `allow_non_finite`.
    """
    directory = scratch.make_dir(parent=cache_dir)
    token = "" if stream else secrets.token_hex(16)
    if token:
        with open(os.path.join(directory, _MARKER), "w") as f:
            f.write(token)
    selected, names = _select_sorted(df, bindings, partition_col)
    columns = [b.core_spec(names.index(b.column)) for b in bindings]
    pid_index = names.index(partition_col)
    connect = session.is_connect(df.sparkSession)

    take = functools.partial(_take_pass, directory=directory, columns=columns, pid_index=pid_index,
                             allow_non_finite=allow_non_finite)

    def one_pass(stream_if_unseen: bool):
        task = functools.partial(_write_task, directory=directory, token=token, columns=columns,
                                 pid_index=pid_index, stream_if_unseen=stream_if_unseen,
                                 allow_non_finite=allow_non_finite)
        return selected.mapInArrow(task, _PASS_SCHEMA)

    try:
        if connect or stream:  # one job whose results Connect streams (held within spark.driver.maxResultSize)
            infos, streamed = take(session.stream_rows(one_pass(True)))
        else:  # a classic driver collects the summaries; unseen tasks send nothing yet
            infos, streamed = take(iter(one_pass(False).collect()))
            if any(info.get("unseen") for info in infos):
                _remove_task_files(directory)
                infos, streamed = take(session.stream_rows(one_pass(True)))
        cached = _assemble(directory, bindings, infos)
        wrote = len(infos) > (1 if streamed else 0)
        cached.path = " and ".join(p for p, took in ((EXECUTORS_WROTE, wrote), (CLIENT_WROTE, streamed)) if took)
        return cached
    except BaseException as error:
        scratch.remove(directory)
        if "spark.driver.maxResultSize" in str(error):
            raise RuntimeError(
                "keras-spark: the Spark executors cannot write to the cache directory "
                f"({cache_dir or 'the client temporary directory'}), so the rows came through the Spark driver, "
                "and they exceed its spark.driver.maxResultSize. Pass cache_dir= a directory that the executors "
                "and this client share (e.g. an NFS or Volumes mount), or raise spark.driver.maxResultSize "
                "where the Spark driver starts"
            ) from error
        raise


def _take_pass(rows, directory: str, columns, pid_index: int, allow_non_finite: bool) -> tuple[list[dict], bool]:
    """The pass's summary rows, and the streamed rows written by one client-side writer.

    Each Spark partition arrives sorted by partition id; the writer starts a new run
    wherever the id changes, so one writer takes every streamed task.
    """
    infos: list[dict] = []
    streamed = False

    def streamed_batches():
        nonlocal streamed
        for row in rows:
            if row["ipc"] is not None:
                streamed = True
                yield from pa.ipc.open_stream(row["ipc"])
            else:
                infos.append(json.loads(row["info"]))

    client_info = json.loads(_write_rows(streamed_batches(), os.path.join(directory, "client"), columns, pid_index,
                                         allow_non_finite))
    if "error" in client_info:
        _close(rows)
        return [client_info], True
    return infos + ([client_info] if streamed else []), streamed


def _close(rows) -> None:
    """Stop a stream read partly (a bad value): its generator ends the query's results."""
    close = getattr(rows, "close", None)
    if close:
        close()


def _remove_task_files(directory: str) -> None:
    for name in os.listdir(directory):
        if name not in (_MARKER, scratch.OWNER_FILE):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, name))


def _assemble(directory: str, bindings: list[ColumnBinding], infos: list[dict]) -> CachedData:
    errors = [info["error"] for info in infos if "error" in info]
    if errors:
        raise DataError(errors[0])
    infos = [info for info in infos if info["rows"] > 0]
    rows = sum(info["rows"] for info in infos)
    if rows == 0:
        raise DataError("the DataFrame has no rows; keras-spark needs at least one row to train or evaluate on")
    shapes = [_agree_on_shape(b, [info["shapes"][i] for info in infos]) for i, b in enumerate(bindings)]
    by_pid: dict[int, list[tuple[int, int, int]]] = {}
    for chunk, info in enumerate(infos):
        for pid, start, count in info["runs"]:
            by_pid.setdefault(int(pid), []).append((chunk, int(start), int(count)))
    pids = sorted(by_pid)
    return CachedData(
        directory=directory,
        bindings=bindings,
        chunk_files=[info["files"] for info in infos],
        shapes=shapes,
        partition_ids=pids,
        partitions=[by_pid[p] for p in pids],
        rows=rows,
    )


def _agree_on_shape(binding: ColumnBinding, seen: list[list[int]]) -> tuple[int, ...]:
    """Tasks resolve unknown dimensions separately; they must all have seen the same."""
    if binding.kind != "dense":
        return sequences.agree_on_shape(binding, seen)
    distinct = {tuple(s) for s in seen if -1 not in s}
    if len(distinct) > 1:
        found = " and ".join(str(s) for s in sorted(distinct))
        raise DataError(
            f"column '{binding.column}' has arrays of varying shape across rows: {found}; "
            f"every row must have the same shape to feed Keras {binding.role} '{binding.keras_name}'"
        )
    return distinct.pop() if distinct else tuple(binding.shape)

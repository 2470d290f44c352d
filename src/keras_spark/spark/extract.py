"""One Spark pass: the bound columns of a DataFrame into a local, memory-mapped cache.

Each Spark task sorts its rows by partition id (inside the task, no shuffle) and
hands its Arrow batches to the C++ `CacheWriter`, which checks and converts them to
dense row-major tensors in files, one file per column per task. The driver only
collects a small JSON summary per task: which rows of which file hold which
partition id. Epochs then read the files, never Spark.

Where the executors cannot write to a directory the driver can read (a cluster
without a shared file system), `stream=True` sends the Arrow batches to the driver
as IPC bytes through `toLocalIterator`, one Spark partition at a time, and the
driver writes the same cache.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import functions as F

from keras_spark import _core, scratch
from keras_spark.binding import ColumnBinding
from keras_spark.errors import DataError

_INFO_SCHEMA = "info string"


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

    def column_specs(self) -> list[tuple[str, list[int]]]:
        return [(b.dtype, list(s)) for b, s in zip(self.bindings, self.shapes, strict=True)]

    def row_bytes(self) -> int:
        """Bytes of one row across all cached columns."""
        return sum(np.dtype(b.dtype).itemsize * math.prod(s) for b, s in zip(self.bindings, self.shapes, strict=True))

    def remove(self) -> None:
        """Delete the cache (extract made its directory, inside `cache_dir` when one was given)."""
        scratch.remove(self.directory)


def _write_rows(batches, prefix: str, columns, pid_index: int, allow_non_finite: bool = False) -> str:
    """Feed Arrow batches to one CacheWriter; the task's summary as JSON (errors are data)."""
    writer = _core.CacheWriter(prefix, columns, pid_index, allow_non_finite=allow_non_finite)
    try:
        for batch in batches:
            writer.write(*batch.__arrow_c_array__())
    except _core.ColumnError as error:
        with contextlib.suppress(Exception):
            writer.finish()  # closes the files; the driver removes the directory
        return json.dumps({"error": str(error)})
    return json.dumps(writer.finish())


def _write_task(batches, *, directory: str, columns, pid_index: int, allow_non_finite: bool):
    """Executor side of the Spark pass (mapInArrow): one summary row per task."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    task = f"{ctx.partitionId()}-{ctx.attemptNumber()}-{ctx.taskAttemptId()}" if ctx else str(os.getpid())
    info = _write_rows(batches, os.path.join(directory, f"task-{task}"), columns, pid_index, allow_non_finite)
    yield pa.RecordBatch.from_pydict({"info": [info]})


def _to_ipc(batches):
    """Executor side of the streaming path: each Arrow batch as IPC bytes in one row."""
    for batch in batches:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as stream:
            stream.write_batch(batch)
        yield pa.RecordBatch.from_pydict({"ipc": [sink.getvalue().to_pybytes()]})


def _select_sorted(df, bindings: list[ColumnBinding], partition_col: str):
    names = list(dict.fromkeys([b.column for b in bindings] + [partition_col]))
    selected = df.select(*[F.col(f"`{n}`") for n in names]).sortWithinPartitions(F.col(f"`{partition_col}`"))
    return selected, names


def _is_local(spark) -> bool:
    try:
        return spark.conf.get("spark.master", "local").startswith("local")
    except Exception:  # Spark Connect may not expose the master
        return False


def extract(df, bindings: list[ColumnBinding], partition_col: str, *, cache_dir: str | None = None,
            stream: bool | None = None, allow_non_finite: bool = False) -> CachedData:
    """Read `df` once and cache its bound columns; raises DataError for bad values.

    `cache_dir` must be visible to executors and driver alike (always true for a
    local master); without one a temporary directory is made and removed by
    `CachedData.remove`. `stream` forces (True) or forbids (False) the path through
    the driver; by default it is taken when the master is not local and no
    `cache_dir` is given. NaN or infinite values are a DataError naming the column
    and row unless `allow_non_finite`.
    """
    directory = scratch.make_dir(parent=cache_dir)
    if stream is None:
        stream = cache_dir is None and not _is_local(df.sparkSession)
    selected, names = _select_sorted(df, bindings, partition_col)
    columns = [b.core_spec(names.index(b.column)) for b in bindings]
    pid_index = names.index(partition_col)
    try:
        if stream:
            infos = _extract_through_driver(selected, directory, columns, pid_index, allow_non_finite)
        else:
            task = functools.partial(_write_task, directory=directory, columns=columns, pid_index=pid_index,
                                     allow_non_finite=allow_non_finite)
            infos = [json.loads(row["info"]) for row in selected.mapInArrow(task, _INFO_SCHEMA).collect()]
        return _assemble(directory, bindings, infos)
    except BaseException:
        scratch.remove(directory)
        raise


def _extract_through_driver(selected, directory: str, columns, pid_index: int, allow_non_finite: bool) -> list[dict]:
    # Each Spark partition arrives sorted by partition id; the writer starts a new
    # run wherever the id changes, so one writer takes them all.
    def batches():
        for row in selected.mapInArrow(_to_ipc, "ipc binary").toLocalIterator(prefetchPartitions=True):
            yield from pa.ipc.open_stream(row["ipc"])

    return [json.loads(_write_rows(batches(), os.path.join(directory, "driver"), columns, pid_index,
                                   allow_non_finite))]


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
    distinct = {tuple(s) for s in seen if -1 not in s}
    if len(distinct) > 1:
        found = " and ".join(str(s) for s in sorted(distinct))
        raise DataError(
            f"column '{binding.column}' has arrays of varying shape across rows: {found}; "
            f"every row must have the same shape to feed Keras {binding.role} '{binding.keras_name}'"
        )
    return distinct.pop() if distinct else tuple(binding.shape)

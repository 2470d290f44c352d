"""One Spark pass: the bound columns of a DataFrame into a local, memory-mapped cache.

Each Spark task sorts its rows by partition id (inside the task, no shuffle) and
hands its Arrow batches to the C++ `CacheWriter`, which checks and converts them to
dense row-major tensors in files, one file per column per task. The driver only
collects a small JSON summary per task: which rows of which file hold which
partition id. Epochs then read the files, never Spark.

Whether the executors can write where the client reads is found out, not guessed:
the client leaves a marker file with a fresh token in the cache directory, and each
task looks for it (a Connect server is first asked through a JVM read of the marker).
Where they cannot (a Spark Connect server or cluster without a shared file system),
the client reads the rows itself as Arrow straight from the JVM (a Connect client as
the server streams them, a classic one in chunks of bounded size) and writes the same
cache. `CachedData.path` says which way the rows
came.
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

from keras_spark import _core, scratch
from keras_spark.errors import DataError
from keras_spark.kinds import kind_of, split_core_specs
from keras_spark.kinds.schema import ColumnBinding
from keras_spark.spark import executors, row_location, session

_PASS_SCHEMA = "info string"
_ROW_ID = "__keras_spark_row_id"
_SOURCE_ORDER = "__keras_spark_source_order"
CHUNK_BYTES = 16 << 20  # Arrow bytes a client read holds at once
_MARKER = "keras_spark_marker"  # no leading dot: Spark file reads skip hidden files
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
        """(dtype, shape[, layout]) a column as the core's Pipeline takes them (`ColumnKind.pipeline_column`)."""
        return [kind_of(b).pipeline_column(b, s) for b, s in zip(self.bindings, self.shapes, strict=True)]

    def row_bytes(self) -> int:
        """Bytes of one row across all cached columns."""
        return sum(np.dtype(b.dtype).itemsize * math.prod(s) for b, s in zip(self.bindings, self.shapes, strict=True))

    def remove(self) -> None:
        """Delete the cache (extract made its directory, inside `cache_dir` when one was given)."""
        scratch.remove(self.directory)


def _write_rows(batches, prefix: str, columns, pid_index: int, allow_non_finite: bool = False,
                id_index: int | None = None) -> str:
    """Feed Arrow batches to one CacheWriter; the task's summary as JSON (errors are data, with the bad
    row's partition id, position among that id's rows here, and `id_index` column's value)."""
    columns, ragged = split_core_specs(columns)
    writer = _core.CacheWriter(prefix, columns, pid_index, allow_non_finite=allow_non_finite, ragged=ragged)
    batch = None
    try:
        for batch in batches:
            writer.write(*batch.__arrow_c_array__())
    except _core.ColumnError as error:
        written = {}
        with contextlib.suppress(Exception):
            written = writer.finish()  # closes the files; the driver removes the directory
        return json.dumps({"error": str(error), **row_location.failed_row(
            batch, writer.failed_row, written.get("runs", []), pid_index, id_index)})
    return json.dumps(writer.finish())


def _write_task(batches, *, directory: str, token: str, columns, pid_index: int, allow_non_finite: bool,
                id_index: int | None = None):
    """Executor side of the Spark pass (mapInArrow): write the rows where the client reads, if it can.

    A task that sees the client's marker writes its rows to the cache and yields its
    summary; one that does not yields a summary that says so, without reading.
    """
    if _sees_marker(directory, token):
        from pyspark import TaskContext

        ctx = TaskContext.get()
        task = f"{ctx.partitionId()}-{ctx.attemptNumber()}-{ctx.taskAttemptId()}" if ctx else str(os.getpid())
        info = _write_rows(batches, os.path.join(directory, f"task-{task}"), columns, pid_index, allow_non_finite,
                           id_index)
        # The driver counts a bad row's place from the Spark partitions before this one.
        info = json.dumps(dict(json.loads(info), spark_partition=ctx.partitionId() if ctx else 0))
    else:
        info = json.dumps({"unseen": True})
    yield pa.RecordBatch.from_pydict({"info": [info]}, schema=pa.schema([("info", pa.string())]))


def _sees_marker(directory: str, token: str) -> bool:
    try:
        with open(os.path.join(directory, _MARKER)) as f:
            return f.read() == token
    except OSError:
        return False


def _select_sorted(df, bindings: list[ColumnBinding], partition_col: str, id_column: str | None = None):
    names = list(dict.fromkeys([b.column for b in bindings] + [partition_col] + ([id_column] if id_column else [])))
    # Rows of one id keep the source order (Spark's sort is not stable across spills): an error's row
    # position among its id's rows is then the one the user sees in the DataFrame.
    order = F.monotonically_increasing_id().alias(_SOURCE_ORDER)
    selected = (df.select(*[F.col(f"`{n}`") for n in names], order)
                .sortWithinPartitions(F.col(f"`{partition_col}`"), F.col(_SOURCE_ORDER)).drop(_SOURCE_ORDER))
    return selected, names


def extract(df, bindings: list[ColumnBinding], partition_col: str, *, cache_dir: str | None = None,
            stream: bool | None = None, allow_non_finite: bool = False, row_id_col: str | None = None) -> CachedData:
    """Read `df` once and cache its bound columns; raises DataError for bad values.

    The cache is made in `cache_dir` (default: the client's temporary directory) and
    removed by `CachedData.remove`. Executors write to it where they can see it;
    otherwise the client reads the rows in bounded chunks (`_client_reads`).
    `stream=True` sends every row through the client whatever the executors can see.
    NaN or infinite values are a DataError naming the column and row unless
    `allow_non_finite`. A bad row is named by its partition id, its position among that id's
    rows in the DataFrame's order, and the value of `row_id_col` (default: a binaryFile
    frame's `path`), see row_location.py.
    """
    id_column = row_location.identifying_column(df.schema, row_id_col)
    directory = scratch.make_dir(parent=cache_dir)
    selected, names = _select_sorted(df, bindings, partition_col, id_column)
    columns = [kind_of(b).core_spec(b, names.index(b.column)) for b in bindings]
    pid_index, id_index = names.index(partition_col), names.index(id_column) if id_column else None
    try:
        infos = None if stream else _executors_write(selected, directory, columns, pid_index, allow_non_finite,
                                                     id_index)
        path = EXECUTORS_WROTE
        if infos is None:
            infos = [_client_reads(selected, bindings, directory, columns, pid_index, allow_non_finite, id_index)]
            path = CLIENT_WROTE
        _raise_first_error(infos, id_column)
        cached = _assemble(directory, bindings, infos)
        cached.path = path
        return cached
    except BaseException:
        scratch.remove(directory)
        raise


def _raise_first_error(infos: list[dict], id_column: str | None) -> None:
    """The DataError of the first Spark partition with a bad row (the ones before it wrote all their rows)."""
    failed = [info for info in infos if "error" in info]
    if failed:
        first = min(failed, key=lambda info: info.get("spark_partition", 0))
        rows_before = row_location.rows_of_id_before(infos, first) if "partition_id" in first else 0
        raise DataError(row_location.describe(first, rows_before, id_column))


def _executors_write(selected, directory: str, columns, pid_index: int, allow_non_finite: bool,
                     id_index: int | None = None) -> list[dict] | None:
    """The one Spark pass where every executor writes its rows to the cache; None where one cannot.

    The client leaves a marker with a fresh token and each task looks for it. A
    Connect server is first asked through the JVM (no Python workers started), so
    a cluster that cannot see the client's disk costs one tiny read, not a pass.
    """
    token = secrets.token_hex(16)
    marker = os.path.join(directory, _MARKER)
    with open(marker, "w") as f:
        f.write(token)
    spark = selected.sparkSession
    if session.is_connect(spark) and not _jvm_reads(spark, marker, token):
        return None
    executors.check_executors(spark)  # the tasks import keras_spark (its core), not Keras
    task = functools.partial(_write_task, directory=directory, token=token, columns=columns, pid_index=pid_index,
                             allow_non_finite=allow_non_finite, id_index=id_index)
    with executors.worker_python(spark):
        written = selected.mapInArrow(task, _PASS_SCHEMA)
    infos = [json.loads(row["info"]) for row in written.collect()]
    if any(info.get("unseen") for info in infos):
        _remove_task_files(directory)
        return None
    return infos


def _jvm_reads(spark, marker: str, token: str) -> bool:
    """Whether the Spark driver and an executor read `token` from the client's file `marker`."""
    try:
        return [row[0] for row in spark.read.text("file://" + marker).collect()] == [token]
    except Exception:  # path not found on the driver, or a task could not read it: not shared
        return False


def _client_reads(selected, bindings: list[ColumnBinding], directory: str, columns, pid_index: int,
                  allow_non_finite: bool, id_index: int | None = None) -> dict:
    """The rows through the client as Arrow straight from the JVM (no Python workers), written by one CacheWriter.

    A Connect client reads the server's Arrow stream as it arrives: one job, rows in
    order, and the client holds the few batches in flight (gRPC's flow control holds the
    server back while the cache writer catches up). Where there is no such stream
    (a classic session whose executors cannot see the cache), `_chunked_reads`.
    """
    batches = _server_stream(selected)
    if batches is None:
        batches = _chunked_reads(selected, bindings)
    return json.loads(_write_rows(batches, os.path.join(directory, "client"), columns, pid_index, allow_non_finite,
                                  id_index))


def _chunked_reads(selected, bindings: list[ColumnBinding]):
    """Arrow batches of `selected`, at most about `CHUNK_BYTES` of them collected at a time (`toArrow()`).

    One small job counts the rows; data that fits one chunk is then read in one job.
    Larger data is persisted on the cluster with a row id
    (`monotonically_increasing_id`: partition index << 33 plus position; persisted, so
    every read sees the same ids even where the source's order is not repeatable),
    and each chunk is one contiguous id range: jobs follow the data's size, not its
    partition count, the client holds one chunk at a time, and rows keep their order.
    """
    row_bytes = _arrow_row_bytes(selected, bindings)
    if selected.count() * row_bytes <= CHUNK_BYTES:
        yield from selected.toArrow().to_batches()
        return
    with_ids = selected.withColumn(_ROW_ID, F.monotonically_increasing_id()).persist()
    try:
        counts = {int(part): int(rows) for part, rows in
                  with_ids.groupBy(F.shiftright(F.col(_ROW_ID), 33)).count().collect()}
        row_id, names = F.col(_ROW_ID), selected.columns
        for lo, hi in id_ranges(counts, max(1, CHUNK_BYTES // row_bytes)):
            chunk = with_ids.filter((row_id >= lo) if hi is None else (row_id >= lo) & (row_id < hi))
            yield from chunk.select(*[F.col(f"`{n}`") for n in names]).toArrow().to_batches()
    finally:
        with contextlib.suppress(Exception):
            with_ids.unpersist()


def _server_stream(df):
    """`df`'s Arrow batches as a Connect server sends them, in order, in one job; None off Connect.

    PySpark's Connect client has no public Arrow iterator (`toLocalIterator` makes Rows of
    the same stream, `toArrow` collects it whole), so this uses the one its
    `toLocalIterator` reads; a client without it gets None and the chunked reads.
    """
    if not session.is_connect(df.sparkSession):
        return None
    client = df.sparkSession.client
    to_tables = getattr(client, "to_table_as_iterator", None)
    plan = getattr(df, "_plan", None)
    if to_tables is None or plan is None:
        return None

    def batches():
        for piece in to_tables(plan.to_proto(client), plan.observations):
            if isinstance(piece, pa.Table):
                yield from piece.to_batches()

    return batches()


def id_ranges(partition_rows: dict[int, int], rows_per_chunk: int) -> list[tuple[int, int | None]]:
    """Contiguous [lo, hi) ranges of monotonically_increasing_id covering every row, `rows_per_chunk` each.

    `partition_rows` maps a partition index to its row count; the last range is open.
    """
    ranges: list[tuple[int, int | None]] = []
    lo, taken = None, 0
    for part in sorted(partition_rows):
        rows, pos = partition_rows[part], 0
        while pos < rows:
            if lo is None:
                lo = (part << 33) + pos
            step = min(rows - pos, rows_per_chunk - taken)
            pos, taken = pos + step, taken + step
            if taken == rows_per_chunk:
                ranges.append((lo, (part << 33) + pos))
                lo, taken = None, 0
    if lo is not None:
        ranges.append((lo, None))
    elif ranges:
        ranges[-1] = (ranges[-1][0], None)
    return ranges


def _arrow_row_bytes(df, bindings: list[ColumnBinding]) -> int:
    """Bytes of Arrow a row takes: from the shapes where all are known, else from a sample."""
    if all(-1 not in b.shape for b in bindings):  # 8-byte leaves and 8 bytes of offsets a level, to be safe
        return max(1, sum(8 * math.prod(b.shape) + 8 * len(b.shape) for b in bindings) + 8)
    sample = df.limit(256).toArrow()
    return max(1, sample.nbytes // max(1, sample.num_rows))


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
    shapes = [kind_of(b).agree_on_shape(b, [info["shapes"][i] for info in infos]) for i, b in enumerate(bindings)]
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


"""Where a bad row is, in words a user can find it by: its partition id, its position among that id's
rows in the DataFrame's order, and the value of an identifying column.

The C++ core names a bad row by its place in the Arrow batch it was converting ("at row 7 of a
batch, in partition id 3"), which no user can look up. The cache writer's caller knows the batch
and the rows of each id it wrote before it; the driver knows the rows of each id in the Spark
partitions before the failing one. Together they give the row's position among its id's rows.
"""

from __future__ import annotations

from pyspark.sql import types as T

from keras_spark.errors import BindingError

# binaryFile frames (images, audio, any file) carry each file's path here.
_OBVIOUS_ID_COLUMN = "path"
_MAX_ID_CHARS = 200


def identifying_column(schema: T.StructType, row_id_col: str | None) -> str | None:
    """The column whose value names a bad row: the user's `row_id_col`, else a binaryFile frame's `path`."""
    names = schema.fieldNames()
    if row_id_col is not None:
        if row_id_col not in names:
            raise BindingError(f"row_id_col='{row_id_col}' names no column of the DataFrame; columns are {names}")
        return row_id_col
    if _OBVIOUS_ID_COLUMN in names and isinstance(schema[_OBVIOUS_ID_COLUMN].dataType, T.StringType):
        return _OBVIOUS_ID_COLUMN
    return None


def failed_row(batch, row: int, runs_before: list, pid_index: int, id_index: int | None) -> dict:
    """The bad row of `batch`: its partition id, its position among the rows of that id this writer
    saw (`runs_before`: the writer's (id, start, count) runs of earlier batches), its identifying value."""
    if batch is None or row < 0 or row >= batch.num_rows:
        return {}
    pids = batch.column(pid_index).to_pylist()
    pid = pids[row]
    earlier = sum(count for run_pid, _, count in runs_before if run_pid == pid)
    found = {"failed_row": row, "partition_id": pid, "position": earlier + pids[:row].count(pid)}
    if id_index is not None:
        value = batch.column(id_index)[row].as_py()
        found["row_id"] = value if isinstance(value, (int, float)) else str(value)[:_MAX_ID_CHARS]
    return found


def rows_of_id_before(infos: list[dict], failed: dict) -> int:
    """Rows of the failing row's id in the Spark partitions before the failing one (all of which succeeded)."""
    before = [i for i in infos if "error" not in i and i.get("spark_partition", -1) < failed.get("spark_partition", 0)]
    return sum(count for info in before for pid, _, count in info.get("runs", []) if pid == failed["partition_id"])


def describe(failed: dict, rows_before: int, id_column: str | None) -> str:
    """The core's message with the row named as a user can find it."""
    message = failed["error"]
    if "partition_id" not in failed:
        return message
    pid, position = failed["partition_id"], rows_before + failed["position"]
    found = f" ({id_column}={failed['row_id']!r})" if "row_id" in failed else ""
    where = f"at row {position} of partition id {pid}{found}"
    core_where = f"at row {failed['failed_row']} of a batch, in partition id {pid}"
    if core_where not in message:
        return f"{message} ({where})"
    return (message.replace(core_where, where, 1) +
            f" [row {position} counts from 0 among partition id {pid}'s rows, in the DataFrame's order]")

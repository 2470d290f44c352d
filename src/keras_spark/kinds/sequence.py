"""Sequence columns: `array` columns whose rows differ in length, feeding a `(None, ...)` input or a per-step label.

Cached as values + offsets (src/cpp/ragged_column.*) and padded per batch by the core, as
`keras.utils.pad_sequences` pads; how (lengths, padding side, buckets) is sequences.py's
`SequenceOptions`. At predict, per-step outputs are cut back to each row's own length.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import types as T

from keras_spark.errors import DataError
from keras_spark.kinds.base import ColumnKind
from keras_spark.kinds.schema import ColumnBinding, check_depth, column_depth, describe_type, input_shape
from keras_spark.sequences import DEFAULT_OPTIONS, SEQUENCE


class SequenceKind(ColumnKind):
    """A ragged numeric column: its first dimension is each row's own number of steps."""

    name = SEQUENCE
    per_step_outputs = True

    def bind_input(self, tensor, field: T.StructField, *, image_fit: str) -> ColumnBinding | None:
        """A variable-length input (first dimension None) fed from an array column, or None."""
        name, dtype, shape = tensor.name, str(tensor.dtype), input_shape(tensor.shape)
        if not shape or shape[0] != -1 or not isinstance(field.dataType, T.ArrayType):
            return None
        depth, _ = column_depth(field.dataType, name)
        check_depth(name, field.dataType, depth, shape, name)
        return ColumnBinding(name, "input", name, dtype, shape, describe_type(field.dataType), kind=self.name,
                             sequence=DEFAULT_OPTIONS)

    def bind_label(self, output, field: T.StructField, dtype: str) -> ColumnBinding | None:
        """A sequence label (the output is per-step, `(None, ...)`), or None."""
        per_row = tuple(output.shape[1:])
        if not per_row or per_row[0] is not None or not isinstance(field.dataType, T.ArrayType):
            return None
        depth, _ = column_depth(field.dataType, field.name)
        return ColumnBinding(field.name, "label", field.name, dtype, (-1,) * depth, describe_type(field.dataType),
                             kind=self.name, sequence=DEFAULT_OPTIONS)

    def core_spec(self, binding: ColumnBinding, field_index: int) -> tuple:
        """(name, field, dtype, shape, (strings, max_length)): the CacheWriter's spec of a ragged column."""
        options = binding.sequence or DEFAULT_OPTIONS
        return binding.column, field_index, binding.dtype, list(binding.shape), (False, options.max_length())

    def agree_on_shape(self, binding: ColumnBinding, seen: list[list[int]]) -> tuple[int, ...]:
        """Tasks must agree on the per-step shape; the steps stay -1."""
        distinct = {tuple(s[1:]) for s in seen if -1 not in s[1:]}
        if len(distinct) > 1:
            found = " and ".join(str(s) for s in sorted(distinct))
            raise DataError(f"column '{binding.column}' has steps of varying shape across rows: {found}; every step "
                            f"must have the same shape to feed Keras {binding.role} '{binding.keras_name}'")
        return (-1, *(distinct.pop() if distinct else binding.shape[1:]))

    def ragged_pad(self, binding: ColumnBinding, index: int) -> tuple:
        return binding.sequence.pad(index, False)

    def predict_input(self, binding: ColumnBinding, column) -> tuple[np.ndarray, np.ndarray]:
        """(padded array, each row's length): the lengths cut per-step outputs back (`predict_output`)."""
        return padded_input(column, binding, binding.dtype, list(binding.shape), strings=False)

    def trims_output(self, binding: ColumnBinding, output_shape) -> bool:
        """Per-step outputs of models fed a sequence with no fixed length are cut back to each row's length."""
        per_row = tuple(output_shape)
        return binding.sequence.sequence_length is None and len(per_row) >= 1 and per_row[0] is None

    def predict_output(self, binding: ColumnBinding, values, lengths, to_arrow, spark_type):
        return ragged_output(values, lengths, binding.sequence.padding, to_arrow, spark_type)


def padded_input(column, binding: ColumnBinding, dtype: str, shape: list[int], strings: bool):
    """One ragged Arrow column of a scoring batch -> (padded array, each row's length), padded by the core."""
    from keras_spark import _core

    options = binding.sequence or DEFAULT_OPTIONS
    return _core.to_padded(*column.__arrow_c_array__(), binding.column, dtype, shape,
                           options.pad(0, strings), truncate=options.truncating is not None)


def ragged_output(values: np.ndarray, lengths: np.ndarray, padding: str, to_arrow, spark_type):
    """A per-step (rows, steps, ...) output -> an Arrow list of each row's own steps (no per-row loop)."""
    import pyarrow as pa

    rows, steps = values.shape[:2]
    lengths = np.minimum(lengths, steps)
    position = np.arange(steps)[None, :]
    keep = position >= (steps - lengths)[:, None] if padding == "pre" else position < lengths[:, None]
    offsets = np.zeros(rows + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), to_arrow(values[keep], spark_type.elementType))

"""Row weights: a weight column (`sample_weight="w"`) and `class_weight`, as Keras takes them.

The weight column is cached beside the inputs and labels; its values are checked
once, after the Spark pass and before the first step (a null is refused by the core
while it reads the column; NaN, infinite and negative weights here). `class_weight`
maps each label's class to a weight, as Keras does for NumPy data, so it works the
same under every backend (Keras itself refuses it for generators).
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import types as T

from keras_spark.errors import BindingError, DataError
from keras_spark.kinds.schema import ColumnBinding, column_depth, column_or_error, describe_type

WEIGHT_ROLE = "weight"
_WEIGHT_NAME = "__sample_weight__"  # never a Keras input or output name


def bind_weight_column(schema: T.StructType, column, floatx: str = "float32") -> ColumnBinding:
    """The binding of `sample_weight=<column name>`: one number per row."""
    if not isinstance(column, str):
        raise TypeError(
            f"with a Spark DataFrame, sample_weight is the name of a column of row weights; got "
            f"{type(column).__name__}. Add the weights to the DataFrame as a column and pass its name"
        )
    field = column_or_error(schema, column, f"sample_weight='{column}'")
    depth, _ = column_depth(field.dataType, column)
    if depth != 0 or isinstance(field.dataType, T.BooleanType):
        raise BindingError(
            f"sample_weight column '{column}' has type {describe_type(field.dataType)}; expected one number per "
            f"row (float, double or an integer type)"
        )
    return ColumnBinding(column, WEIGHT_ROLE, _WEIGHT_NAME, floatx, (), describe_type(field.dataType))


def check_weight_values(cached) -> None:
    """Refuses NaN, infinite and negative weights, naming the column, the partition id and the row."""
    index = next((i for i, b in enumerate(cached.bindings) if b.role == WEIGHT_ROLE), None)
    if index is None:
        return
    binding = cached.bindings[index]
    for pid, runs in zip(cached.partition_ids, cached.partitions, strict=True):
        seen = 0
        for chunk, start, count in runs:
            path = cached.chunk_files[chunk][index]
            values = np.memmap(path, dtype=binding.dtype, mode="r", offset=start * np.dtype(binding.dtype).itemsize,
                               shape=(count,))
            bad = np.flatnonzero(~(np.isfinite(values) & (values >= 0)))
            if bad.size:
                value = values[bad[0]]
                raise DataError(
                    f"sample_weight column '{binding.column}' has the weight {value} at row {seen + int(bad[0])} of "
                    f"partition id {pid}; weights must be finite numbers >= 0 (fill, clip or filter them in Spark)"
                )
            seen += count
            del values


def class_weight_table(class_weight: dict) -> np.ndarray:
    """{class index: weight} as a lookup table (classes not named weigh 1, as in Keras)."""
    keys = [int(k) for k in class_weight]
    if any(k < 0 for k in keys):
        raise ValueError(f"class_weight keys are class indices 0..n-1; got {sorted(keys)}")
    import keras

    table = np.ones(max(keys) + 1 if keys else 0, dtype=keras.config.floatx())
    for key, weight in class_weight.items():
        table[int(key)] = float(weight)
    return table


def class_weights_of(labels, table: np.ndarray) -> np.ndarray:
    """Per-row weights from the class of each label (an index, or the argmax of a one-hot row)."""
    y = np.asarray(labels)
    if y.ndim > 1:
        y = np.argmax(y, axis=-1) if y.shape[-1] != 1 else y.reshape(y.shape[0])
    classes = np.round(y).astype(np.int64)
    known = (classes >= 0) & (classes < len(table))
    weights = np.ones(classes.shape[0], dtype=table.dtype)
    weights[known] = table[classes[known]]
    return weights

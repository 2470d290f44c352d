"""Dense columns: numbers, arrays of numbers (any depth) and Spark ML vectors fed as fixed-shape tensors.

The fallback kind: it binds any input or label the kinds before it (kinds/__init__.py) leave.
"""

from __future__ import annotations

from pyspark.sql import types as T

from keras_spark.errors import BindingError, DataError
from keras_spark.kinds.base import ColumnKind
from keras_spark.kinds.schema import (
    SUPPORTED_DTYPES,
    ColumnBinding,
    check_depth,
    column_depth,
    describe_type,
    input_shape,
)

DENSE = "dense"


class DenseKind(ColumnKind):
    """A column of one fixed per-row shape, cast to the input's dtype by the core."""

    name = DENSE

    def bind_input(self, tensor, field: T.StructField, *, image_fit: str) -> ColumnBinding:
        return self._bind(tensor, field)

    def _bind(self, tensor, field: T.StructField) -> ColumnBinding:
        name, shape = tensor.name, input_shape(tensor.shape)
        depth, _ = column_depth(field.dataType, name)
        check_depth(name, field.dataType, depth, shape, name)
        dtype = str(tensor.dtype)
        if dtype not in SUPPORTED_DTYPES:
            raise BindingError(
                f"Keras input '{name}' has dtype {dtype}; keras-spark feeds one of {SUPPORTED_DTYPES}"
            )
        return ColumnBinding(name, "input", name, dtype, shape, describe_type(field.dataType), kind=self.name)

    def bind_label(self, output, field: T.StructField, dtype: str) -> ColumnBinding:
        depth, _ = column_depth(field.dataType, field.name, "label")
        return ColumnBinding(field.name, "label", field.name, dtype, (-1,) * depth, describe_type(field.dataType))

    def core_dtype(self, binding: ColumnBinding) -> str:
        """The dtype as the C++ core takes it."""
        return binding.dtype

    def core_spec(self, binding: ColumnBinding, field_index: int) -> tuple:
        return binding.column, field_index, self.core_dtype(binding), list(binding.shape)

    def agree_on_shape(self, binding: ColumnBinding, seen: list[list[int]]) -> tuple[int, ...]:
        """Tasks resolve unknown dimensions separately; they must all have seen the same."""
        distinct = {tuple(s) for s in seen if -1 not in s}
        if len(distinct) > 1:
            found = " and ".join(str(s) for s in sorted(distinct))
            raise DataError(
                f"column '{binding.column}' has arrays of varying shape across rows: {found}; "
                f"every row must have the same shape to feed Keras {binding.role} '{binding.keras_name}'"
            )
        return distinct.pop() if distinct else tuple(binding.shape)

    def predict_input(self, binding: ColumnBinding, column) -> tuple:
        from keras_spark import _core

        # A NaN input scores to a NaN output (not silent); only casts the dtype cannot hold are errors.
        dense, _ = _core.to_dense(*column.__arrow_c_array__(), binding.column, self.core_dtype(binding),
                                  list(binding.shape), allow_non_finite=True)
        return dense, None

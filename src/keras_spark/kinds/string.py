"""String columns: a `string` or `binary` column feeding `keras.Input(shape=(1,), dtype="string")` (TensorFlow).

The core caches each row's bytes as a ragged column and pads a batch's bytes to its longest
string; NumPy views them as fixed-width bytes (`S<n>`, no per-row Python), which TensorFlow
takes as a `tf.string` tensor. The other backends have no string tensors.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import types as T

from keras_spark.errors import BindingError
from keras_spark.kinds.base import ColumnKind
from keras_spark.kinds.schema import ColumnBinding, describe_type, input_shape
from keras_spark.kinds.sequence import padded_input
from keras_spark.sequences import DEFAULT_OPTIONS

STRING = "string"


class StringKind(ColumnKind):
    """One string a row, cached as bytes + offsets; host tensors only (never staged on an accelerator)."""

    name = STRING
    staged_on_device = False  # string tensors live on the host

    def bind_input(self, tensor, field: T.StructField, *, image_fit: str) -> ColumnBinding | None:
        """The binding of a dtype="string" input (checked), or None for any other dtype."""
        name, shape = tensor.name, input_shape(tensor.shape)
        if str(tensor.dtype) != "string":
            return None
        _check_string_input(name, field, shape)
        return ColumnBinding(name, "input", name, "string", shape, describe_type(field.dataType), kind=self.name,
                             sequence=DEFAULT_OPTIONS)

    def core_spec(self, binding: ColumnBinding, field_index: int) -> tuple:
        """(name, field, "uint8", [-1], (strings, no max_length)): the CacheWriter's spec of a string column."""
        return binding.column, field_index, "uint8", [-1], (True, -1)

    def pipeline_column(self, binding: ColumnBinding, shape) -> tuple:
        return "uint8", [-1]

    def agree_on_shape(self, binding: ColumnBinding, seen: list[list[int]]) -> tuple[int, ...]:
        return tuple(binding.shape)

    def ragged_pad(self, binding: ColumnBinding, index: int) -> tuple:
        return binding.sequence.pad(index, True)

    def finish(self, binding: ColumnBinding, array):
        return as_strings(array, binding.shape)

    def tensor_spec(self, binding: ColumnBinding, column: tuple):
        import tensorflow as tf

        return tf.TensorSpec((None, *binding.shape), tf.string)

    def predict_input(self, binding: ColumnBinding, column) -> tuple:
        padded, _ = padded_input(column, binding, "uint8", [-1], strings=True)
        return as_strings(padded, binding.shape), None

    def data_parallel_refusal(self, columns: list[str], num_workers: int) -> str | None:
        return (f"num_workers={num_workers} trains under JAX or PyTorch, which have no string tensors, and string "
                f"column(s) {columns} feed only TensorFlow; index the strings in Spark (StringIndexer) to train with "
                f"workers, or train with num_workers=1 under TensorFlow")


def _check_string_input(name: str, field: T.StructField, shape: tuple) -> None:
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise BindingError(
            f"Keras input '{name}' has dtype string, but the {backend} backend has no string tensors; index the "
            f"strings in Spark first (pyspark.ml.feature.StringIndexer, or F.hash(...) % n for hashing) and feed an "
            f"integer input, or train with KERAS_BACKEND=tensorflow, whose StringLookup/TextVectorization/Hashing "
            f"layers take the raw strings"
        )
    if isinstance(field.dataType, T.ArrayType) and isinstance(field.dataType.elementType, T.StringType):
        raise BindingError(
            f"column '{name}' has type {field.dataType.simpleString()}; keras-spark feeds string inputs one "
            f"string a row (keras.Input(shape=(1,), dtype='string')): join the array in Spark (F.concat_ws(' ', "
            f"'{name}')) and split it in the model (TextVectorization)"
        )
    if not isinstance(field.dataType, (T.StringType, T.BinaryType)):
        raise BindingError(
            f"Keras input '{name}' has dtype string, but column '{name}' has type {field.dataType.simpleString()}; "
            f"cast it in Spark (F.col('{name}').cast('string')) or give the input a numeric dtype"
        )
    if shape not in ((), (1,)):
        raise BindingError(f"Keras input '{name}' of dtype string has per-row shape {shape}; expected (1,) or ()")


def as_strings(padded: np.ndarray, shape) -> np.ndarray:
    """(rows, width) uint8 -> (rows, *shape) bytes_ (`S<width>`), a view: no copy, no per-row loop.

    Trailing NUL bytes read as padding (NumPy's fixed-width bytes drop them).
    """
    rows, width = padded.shape
    return padded.view(f"S{width}").reshape((rows, *shape))

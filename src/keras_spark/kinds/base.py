"""The one interface every column kind implements (one kind a module, as Keras's data adapters).

A kind answers, for the columns it binds, every question the rest of keras-spark asks:
`binding` asks the kinds in a fixed order to bind each Keras input and label; `spark/extract`
asks for the core's specs; `feed` for the batch conversion and the TensorFlow signature;
`spark/score` for the model's inputs and outputs; `spark/training` whether it trains with workers.
None of them branch on a kind's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from pyspark.sql import types as T

from keras_spark.kinds.schema import ColumnBinding


class ColumnKind(ABC):
    """One kind of column: how it binds, is cached, batched, scored, and where it may go.

    Attributes:
        name (str): the `ColumnBinding.kind` of the columns it binds.
        staged_on_device (bool): whether its batches may be staged on an accelerator ahead of the step.
        slices_pulls (bool): whether a pull of several batches may be cut back into batches by slicing (tf.data).
        per_step_outputs (bool): whether a model's per-step outputs follow this input's rows (predict
            trims them to each row's length, see `trims_output`).
    """

    name: str
    staged_on_device = True
    slices_pulls = True
    per_step_outputs = False

    # -- binding --------------------------------------------------------------------
    @abstractmethod
    def bind_input(self, tensor, field: T.StructField, *, image_fit: str) -> ColumnBinding | None:
        """The binding of `field` to Keras input `tensor` if this kind takes it (checked), else None."""

    def bind_label(self, output, field: T.StructField, dtype: str) -> ColumnBinding | None:
        """The binding of `field` as the label of Keras `output` if this kind takes it, else None."""
        return None

    # -- the cache and the core ---------------------------------------------------------
    @abstractmethod
    def core_spec(self, binding: ColumnBinding, field_index: int) -> tuple:
        """The CacheWriter's (name, field index, dtype, shape[, "sparse" or ragged options]) of a column."""

    def pipeline_column(self, binding: ColumnBinding, shape) -> tuple:
        """The core Pipeline's (dtype, shape[, layout]) of a cached column whose per-row shape is `shape`."""
        return binding.dtype, list(shape)

    @abstractmethod
    def agree_on_shape(self, binding: ColumnBinding, seen: list[list[int]]) -> tuple[int, ...]:
        """The column's per-row shape from the shapes each task saw (they must agree); a DataError if not."""

    def ragged_pad(self, binding: ColumnBinding, index: int) -> tuple | None:
        """The Pipeline's padding of a ragged column at `index` (its `ragged` entry), None for others."""
        return None

    def pipeline_layout(self) -> dict:
        """Keywords of the core Pipeline this kind's batches need under the active backend."""
        return {}

    # -- batches --------------------------------------------------------------------------
    def finish(self, binding: ColumnBinding, array):
        """The core's array of a pull as the NumPy array the model takes (e.g. string bytes -> `S<n>` view)."""
        return array

    def to_backend(self, array):
        """A host batch of the column as the active backend's tensor (e.g. sparse COO -> BCOO/SparseTensor)."""
        return array

    def row_count(self, array) -> int:
        """The rows of a host batch of the column."""
        return len(array)

    def rows_at(self, array, index: np.ndarray):
        """The host batch's rows at `index` (repeats allowed), as a batch of the column."""
        return array[index]

    def tensor_spec(self, binding: ColumnBinding, column: tuple):
        """The `tf.TensorSpec` of the column in a batch (`column`: its `pipeline_column`; None where a batch
        decides)."""
        import tensorflow as tf

        dtype, shape = column[0], column[1]
        return tf.TensorSpec((None, *(None if d < 0 else d for d in shape)), tf.as_dtype(dtype))

    # -- predict ---------------------------------------------------------------------------
    @abstractmethod
    def predict_input(self, binding: ColumnBinding, column) -> tuple:
        """One Arrow column of a scoring batch -> (the model input, each row's length or None)."""

    def model_input(self, rows):
        """A scoring chunk of `predict_input`'s result (`rows[a:b]`) as the model takes it."""
        return rows

    def trims_output(self, binding: ColumnBinding, output_shape) -> bool:
        """Whether a model output of per-row `output_shape` is cut back to this input's row lengths."""
        return False

    def predict_output(self, binding: ColumnBinding, values, lengths, to_arrow, spark_type):
        """An output that `trims_output`: (rows, steps, ...) values -> an Arrow list of each row's own steps."""
        raise NotImplementedError(f"{self.name} columns do not shape a model's outputs")

    # -- where it may go -----------------------------------------------------------------
    def data_parallel_refusal(self, columns: list[str], num_workers: int) -> str | None:
        """Why `columns` of this kind cannot train with `num_workers` > 1 (None if they can)."""
        return None

"""Sparse inputs: a Spark ML vector column feeding `keras.Input(shape=(d,), sparse=True)` as its non-zeros.

The cache keeps each row's indices and values, not `d` numbers (src/cpp/sparse_column.h);
the core gathers a batch's COO arrays (indices [nnz, 2], values [nnz], dense shape) on its
own threads, and here they become the backend's sparse tensor:

- TensorFlow: `tf.SparseTensor` (int64 indices), fed through `tf.data` with a
  `tf.SparseTensorSpec`, as Keras's own TF dataset adapter takes it.
- JAX: `jax.experimental.sparse.BCOO` (int32 indices) yielded by the generator; Keras's
  JAX iterator passes BCOO through unchanged. JAX compiles one step per input shape, so the
  core pads each batch's entry count to one of a few sizes (at most 12.5% more) with
  entries (0, 0) = 0, which add nothing to a product or a sum.
- PyTorch: Keras has no sparse tensors there (`keras.Input(sparse=True)` is refused);
  bind_inputs says what to do instead.

Data-parallel JAX (`num_workers` > 1) makes each step's batches one global array sharded by row,
which COO entries cannot be. There the core lays a batch out by row (BCOO with n_batch=1):
values [rows, k] and column indices [rows, k, 1], k the most entries of any row of all workers,
so the batch dimension shards as a dense batch's does (and every rank feeds one shape).

Example:
    x = keras.Input(shape=(262144,), sparse=True, name="features")  # a HashingTF column
    y = keras.layers.Dense(1, name="label")(x)
    KerasSparkModel(x, y).fit(df, batch_size=128)
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import types as T

from keras_spark.errors import BindingError
from keras_spark.kinds.base import ColumnKind
from keras_spark.kinds.dense import DenseKind
from keras_spark.kinds.schema import ColumnBinding, input_shape

SPARSE = "sparse"
_SPARSE_BACKENDS = ("tensorflow", "jax")


def _backend() -> str:
    # Imported here: the Spark pass's executors import this module (through extract) and need no backend.
    import keras

    return keras.backend.backend()


def is_sparse_input(tensor) -> bool:
    """Whether a Keras input tensor was declared `sparse=True`."""
    return bool(getattr(tensor, "sparse", False))


def check_sparse_input(name: str, spark_type, shape: tuple[int, ...]) -> None:
    """The rules a sparse input's column obeys, checked on the schema before Spark runs."""
    backend = _backend()
    if backend not in _SPARSE_BACKENDS:
        raise BindingError(
            f"Keras input '{name}' is sparse=True, but the {backend} backend has no sparse tensors in Keras; "
            f"declare keras.Input(shape={shape}, sparse=False) to feed the vectors densified (d numbers a row), "
            f"or use KERAS_BACKEND=tensorflow or jax to keep them sparse"
        )
    if type(spark_type).__name__ != "VectorUDT":
        raise BindingError(
            f"column '{name}' has type {spark_type.simpleString()}, but Keras input '{name}' is sparse=True, which "
            f"takes a Spark ML vector column (pyspark.ml.linalg: SparseVector or DenseVector, e.g. from "
            f"HashingTF or VectorAssembler); convert it with pyspark.ml.functions.array_to_vector, or declare "
            f"the input sparse=False"
        )
    if len(shape) != 1:
        raise BindingError(
            f"Keras input '{name}' is sparse=True with per-row shape {shape}; a Spark ML vector feeds a sparse "
            f"input of shape (size,)"
        )


def core_layout() -> dict:
    """The core's sparse batch layout for the active backend (keywords of Pipeline and to_sparse)."""
    if _backend() == "jax":
        return {"sparse_index_dtype": "int32", "sparse_pad": True}
    return {"sparse_index_dtype": "int64", "sparse_pad": False}


def to_tensor(indices: np.ndarray, values: np.ndarray, dense_shape: tuple[int, int]):
    """The core's COO arrays (or arrays batched by row) as the active backend's sparse tensor."""
    if _backend() == "jax":
        from jax.experimental import sparse as jax_sparse

        if indices.ndim == 3:  # batched by row: one data-parallel process's rows of a global batch
            return _process_rows_of_global_batch(jax_sparse.BCOO, indices, values, dense_shape)
        return jax_sparse.BCOO((values, indices), shape=tuple(dense_shape))
    import tensorflow as tf

    return tf.SparseTensor(indices, values, dense_shape)


def _process_rows_of_global_batch(bcoo, indices, values, dense_shape):
    """This process's rows of a data-parallel step as a BCOO that states the global batch's shape.

    Keras's JAX trainer makes each step's data one global array with
    `jax.make_array_from_process_local_data`, which maps over the BCOO's leaves (values, indices:
    their batch dimensions grow to the global batch) and keeps its static shape. So that shape is
    the global one from the start: every process feeds as many rows (the lockstep feed pads them).
    BCOO's own constructor checks leaves against its shape, hence its pytree `tree_unflatten`.
    """
    import jax

    rows, width = dense_shape
    info = {"shape": (int(rows) * jax.process_count(), int(width)), "indices_sorted": False,
            "unique_indices": False}
    return bcoo.tree_unflatten(info, (values, indices))


def most_row_entries(cached) -> int:
    """The most entries (non-zeros) of any cached row in any sparse column (0 without one): the
    `k` of a batch laid out by row."""
    most = 0
    for column, binding in enumerate(cached.bindings):
        if binding.kind != SPARSE:
            continue
        for files in cached.chunk_files:  # each row's end offset, counted from the chunk's first entry
            ends = np.fromfile(files[column], dtype=np.int64)
            if len(ends):
                most = max(most, int(np.diff(ends, prepend=0).max()))
    return most


class SparseColumnRows:
    """An Arrow vector column being scored (predict): row ranges become sparse tensors in the core.

    Sliced like the dense inputs (`rows[a:b]`, zero-copy on the Arrow array); `nbytes` is
    about what the range's COO arrays take, for sizing scoring batches.
    """

    def __init__(self, column, binding):
        self.column = column
        self.binding = binding

    def __getitem__(self, rows: slice) -> SparseColumnRows:
        start, stop, _ = rows.indices(len(self.column))
        return SparseColumnRows(self.column.slice(start, max(0, stop - start)), self.binding)

    @property
    def nbytes(self) -> int:
        import pyarrow.compute as pc

        entries = pc.sum(pc.list_value_length(self.column.field("values"))).as_py() or 0
        return int(entries) * (2 * 8 + np.dtype(self.binding.dtype).itemsize)

    def to_tensor(self):
        from keras_spark import _core

        b = self.binding
        # As dense predict: a NaN input scores to NaN (not silent); casts the dtype cannot hold are errors.
        coo = _core.to_sparse(*self.column.__arrow_c_array__(), b.column, b.dtype, list(b.shape),
                              allow_non_finite=True, **core_layout())
        return to_tensor(*coo)


class SparseKind(DenseKind):
    """A Spark ML vector fed to a `sparse=True` input as its non-zeros (COO batches, never densified)."""

    name = SPARSE
    staged_on_device = False  # sparse batches are not staged (untested on a GPU)
    slices_pulls = False  # a pulled SparseTensor cannot be cut into batches by slicing

    def bind_input(self, tensor, field: T.StructField, *, image_fit: str) -> ColumnBinding | None:
        if not is_sparse_input(tensor):
            return None
        check_sparse_input(tensor.name, field.dataType, input_shape(tensor.shape))
        return self._bind(tensor, field)

    bind_label = ColumnKind.bind_label  # sparse tensors are inputs only

    def core_spec(self, binding: ColumnBinding, field_index: int) -> tuple:
        return (*super().core_spec(binding, field_index), SPARSE)

    def pipeline_column(self, binding: ColumnBinding, shape) -> tuple:
        """A cached column as the core's Pipeline takes it: (dtype, shape, "sparse")."""
        return binding.dtype, list(shape), SPARSE

    def pipeline_layout(self) -> dict:
        return core_layout()

    def to_backend(self, array):
        return to_tensor(*array)

    def row_count(self, array) -> int:
        return int(array[2][0])

    def rows_at(self, array, index: np.ndarray):
        """Rows of a batch laid out by row (the data-parallel layout; COO entries are not cut by row)."""
        indices, values, (_, width) = array
        if indices.ndim != 3:
            raise RuntimeError("internal: only a sparse batch laid out by row can be cut by row")
        return indices[index], values[index], (len(index), width)

    def tensor_spec(self, binding: ColumnBinding, column: tuple):
        """A batch's `tf.SparseTensorSpec`."""
        import tensorflow as tf

        return tf.SparseTensorSpec((None, *column[1]), tf.as_dtype(column[0]))

    def predict_input(self, binding: ColumnBinding, column) -> tuple:
        """Converted a scoring chunk at a time (`model_input`), to the backend's sparse tensor."""
        return SparseColumnRows(column, binding), None

    def model_input(self, rows):
        return rows.to_tensor()

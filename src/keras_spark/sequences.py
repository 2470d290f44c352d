"""Variable-length sequences and strings: ragged columns, cached as values + offsets, padded per batch.

A Keras input whose first dimension is `None` (`keras.Input(shape=(None,), dtype="int32")`,
`(None, 16)`) takes an `array` column whose rows differ in length; a label whose output is
per-step (`(None, ...)`) is padded the same way (sequence tagging). The C++ core
(src/cpp/ragged_column.*) pads each batch to its longest row, or to `sequence_length`,
in the manner of `keras.utils.pad_sequences`:

    model.fit(df, sequence_length=None, padding="post", truncating=None, pad_value=0,
              bucket_by_length=False)

- `padding`: "post" (default; values first, as Keras's cuDNN RNNs and `mask_zero` want) or "pre";
- `truncating`: None (a row longer than `sequence_length` is a DataError naming the column and
  row), "pre" (keep its last steps) or "post" (keep its first steps), as pad_sequences;
- `bucket_by_length`: True (boundaries from the length quantiles) or a list of boundaries: rows
  of similar length are batched together, as tf.data's `bucket_by_sequence_length`.

Under JAX, which compiles one training step per input shape, a fit or evaluate pads each batch's
steps further, to one of a few lengths (`StepLadder`: each bucket's longest, or powers of two up to
the longest row), with the same `pad_value` and `padding`; its automatic buckets are fewer (at most
`COMPILED_MAX_BUCKETS`) and the buckets' part-filled batches of an epoch are merged, so a fit compiles a
handful of steps instead of one a batch. `model.data_stats["distinct_shapes"]` counts the batch shapes fed.

A Keras input of dtype "string" (TensorFlow backend only) takes a `string` or `binary`
column: the core pads each batch's bytes to its longest string and NumPy views them as
fixed-width bytes (`S<n>`, no per-row Python), which TensorFlow takes as a `tf.string` tensor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from pyspark.sql import types as T

from keras_spark.errors import BindingError, DataError

SEQUENCE = "sequence"
STRING = "string"
COMPILED_MAX_BUCKETS = 4  # JAX: a compile costs ~a second on CPU, far more than a few padded steps
_OPTION_NAMES = ("sequence_length", "padding", "truncating", "pad_value", "bucket_by_length")


@dataclass(frozen=True)
class SequenceOptions:
    """How ragged columns are padded (see the module docstring)."""

    sequence_length: int | None = None
    padding: str = "post"
    truncating: str | None = None
    pad_value: float = 0.0
    bucket_by_length: bool | tuple[int, ...] = False

    def __post_init__(self):
        length = self.sequence_length
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ValueError(f"sequence_length must be a positive integer or None; got {length!r}")
        if self.padding not in ("pre", "post"):
            raise ValueError(f"padding must be 'pre' or 'post' (as keras.utils.pad_sequences); got {self.padding!r}")
        if self.truncating not in (None, "pre", "post"):
            raise ValueError(f"truncating must be None, 'pre' or 'post'; got {self.truncating!r}")
        buckets = self.bucket_by_length
        if not isinstance(buckets, bool):
            if not all(isinstance(b, int) and b > 0 for b in buckets):
                raise ValueError(f"bucket_by_length must be True, False or a list of positive lengths; got {buckets!r}")
            object.__setattr__(self, "bucket_by_length", tuple(sorted(buckets)))

    @classmethod
    def pop_from(cls, kwargs: dict) -> SequenceOptions:
        """The options given among a method's keyword arguments (removed from them)."""
        return cls(**{k: kwargs.pop(k) for k in _OPTION_NAMES if k in kwargs})

    def pad(self, column: int, strings: bool) -> tuple:
        """The core's (column, strings, length or -1, padding 'pre', truncating 'pre', value)."""
        length = -1 if strings or self.sequence_length is None else self.sequence_length
        return (column, strings, length, self.padding == "pre", self.truncating == "pre", float(self.pad_value))

    def max_length(self) -> int:
        """Rows longer than this are a DataError (-1: no limit)."""
        return self.sequence_length if self.sequence_length is not None and self.truncating is None else -1


DEFAULT_OPTIONS = SequenceOptions()


def with_options(bindings: list, options: SequenceOptions) -> list:
    """The bindings with `options` on every ragged column."""
    return [dataclasses.replace(b, sequence=options) if b.kind != "dense" else b for b in bindings]


def has_ragged(bindings) -> bool:
    return any(b.kind != "dense" for b in bindings)


# -- binding --------------------------------------------------------------------------
def bind_input(tensor, field: T.StructField):
    """A ColumnBinding for a string or variable-length input, or None for a dense one."""
    from keras_spark.binding import ColumnBinding, _check_depth, _input_shape, column_depth, describe_type

    name, dtype, shape = tensor.name, str(tensor.dtype), _input_shape(tensor.shape)
    if dtype == "string":
        return ColumnBinding(name, "input", name, "string", shape, describe_type(field.dataType), kind=STRING,
                             sequence=DEFAULT_OPTIONS) if _check_string_input(name, field, shape) else None
    if not shape or shape[0] != -1 or not isinstance(field.dataType, T.ArrayType):
        return None
    depth, _ = column_depth(field.dataType, name)
    _check_depth(name, field.dataType, depth, shape, name)
    return ColumnBinding(name, "input", name, dtype, shape, describe_type(field.dataType), kind=SEQUENCE,
                         sequence=DEFAULT_OPTIONS)


def _check_string_input(name: str, field: T.StructField, shape: tuple) -> bool:
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
    return True


def bind_label(output, field: T.StructField, dtype: str):
    """A sequence label (the output is per-step, `(None, ...)`), or None for a dense one."""
    from keras_spark.binding import ColumnBinding, column_depth, describe_type

    per_row = tuple(output.shape[1:])
    if not per_row or per_row[0] is not None or not isinstance(field.dataType, T.ArrayType):
        return None
    depth, _ = column_depth(field.dataType, field.name)
    return ColumnBinding(field.name, "label", field.name, dtype, (-1,) * depth, describe_type(field.dataType),
                         kind=SEQUENCE, sequence=DEFAULT_OPTIONS)


def string_column_hint(leaf: T.DataType) -> str:
    """What to do with a string column fed to a numeric input."""
    if not isinstance(leaf, T.StringType):
        return ""
    return (" (strings: index them in Spark with pyspark.ml.feature.StringIndexer, or, with the TensorFlow "
            "backend, declare keras.Input(shape=(1,), dtype='string') and let StringLookup/TextVectorization "
            "in the model do it)")


def string_label_hint(leaf: T.DataType, column: str) -> str:
    """What to do with a string column fed as a label (a model's output is numbers)."""
    if not isinstance(leaf, T.StringType):
        return ""
    return (f" (a string label: if it holds numbers, cast it in Spark, F.col('{column}').cast('double'); if it holds "
            f"class names, index them with pyspark.ml.feature.StringIndexer and train on the indices)")


# -- the cache and the core --------------------------------------------------------------
def core_spec(binding, field_index: int) -> tuple:
    """(name, field, dtype, shape, (strings, max_length)): the CacheWriter's spec of a ragged column."""
    strings = binding.kind == STRING
    dtype, shape = ("uint8", [-1]) if strings else (binding.dtype, list(binding.shape))
    options = binding.sequence or DEFAULT_OPTIONS
    return (binding.column, field_index, dtype, shape, (strings, -1 if strings else options.max_length()))


def split_core_specs(columns) -> tuple[list, list]:
    """Core specs -> (the CacheWriter's 4-tuples, its `ragged` list)."""
    def ragged(column) -> bool:  # a sparse column's fifth element is its kind, "sparse"
        return len(column) > 4 and isinstance(column[4], tuple)

    specs = [tuple(c[:4]) if ragged(c) else tuple(c) for c in columns]
    return specs, [(i, *c[4]) for i, c in enumerate(columns) if ragged(c)]


def core_column(binding, shape) -> tuple[str, list[int]]:
    """The pipeline's (dtype, shape) of a cached column."""
    if binding.kind == STRING:
        return "uint8", [-1]
    return binding.dtype, list(shape)


def agree_on_shape(binding, seen: list[list[int]]) -> tuple[int, ...]:
    """Ragged columns: tasks must agree on the per-step shape; the steps stay -1."""
    if binding.kind == STRING:
        return tuple(binding.shape)
    distinct = {tuple(s[1:]) for s in seen if -1 not in s[1:]}
    if len(distinct) > 1:
        found = " and ".join(str(s) for s in sorted(distinct))
        raise DataError(f"column '{binding.column}' has steps of varying shape across rows: {found}; every step "
                        f"must have the same shape to feed Keras {binding.role} '{binding.keras_name}'")
    return (-1, *(distinct.pop() if distinct else binding.shape[1:]))


def compiles_per_shape() -> bool:
    """Whether the active backend compiles one step per input shape (JAX), so batches should take few shapes."""
    import keras

    return keras.backend.backend() == "jax"


def pipeline_options(cached, batch_size: int) -> dict:
    """The core Pipeline's ragged/bucketing keywords for a cache."""
    ragged = [b.sequence.pad(i, b.kind == STRING) for i, b in enumerate(cached.bindings) if b.kind != "dense"]
    column = bucket_column(cached.bindings)
    if column is None:
        return dict(ragged=ragged)
    return dict(ragged=ragged, bucket_column=column, bucket_boundaries=list(boundaries_of(cached, column, batch_size)),
                merge_bucket_tails=compiles_per_shape())


def bucket_column(bindings) -> int | None:
    """The sequence input whose lengths group rows, when bucketing is asked for."""
    for i, b in enumerate(bindings):
        if b.kind == SEQUENCE and b.role == "input" and b.sequence.bucket_by_length is not False:
            return i
    return None


def row_groups(cached, pull_rows: int) -> list[int]:
    """Rows of each group the core cuts into pulls of `pull_rows`: every row, or each bucket's rows.

    A group's pull is cut when it fills; with buckets, each bucket's part-filled rest comes at the
    epoch's end, in bucket order (src/cpp/pipeline.cc, BatchPlanner::next), or, under JAX, the rests
    together as one more group (merge_bucket_tails).
    """
    column = bucket_column(cached.bindings)
    if column is None or not cached.rows:
        return [cached.rows]
    counts = bucket_counts(cached, column, boundaries_of(cached, column, pull_rows))
    if not compiles_per_shape():
        return counts
    return [c - c % pull_rows for c in counts] + [sum(c % pull_rows for c in counts)]


def bucket_counts(cached, column: int, boundaries) -> list[int]:
    """Rows of each bucket among the cached partitions' rows (a row is in bucket i when
    boundaries[i - 1] <= length < boundaries[i], as the core's upper_bound)."""
    offsets = [np.fromfile(files[column] + ".offsets", dtype=np.int64) for files in cached.chunk_files]
    lengths = [np.diff(offsets[chunk][start:start + count + 1])
               for segments in cached.partitions for chunk, start, count in segments]
    buckets = np.searchsorted(np.asarray(boundaries, np.int64), np.concatenate([np.zeros(0, np.int64), *lengths]),
                              side="right")
    return np.bincount(buckets, minlength=len(boundaries) + 1).tolist()


def row_lengths(cached, column: int) -> np.ndarray:
    """Each cached row's length in the column (steps), chunk after chunk."""
    from keras_spark import _core  # noqa: F401  (the cache is the core's)

    return np.concatenate([np.diff(np.fromfile(files[column] + ".offsets", dtype=np.int64))
                           for files in cached.chunk_files])


def longest_row(cached) -> int:
    """The most steps of any cached row in a sequence column padded per batch (0 without one;
    a column with a `sequence_length` is padded to it by the core)."""
    columns = [i for i, b in enumerate(cached.bindings) if b.kind == SEQUENCE and b.sequence.sequence_length is None]
    return max((int(row_lengths(cached, i).max()) for i in columns if cached.rows), default=0)


def boundaries_of(cached, column: int, batch_size: int) -> tuple[int, ...]:
    buckets = cached.bindings[column].sequence.bucket_by_length
    if buckets is not True:
        return tuple(buckets)
    return auto_boundaries(row_lengths(cached, column), batch_size,
                           max_buckets=COMPILED_MAX_BUCKETS if compiles_per_shape() else 16)


def auto_boundaries(lengths: np.ndarray, batch_size: int, max_buckets: int = 16) -> tuple[int, ...]:
    """Boundaries at length quantiles: up to `max_buckets` buckets, each with at least ~4 batches of rows.

    A bucket's last batch of an epoch is part-filled, so few rows a bucket would mean many small steps.
    """
    buckets = int(max(1, min(max_buckets, len(lengths) // (4 * batch_size))))
    if buckets == 1:
        return ()
    cuts = np.quantile(lengths, np.linspace(0, 1, buckets + 1)[1:-1], method="higher")
    return tuple(int(b) for b in np.unique(cuts + 1))


# -- batches ----------------------------------------------------------------------------
def finish_arrays(arrays: list, bindings) -> list:
    """The core's arrays as the model takes them: string columns viewed as fixed-width bytes."""
    for i, b in enumerate(bindings):
        if b.kind == STRING:
            arrays[i] = as_strings(arrays[i], b.shape)
    return arrays


def as_strings(padded: np.ndarray, shape) -> np.ndarray:
    """(rows, width) uint8 -> (rows, *shape) bytes_ (`S<width>`), a view: no copy, no per-row loop.

    Trailing NUL bytes read as padding (NumPy's fixed-width bytes drop them).
    """
    rows, width = padded.shape
    return padded.view(f"S{width}").reshape((rows, *shape))


class StepLadder:
    """Pads each batch's steps to one of a few lengths, and counts the batch shapes served.

    Under JAX (`compiles_per_shape`) the lengths are each bucket's longest (a boundary - 1) and the
    longest row, or without buckets powers of two from 8 and the longest row; pad steps take the
    column's `pad_value` on its `padding` side, as the core pads, so a masking model sees the same rows.
    Elsewhere (`lengths` None) batches keep the core's shape and only their shapes are counted.

    Attributes:
        lengths (numpy.ndarray | None): the step lengths batches are padded to (ascending), or None.
        extra_steps (int): pad steps added beyond the core's (rows x steps, summed over padded columns).
        shapes (set[tuple]): each distinct batch's shapes (one tuple of array shapes a batch).
    """

    def __init__(self, bindings, lengths: np.ndarray | None, batch_size: int):
        self.lengths, self.batch_size = lengths, batch_size
        self.padded = [i for i, b in enumerate(bindings) if b.kind == SEQUENCE] if lengths is not None else []
        self.options = [b.sequence for b in bindings]
        self.extra_steps = 0
        self.shapes: set[tuple] = set()

    @classmethod
    def for_cache(cls, cached, batch_size: int, pull_rows: int) -> StepLadder:
        """The ladder of a cache's feed (`pull_rows` rows a pull from the core, cut into `batch_size` batches):
        padding under JAX when its sequences have no fixed length."""
        column = bucket_column(cached.bindings)
        if column is None:
            column = next((i for i, b in enumerate(cached.bindings) if b.kind == SEQUENCE and b.role == "input"), None)
        if column is None or not cached.rows or not compiles_per_shape() \
                or cached.bindings[column].sequence.sequence_length is not None:
            return cls(cached.bindings, None, batch_size)
        longest = int(row_lengths(cached, column).max())
        if bucket_column(cached.bindings) is not None:
            lengths = [b - 1 for b in boundaries_of(cached, column, pull_rows)]
        else:
            lengths = [1 << p for p in range(3, max(3, longest.bit_length()))]
        return cls(cached.bindings, np.unique([n for n in lengths if 1 <= n < longest] + [longest]), batch_size)

    def __call__(self, arrays: list) -> list:
        for i in self.padded:
            steps = arrays[i].shape[1]
            at = int(np.searchsorted(self.lengths, steps))
            if at < len(self.lengths) and self.lengths[at] > steps:
                arrays[i] = self._pad(arrays[i], int(self.lengths[at]) - steps, self.options[i])
        rows = next((len(a) for a in arrays if isinstance(a, np.ndarray)), 0)  # a sparse column is a tuple
        rest = tuple(tuple(getattr(a, "shape", ())[1:]) for a in arrays)
        for start in range(0, rows, self.batch_size):  # a TensorFlow pull is cut into batches in tf.data
            self.shapes.add((min(self.batch_size, rows - start), rest))
        return arrays

    def _pad(self, array: np.ndarray, extra: int, options: SequenceOptions) -> np.ndarray:
        widths = [(0, 0)] * array.ndim
        widths[1] = (extra, 0) if options.padding == "pre" else (0, extra)
        self.extra_steps += extra * len(array)
        return np.pad(array, widths, constant_values=np.asarray(options.pad_value).astype(array.dtype))


def tensor_spec(binding, dtype: str, shape):
    """The tf.TensorSpec of one column of a batch (None where a batch decides)."""
    import tensorflow as tf

    if binding.kind == STRING:
        return tf.TensorSpec((None, *binding.shape), tf.string)
    return tf.TensorSpec((None, *(None if d < 0 else d for d in shape)), tf.as_dtype(dtype))


# -- predict ----------------------------------------------------------------------------
def model_input(column, binding) -> tuple[np.ndarray, np.ndarray]:
    """One ragged Arrow column of a scoring batch -> (padded array, each row's length)."""
    from keras_spark import _core

    strings = binding.kind == STRING
    dtype, shape = core_column(binding, binding.shape)
    options = binding.sequence or DEFAULT_OPTIONS
    padded, lengths = _core.to_padded(*column.__arrow_c_array__(), binding.column, dtype, shape,
                                      options.pad(0, strings), truncate=options.truncating is not None)
    return (as_strings(padded, binding.shape) if strings else padded), lengths


def trims_output(output_shape, bindings) -> bool:
    """Per-step outputs of models fed a sequence with no fixed length are cut back to each row's length."""
    first = next((b for b in bindings if b.kind == SEQUENCE), None)
    per_row = tuple(output_shape)
    return (first is not None and first.sequence.sequence_length is None and len(per_row) >= 1
            and per_row[0] is None)


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


# -- figures ----------------------------------------------------------------------------
def padding_fraction(lengths: np.ndarray, batch_size: int, *, sequence_length: int | None = None,
                     boundaries: tuple[int, ...] | None = None, seed: int = 0) -> float:
    """Padding steps / all steps of one shuffled epoch, padded per batch as the core pads it.

    With `boundaries`, batches are cut within buckets as the core's planner cuts them.
    """
    order = np.random.default_rng(seed).permutation(len(lengths))
    shuffled = lengths[order]
    if boundaries:
        bucket = np.searchsorted(np.asarray(boundaries), shuffled, side="right")
        groups = [shuffled[bucket == b] for b in range(len(boundaries) + 1)]
    else:
        groups = [shuffled]
    padded = real = 0
    for group in groups:
        for start in range(0, len(group), batch_size):
            batch = group[start:start + batch_size]
            width = sequence_length or max(1, int(batch.max()))
            padded += width * len(batch)
            real += int(np.minimum(batch, width).sum())
    return 1 - real / padded if padded else 0.0


def padding_stats(cached, batch_size: int, served: dict) -> dict:
    """model.data_stats figures: the padding fraction served, and one epoch's with and without bucketing.

    The estimates pad each batch to its own longest row (the core's padding, not JAX's `StepLadder`).
    """
    column = next((i for i, b in enumerate(cached.bindings) if b.kind == SEQUENCE and b.role == "input"), None)
    if column is None:
        return {}
    lengths = row_lengths(cached, column)
    options = cached.bindings[column].sequence
    bounds = boundaries_of(cached, column, batch_size) if options.bucket_by_length is not False else ()
    fixed = options.sequence_length
    padded = served.get("padded_steps", 0)
    return {
        "padding_fraction": 1 - served.get("real_steps", 0) / padded if padded else 0.0,
        "padding_fraction_unbucketed": padding_fraction(lengths, batch_size, sequence_length=fixed),
        "padding_fraction_bucketed": padding_fraction(lengths, batch_size, sequence_length=fixed,
                                                      boundaries=bounds or auto_boundaries(lengths, batch_size)),
        "bucket_boundaries": list(bounds) if bounds else [],
    }

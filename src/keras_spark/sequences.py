"""Variable-length sequences: how ragged columns, cached as values + offsets, are padded and batched.

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

This module is the feeding policy (options, buckets, step lengths, padding figures); the column
kinds themselves, how a ragged column binds, is cached and scored, are kinds/sequence.py and, for
`string` columns (also ragged: a batch's bytes padded to its longest string), kinds/string.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

SEQUENCE = "sequence"
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
    """The bindings with `options` on every ragged column (sequences and strings: those with options)."""
    return [dataclasses.replace(b, sequence=options) if b.sequence is not None else b for b in bindings]


def has_ragged(bindings) -> bool:
    """Whether any column is ragged (padded per batch by the core)."""
    return any(b.sequence is not None for b in bindings)


# -- the core's batches ------------------------------------------------------------------
def compiles_per_shape() -> bool:
    """Whether the active backend compiles one step per input shape (JAX), so batches should take few shapes."""
    import keras

    return keras.backend.backend() == "jax"


def bucketing_options(cached, batch_size: int) -> dict:
    """The core Pipeline's bucketing keywords for a cache (none without bucketing)."""
    column = bucket_column(cached.bindings)
    if column is None:
        return {}
    return dict(bucket_column=column, bucket_boundaries=list(boundaries_of(cached, column, batch_size)),
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

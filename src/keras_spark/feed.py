"""Core batches -> what `Model.fit` takes for the active backend, in the model's own structure.

Keras reads its input once and never restarts it (it peeks two batches of a
generator for shapes and chains them back), so a feed is endless and `fit` is
given `steps_per_epoch` from the known row count: each epoch is exactly one pass.

One way in (`BatchFeed`), one small adapter per backend (`keras_input`):
- TensorFlow: a `tf.data.Dataset` that pulls `batches_per_pull` batches from the core
  at once and slices them back into batches inside tf.data, so the Python call per
  pull is paid once per several steps. The rows and their order are exactly those of
  single batches: the core's plan is one row stream cut into batch-sized pieces.
- JAX and PyTorch: a plain generator, which Keras's own adapters turn into a JAX
  iterator or a torch DataLoader.
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np

from keras_spark import _core
from keras_spark.shutdown import NativeHandle
from keras_spark.spark.extract import CachedData

TF_BATCHES_PER_PULL = 16
TF_PULL_BYTES = 4 << 20  # a pull that fits in cache: wide rows get fewer batches a pull


def default_parallelism(num_parallel_calls: int | None, partitions: int) -> int:
    """Partitions open at once: the user's figure, else one per core (as tf.data's AUTOTUNE)."""
    wanted = num_parallel_calls if num_parallel_calls and num_parallel_calls > 0 else (os.cpu_count() or 1)
    return max(1, min(wanted, partitions))


def _packer(struct, positions: list[int]):
    """A function from the core's column list to the model's structure (tuples, never lists)."""
    if isinstance(struct, (list, tuple)) and all(keras.tree.is_nested(s) is False for s in struct):
        return lambda arrays: tuple(arrays[i] for i in positions)
    if not keras.tree.is_nested(struct):
        (only,) = positions
        return lambda arrays: arrays[only]

    def pack(arrays):
        # tf.data reads a list as one tensor to stack, so nested lists become tuples.
        return keras.tree.lists_to_tuples(keras.tree.pack_sequence_as(struct, [arrays[i] for i in positions]))

    return pack


class BatchFeed:
    """Endless (x, y) batches of a cached DataFrame from the C++ pipeline.

    Example:
        feed = BatchFeed(model, cached, batch_size=32, shuffle=True, seed=7)
        model.fit(keras_input(feed), steps_per_epoch=feed.steps_per_epoch, epochs=3)
    """

    def __init__(self, model, cached: CachedData, *, batch_size: int, shuffle: bool, seed: int,
                 num_parallel_calls: int | None = None, first_epoch: int = 0, batches_per_pull: int = 1,
                 num_threads: int | None = None):
        cycle = default_parallelism(num_parallel_calls, max(1, len(cached.partitions)))
        # Gathering is memory-bound; by default the model's step keeps the other half of the cores.
        threads = num_threads or max(1, min(cycle, (os.cpu_count() or 2) // 2))
        self.batch_size = int(batch_size)
        self.batches_per_pull = int(batches_per_pull)
        # No rows (a data-parallel worker given no validation ids): nothing to read, only pads.
        pipeline = _core.Pipeline(
            cached.chunk_files, cached.column_specs(), cached.partitions,
            batch_size=self.batch_size * self.batches_per_pull, shuffle=bool(shuffle), seed=int(seed),
            cycle_length=cycle, num_threads=threads, prefetch=2 * threads + 2, first_epoch=int(first_epoch),
        ) if cached.rows else None
        # Closed with this feed or at exit, even when the fit using it never returns.
        self._pipeline = NativeHandle(self, pipeline) if pipeline is not None else None
        self.rows = cached.rows
        self.steps_per_epoch = math.ceil(cached.rows / self.batch_size)
        self.columns = cached.column_specs()
        names = [b.keras_name for b in cached.bindings]
        self._inputs = _packer(model.input, [names.index(t.name) for t in model.inputs])
        self.structure = (model.input,)
        self._labels = None
        if any(b.role == "label" for b in cached.bindings):
            self._labels = _packer(model.output, [names.index(n) for n in model.output_names])
            self.structure = (model.input, model.output)

    @property
    def pipeline(self):
        """The C++ pipeline (None when there are no rows); RuntimeError once closed."""
        return self._pipeline.get() if self._pipeline is not None else None

    def pack(self, arrays):
        if self._labels is None:
            return (self._inputs(arrays),)
        return self._inputs(arrays), self._labels(arrays)

    def __iter__(self):
        while True:
            yield self.pack(self.pipeline.next())

    def stats(self) -> dict:
        """Where the time went: rows and bytes served, time Keras waited, time spent gathering."""
        return dict(self.pipeline.stats())

    def close(self) -> None:
        if self._pipeline is not None:
            self._pipeline.close()


def _tf_dataset(feed: BatchFeed):
    import tensorflow as tf

    specs = [tf.TensorSpec((None, *shape), tf.as_dtype(dtype)) for dtype, shape in feed.columns]
    signature = feed.pack(specs)
    size = feed.batch_size

    def split(*pulled):
        rows = tf.shape(tf.nest.flatten(pulled)[0], out_type=tf.int64)[0]
        steps = (rows + size - 1) // size
        return tf.data.Dataset.range(steps).map(
            lambda i: tf.nest.map_structure(lambda t: t[i * size:(i + 1) * size], pulled)
        )

    dataset = tf.data.Dataset.from_generator(lambda: iter(feed), output_signature=signature)
    return dataset.flat_map(split).prefetch(2 * feed.batches_per_pull)


def _generator(feed: BatchFeed):
    return iter(feed)


_ADAPTERS = {"tensorflow": _tf_dataset}


def batches_per_pull(batch_bytes: int) -> int:
    """How many batches the active backend's adapter takes from the core at once."""
    if keras.backend.backend() != "tensorflow":
        return 1
    return max(1, min(TF_BATCHES_PER_PULL, TF_PULL_BYTES // max(1, batch_bytes)))


def keras_input(feed: BatchFeed):
    """What to pass to Keras's fit/evaluate as `x` for the active backend."""
    return _ADAPTERS.get(keras.backend.backend(), _generator)(feed)


def lockstep_weights(worker_rows: list[int], local_batch: int, step: int) -> tuple[int, float]:
    """(real rows across all workers at `step` of an epoch, the weight of each real row).

    In synchronous data parallelism every worker must feed `local_batch` rows each
    step, so a worker out of rows pads. Keras averages the loss over all rows fed
    (`sum_over_batch_size`); weighting real rows by global_batch / real_rows and pads
    by 0 makes that average exactly the mean over the real rows, as one worker would.
    """
    real = sum(min(local_batch, max(0, rows - step * local_batch)) for rows in worker_rows)
    return real, (local_batch * len(worker_rows)) / real


class LockstepFeed:
    """One worker's share of synchronous data-parallel steps: (x, y, sample_weight) batches.

    Every worker yields exactly `steps_per_epoch` batches of `local_batch` rows per
    epoch: its own rows once (from the C++ pipeline), then zero rows of weight 0.
    `steps_per_epoch` is set by the worker with the most rows, so nobody waits in an
    all-reduce for a batch that never comes and no row is dropped.
    """

    def __init__(self, feed: BatchFeed, *, rank: int, worker_rows: list[int]):
        self.feed = feed
        self.local_batch = feed.batch_size
        self.worker_rows = list(worker_rows)
        self.rows = worker_rows[rank]
        self.steps_per_epoch = max(math.ceil(r / self.local_batch) for r in worker_rows)
        self.own_steps = math.ceil(self.rows / self.local_batch)
        self.real_rows_served = 0
        self._weights = [self._step_weights(step) for step in range(self.steps_per_epoch)]
        self._zeros = [np.zeros((self.local_batch, *shape), dtype) for dtype, shape in feed.columns]

    def _step_weights(self, step: int) -> np.ndarray:
        own = min(self.local_batch, max(0, self.rows - step * self.local_batch))
        _, weight = lockstep_weights(self.worker_rows, self.local_batch, step)
        weights = np.zeros(self.local_batch, np.float32)
        weights[:own] = weight
        return weights

    def _padded(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        short = self.local_batch - len(arrays[0])
        if short == 0:
            return arrays
        return [np.concatenate([a, z[:short]]) for a, z in zip(arrays, self._zeros, strict=True)]

    def __iter__(self):
        while True:
            for step in range(self.steps_per_epoch):
                if step < self.own_steps:
                    arrays = self.feed.pipeline.next()
                    self.real_rows_served += len(arrays[0])
                    arrays = self._padded(arrays)
                else:
                    arrays = self._zeros
                yield (*self.feed.pack(arrays), self._weights[step])

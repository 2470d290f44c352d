"""Core batches -> what `Model.fit` takes for the active backend, in the model's own structure.

Keras reads its input once and never restarts it (it peeks two batches of a
generator for shapes and chains them back), so a feed is endless and `fit` is
given `steps_per_epoch` from the core's plan (buckets included): each epoch is exactly one pass.

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
import threading

import keras
import numpy as np

from keras_spark import _core, sequences
from keras_spark.device_prefetch import DeviceWait, stage_on_device
from keras_spark.kinds import kind_of, pipeline_options
from keras_spark.shutdown import NativeHandle, raise_if_interrupted
from keras_spark.spark.extract import CachedData
from keras_spark.weights import class_weight_table, class_weights_of

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


class FeedClosedError(RuntimeError):
    """The feed's fit or evaluate has finished: its cache is gone, it serves no more batches."""


class BatchFeed:
    """(x, y) or (x, y, sample_weight) batches of a cached DataFrame from the C++ pipeline.

    Two ways to read it, both safe to use beside Keras's own loop:
    - `iter(feed)`: one endless stream, epoch after epoch (Keras reads a generator once);
    - `feed.one_epoch()`: exactly one pass over every row from a reader of its own, so a
      finite `tf.data.Dataset` can be iterated again and again (by Keras each epoch, by
      MLflow's autolog for a digest) without taking rows from anyone else.

    Example:
        feed = BatchFeed(model, cached, batch_size=32, shuffle=True, seed=7)
        model.fit(keras_input(feed), steps_per_epoch=feed.steps_per_epoch, epochs=3)
    """

    def __init__(self, model, cached: CachedData, *, batch_size: int, shuffle: bool, seed: int,
                 num_parallel_calls: int | None = None, first_epoch: int = 0, batches_per_pull: int = 1,
                 num_threads: int | None = None, class_weight: dict | None = None, fixed_steps: int | None = None,
                 sparse_row_entries: int | None = None):
        cycle = default_parallelism(num_parallel_calls, max(1, len(cached.partitions)))
        # Gathering is memory-bound; by default the model's step keeps the other half of the cores.
        threads = num_threads or max(1, min(cycle, (os.cpu_count() or 2) // 2))
        self.batch_size = int(batch_size)
        self._kinds = [kind_of(b) for b in cached.bindings]
        # A kind whose pulls cannot be cut into batches by slicing (sparse) is pulled one batch at a time.
        self.batches_per_pull = int(batches_per_pull) if all(k.slices_pulls for k in self._kinds) else 1
        self._cached = cached
        self._options = (bool(shuffle), int(seed), cycle, threads, 2 * threads + 2)
        # `sparse_row_entries`: sparse batches laid out by row, this many entries a row (data-parallel JAX).
        self._sparse_row_entries = int(sparse_row_entries or 0)
        self._next_epoch = int(first_epoch)  # the epoch the next one-epoch reader serves
        self._lock = threading.Lock()
        self._readers: set = set()
        self._closed_stats: list[dict] = []
        self._closed = False
        # No rows (a data-parallel worker given no validation ids): nothing to read, only pads.
        self._pipeline = None
        self.rows = cached.rows
        self._plan(sequences.row_groups(cached, self.batch_size * self.batches_per_pull))
        # `fixed_steps`: every sequence batch padded to this many steps (data-parallel JAX ranks feed one shape).
        self._shapes = (sequences.StepLadder(cached.bindings, np.array([fixed_steps]), self.batch_size) if fixed_steps
                        else sequences.StepLadder.for_cache(cached, self.batch_size,
                                                            self.batch_size * self.batches_per_pull))
        self.columns = cached.column_specs()
        names = [b.keras_name for b in cached.bindings]
        self._inputs = _packer(model.input, [names.index(t.name) for t in model.inputs])
        self.structure = (model.input,)
        self._labels = None
        if any(b.role == "label" for b in cached.bindings):
            self._labels = _packer(model.output, [names.index(n) for n in model.output_names])
            self.structure = (model.input, model.output)
        roles = [b.role for b in cached.bindings]
        self._weight_index = roles.index("weight") if "weight" in roles else None
        self._class_weights = class_weight_table(class_weight) if class_weight else None
        self.weighted = self._weight_index is not None or self._class_weights is not None
        self.device_wait = DeviceWait()  # filled by device_prefetch when batches are staged on an accelerator

    def _plan(self, groups: list[int]) -> None:
        """Steps and pulls of one pass: each group (all rows, or a bucket's) is cut into pulls of its own.

        Full pulls come first; each group's part-filled pull comes at the pass's end, in group order.
        """
        size, pull = self.batch_size, self.batch_size * self.batches_per_pull
        self.steps_per_epoch = sum(math.ceil(rows / size) for rows in groups)
        self.pulls_per_epoch = sum(math.ceil(rows / pull) for rows in groups)
        self._full_steps = sum(rows // pull for rows in groups) * self.batches_per_pull
        self._tail = [min(size, rest - start) for rest in (rows % pull for rows in groups)
                      for start in range(0, rest, size)]

    def rows_at_step(self, step: int) -> int:
        """Rows in step `step` (0-based) of a pass (0 past its end)."""
        if step < self._full_steps:
            return self.batch_size
        rest = step - self._full_steps
        return self._tail[rest] if rest < len(self._tail) else 0

    # -- readers ---------------------------------------------------------------------
    def _open(self, first_epoch: int) -> NativeHandle:
        shuffle, seed, cycle, threads, prefetch = self._options
        cached = self._cached
        pipeline = _core.Pipeline(
            cached.chunk_files, cached.column_specs(), cached.partitions,
            batch_size=self.batch_size * self.batches_per_pull, shuffle=shuffle, seed=seed, cycle_length=cycle,
            num_threads=threads, prefetch=prefetch, first_epoch=int(first_epoch), **pipeline_options(cached.bindings),
            **sequences.bucketing_options(cached, self.batch_size * self.batches_per_pull),
            sparse_row_entries=self._sparse_row_entries,
        )
        # Closed with this feed or at exit, even when the fit using it never returns.
        return NativeHandle(self, pipeline)

    def _check_open(self) -> None:
        if self._closed:
            raise FeedClosedError(
                "keras-spark: this training data belongs to a fit() or evaluate() that has finished, and its "
                "cache is removed; iterate it while that call runs (from a callback), or call fit again"
            )

    @property
    def bindings(self) -> list:
        """The columns this feed serves, in the core's order (kinds.schema.ColumnBinding)."""
        return self._cached.bindings

    @property
    def pipeline(self):
        """The endless stream's pipeline (opened on first use; None when there are no rows)."""
        with self._lock:
            self._check_open()
            if self._pipeline is None and self.rows:
                self._pipeline = self._open(self._next_epoch)
            return self._pipeline.get() if self._pipeline is not None else None

    def _next(self, reader: NativeHandle):
        raise_if_interrupted()  # a Ctrl-C that Keras swallowed (see shutdown.py)
        try:
            arrays = reader.get().next()
            return self._shapes([k.finish(b, a) for k, b, a in zip(self._kinds, self._cached.bindings, arrays,
                                                                   strict=True)])
        except RuntimeError:
            self._check_open()  # closed beside us: say so plainly
            raise

    def next_arrays(self) -> list:
        """The endless stream's next pull, as the core's list of column arrays."""
        if self.pipeline is None:
            raise RuntimeError("internal: a feed with no rows has no batches")
        return self._next(self._pipeline)

    def __iter__(self):
        if self.pipeline is None:
            return
        while True:
            yield self.pack(self.next_arrays())

    def one_epoch(self):
        """Exactly one pass over every row, from a reader of its own (the next epoch's order)."""
        with self._lock:
            self._check_open()
            epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
            reader = self._open(epoch) if self.rows else None
            self._readers.add(reader)
        try:
            for _ in range(self.pulls_per_epoch):
                yield self.pack(self._next(reader))
        finally:
            self._retire(reader)

    def _retire(self, reader) -> None:
        with self._lock:
            if reader not in self._readers:
                return
            self._readers.discard(reader)
        if reader is not None:
            self._closed_stats.append(self._stats_of(reader))
            reader.close()

    # -- batches ---------------------------------------------------------------------
    def row_count(self, arrays: list) -> int:
        """The rows of a pull (the core's list of column arrays)."""
        return self._kinds[0].row_count(arrays[0])

    def rows_at(self, arrays: list, index: np.ndarray) -> list:
        """The pull's rows at `index` (repeats allowed), each column cut by its kind."""
        return [k.rows_at(a, index) for k, a in zip(self._kinds, arrays, strict=True)]

    def pack(self, arrays):
        arrays = [k.to_backend(a) for k, a in zip(self._kinds, arrays, strict=True)]
        if self._labels is None:
            return (self._inputs(arrays),)
        packed = (self._inputs(arrays), self._labels(arrays))
        if not self.weighted:
            return packed
        return (*packed, self._weights(arrays, packed[1]))

    def _weights(self, arrays, labels):
        if self._weight_index is not None:
            return arrays[self._weight_index].reshape(-1)
        return class_weights_of(labels, self._class_weights)

    def signature(self):
        """The structure of one pulled batch as `tf.TensorSpec`s (TensorFlow backend)."""
        import tensorflow as tf

        specs = [k.tensor_spec(b, column) for k, b, column in zip(self._kinds, self._cached.bindings, self.columns,
                                                                   strict=True)]
        x_y = (self._inputs(specs),) if self._labels is None else (self._inputs(specs), self._labels(specs))
        if not self.weighted:
            return x_y
        return (*x_y, tf.TensorSpec((None,), tf.as_dtype(keras.config.floatx())))

    def stats(self) -> dict:
        """Where the time went: rows and bytes served, time Keras waited, time spent gathering."""
        with self._lock:
            live = [r for r in (self._pipeline, *self._readers) if r is not None]
            every = self._closed_stats + [self._stats_of(r) for r in live]
        # A fit that trains no epoch (resumed from a finished run's checkpoint) opens no reader: zeros.
        total: dict = dict.fromkeys(("rows", "bytes", "batches", "real_steps", "padded_steps", "threads"), 0)
        total.update(consumer_wait_s=0.0, gather_s=0.0)
        for stats in every:
            for key, value in stats.items():
                total[key] = max(total.get(key, 0), value) if key == "threads" else total.get(key, 0) + value
        total["padded_steps"] = total.get("padded_steps", 0) + self._shapes.extra_steps
        total["distinct_shapes"] = len(self._shapes.shapes)
        # On an accelerator, the step's wait for data on the device; on CPU, its wait for the core.
        total["device_wait_s"] = self.device_wait.seconds if self.device_wait.on_device else \
            total.get("consumer_wait_s", 0.0)
        return total

    @staticmethod
    def _stats_of(reader: NativeHandle) -> dict:
        try:
            return dict(reader.get().stats())
        except RuntimeError:  # closed already: its figures were taken when it closed
            return {}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._pipeline is not None:
                self._closed_stats.append(self._stats_of(self._pipeline))
            readers = [r for r in (self._pipeline, *self._readers) if r is not None]
        for reader in readers:  # a reader closed beside its consumer raises FeedClosedError there
            reader.close()
        with self._lock:
            self._pipeline = None
        for reader in list(self._readers):
            self._retire(reader)


def _tf_dataset(feed: BatchFeed, endless: bool = False):
    import tensorflow as tf

    size = feed.batch_size

    def split(*pulled):
        rows = tf.shape(tf.nest.flatten(pulled)[0], out_type=tf.int64)[0]
        steps = (rows + size - 1) // size
        return tf.data.Dataset.range(steps).map(
            lambda i: tf.nest.map_structure(lambda t: t[i * size:(i + 1) * size], pulled)
        )

    # Finite, one epoch an iteration, each from its own reader: Keras starts a new iterator
    # each epoch (the cardinality is known), and whoever else iterates it (MLflow's autolog
    # hashes every element before fit) gets a whole pass of its own instead of spinning forever.
    # With a user's own steps_per_epoch, steps run on across passes (as with dataset.repeat()).
    source = (lambda: iter(feed)) if endless else feed.one_epoch
    dataset = tf.data.Dataset.from_generator(source, output_signature=feed.signature())
    if feed.batches_per_pull > 1:
        dataset = dataset.flat_map(split)
    dataset = dataset.prefetch(2 * feed.batches_per_pull)
    if endless:
        return dataset
    return dataset.apply(tf.data.experimental.assert_cardinality(feed.steps_per_epoch))


def _generator(feed: BatchFeed, endless: bool = False):
    return iter(feed)  # Keras reads a generator once: it is endless either way


_ADAPTERS = {"tensorflow": _tf_dataset}


def batches_per_pull(batch_bytes: int) -> int:
    """How many batches the active backend's adapter takes from the core at once."""
    if keras.backend.backend() != "tensorflow":
        return 1
    return max(1, min(TF_BATCHES_PER_PULL, TF_PULL_BYTES // max(1, batch_bytes)))


def keras_input(feed: BatchFeed, endless: bool = False):
    """What to pass to Keras's fit/evaluate as `x` for the active backend.

    `endless`: the caller sets its own steps per epoch, so epochs need not follow passes.
    """
    batches = _ADAPTERS.get(keras.backend.backend(), _generator)(feed, endless)
    if not all(kind_of(b).staged_on_device for b in feed.bindings):
        return batches  # e.g. string tensors live on the host (kinds/: ColumnKind.staged_on_device)
    return stage_on_device(batches, feed.device_wait)


def lockstep_weights(plans: list[list[int]], local_batch: int, step: int) -> tuple[int, float]:
    """(real rows across all workers at `step` of an epoch, the weight of each real row).

    `plans[k]` holds worker k's real rows in each step of its pass (`BatchFeed.rows_at_step`;
    a worker past its own steps has none). In synchronous data parallelism every worker must
    feed `local_batch` rows each step, so a worker out of rows pads. Keras averages the loss
    over all rows fed (`sum_over_batch_size`); weighting real rows by global_batch / real_rows
    and pads by 0 makes that average exactly the mean over the real rows, as one worker would.
    """
    real = sum(plan[step] for plan in plans if step < len(plan))
    return real, (local_batch * len(plans)) / real


class LockstepFeed:
    """One worker's share of synchronous data-parallel steps: (x, y, sample_weight) batches.

    Every worker yields exactly `steps_per_epoch` batches of `local_batch` rows per epoch:
    its own rows once (from the C++ pipeline, in its plan's steps: buckets included), then
    pad rows of weight 0. `steps_per_epoch` is set by the worker with the most steps, so
    nobody waits in an all-reduce for a batch that never comes and no row is dropped.
    Pad rows repeat real rows (the batch's own, else the last batch served here or by
    `fallback`), as torch's DistributedSampler pads: a row of zeros can be no input at all
    (a fully masked sequence averages to NaN, and NaN times weight 0 is still NaN).

    `plans`: every worker's `feed.rows_at_step` for each step of its pass (gathered by the
    training engine), this worker's at `rank`. `fallback`: the training feed, whose last batch
    pads a validation feed that has no rows on this worker.
    """

    def __init__(self, feed: BatchFeed, *, rank: int, plans: list[list[int]], fallback: LockstepFeed | None = None):
        self.feed = feed
        self.local_batch = feed.batch_size
        self.plans = [list(p) for p in plans]
        self.rows = sum(self.plans[rank])
        self.steps_per_epoch = max(len(p) for p in self.plans)
        self.own_steps = len(self.plans[rank])
        self.real_rows_served = 0
        self.last_batch: list | None = None
        self._fallback = fallback
        self._weights = [self._step_weights(rank, step) for step in range(self.steps_per_epoch)]

    def real_rows_at(self, step: int) -> int:
        """Real rows of all workers in `step` of an epoch (pads excluded)."""
        return lockstep_weights(self.plans, self.local_batch, step)[0]

    def _step_weights(self, rank: int, step: int) -> np.ndarray:
        plan = self.plans[rank]
        own = plan[step] if step < len(plan) else 0
        _, weight = lockstep_weights(self.plans, self.local_batch, step)
        # Pads weigh -0.0: nothing in the loss, and told apart from a real row of weight 0 by the metrics.
        weights = np.full(self.local_batch, -0.0, np.float32)
        weights[:own] = weight
        return weights

    def _padded(self, arrays: list) -> list:
        """The batch's rows, then its rows again until it holds `local_batch`."""
        rows = self.feed.row_count(arrays)
        if rows == self.local_batch:
            return arrays
        return self.feed.rows_at(arrays, np.arange(self.local_batch) % rows)

    def _pads_only(self) -> list:
        source = self.last_batch if self.last_batch is not None else getattr(self._fallback, "last_batch", None)
        if source is None:
            raise RuntimeError("internal: a data-parallel worker has no row to pad a step with")
        return self.feed.rows_at(source, np.zeros(self.local_batch, np.int64))

    def __iter__(self):
        while True:
            for step in range(self.steps_per_epoch):
                if step < self.own_steps:
                    arrays = self.feed.next_arrays()
                    self.real_rows_served += self.feed.row_count(arrays)
                    arrays = self.last_batch = self._padded(arrays)
                else:
                    arrays = self._pads_only()
                x, y, *row_weights = self.feed.pack(arrays)
                # The row's own weight (column or class_weight) times the lockstep weight
                # that makes the loss a mean over real rows; pads weigh 0 either way.
                weights = self._weights[step] * row_weights[0] if row_weights else self._weights[step]
                yield x, y, weights

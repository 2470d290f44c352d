"""Core batches -> what `Model.fit` takes, in the model's own input and output structure.

Keras reads a generator once and never restarts it (it peeks two batches for
shapes and chains them back), so the feed is endless and `fit` is given
`steps_per_epoch` from the known row count: each epoch is exactly one pass. One
generator serves all three backends: Keras's own adapters turn it into a
tf.data.Dataset, a JAX iterator or a torch DataLoader.
"""

from __future__ import annotations

import os

import keras

from keras_spark import _core
from keras_spark.spark.extract import CachedData


def default_parallelism(num_parallel_calls: int | None, partitions: int) -> int:
    """Partitions open at once: the user's figure, else one per core (as tf.data's AUTOTUNE)."""
    wanted = num_parallel_calls if num_parallel_calls and num_parallel_calls > 0 else (os.cpu_count() or 1)
    return max(1, min(wanted, partitions))


class BatchFeed:
    """Endless (x, y) batches of a cached DataFrame from the C++ pipeline.

    Example:
        feed = BatchFeed(model, cached, batch_size=32, shuffle=True, seed=7)
        model.fit(iter(feed), steps_per_epoch=feed.steps_per_epoch, epochs=3)
    """

    def __init__(self, model, cached: CachedData, *, batch_size: int, shuffle: bool, seed: int,
                 num_parallel_calls: int | None = None, first_epoch: int = 0, prefetch: int | None = None):
        cycle = default_parallelism(num_parallel_calls, len(cached.partitions))
        threads = max(1, min(cycle, os.cpu_count() or 1))
        self.pipeline = _core.Pipeline(
            cached.chunk_files, cached.column_specs(), cached.partitions, int(batch_size), bool(shuffle),
            int(seed), cycle, threads, prefetch or 2 * threads + 2, int(first_epoch),
        )
        self.steps_per_epoch = self.pipeline.steps_per_epoch
        self.rows = cached.rows
        roles = [b.role for b in cached.bindings]
        names = [b.keras_name for b in cached.bindings]
        self._input_positions = [names.index(t.name) for t in model.inputs]
        self._inputs_struct = model._inputs_struct
        self._label_positions = [i for i, role in enumerate(roles) if role == "label"]
        if self._label_positions:
            self._label_positions = [names.index(n) for n in model.output_names]
        self._outputs_struct = model._outputs_struct

    def _pack(self, arrays):
        # Tuples, not lists: tf.data reads a list as one tensor to stack.
        x = keras.tree.pack_sequence_as(self._inputs_struct, [arrays[i] for i in self._input_positions])
        if not self._label_positions:
            return (keras.tree.lists_to_tuples(x),)
        y = keras.tree.pack_sequence_as(self._outputs_struct, [arrays[i] for i in self._label_positions])
        return keras.tree.lists_to_tuples(x), keras.tree.lists_to_tuples(y)

    def __iter__(self):
        while True:
            yield self._pack(self.pipeline.next())

    def stats(self) -> dict:
        """Where the time went: rows and bytes served, time Keras waited, time spent gathering."""
        return dict(self.pipeline.stats())

    def close(self) -> None:
        self.pipeline.close()

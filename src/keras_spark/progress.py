"""Rows Keras actually trained on: the steps it completed times the rows each step held.

The feed's own counters say how many rows were read into the prefetch queues, which
run ahead of training (tf.data prefetches past an epoch's end). The steps Keras
completes are exact, and so is the plan: every epoch is one pass over the rows, cut
into batches, so the rows of step k of an epoch are known without looking at data.
"""

from __future__ import annotations

from collections.abc import Callable

import keras


class RowsTrained(keras.callbacks.Callback):
    """Counts completed training steps and turns them into rows through the feed's plan.

    `rows_at_step(k)` is the number of rows in step k of a pass over the data and
    `steps_per_pass` the steps of one pass; Keras epochs may be shorter or longer than a
    pass (a user's `steps_per_epoch`), as the feed runs on endlessly across them.

    Example:
        counter = RowsTrained.for_batches(rows=1000, batch_size=32)
        model.fit(..., callbacks=[counter]);  counter.rows  # == 1000 * epochs
    """

    def __init__(self, rows_at_step: Callable[[int], int], steps_per_pass: int):
        super().__init__()
        self._rows_at_step = rows_at_step
        self._steps_per_pass = max(1, int(steps_per_pass))
        self._rows_per_pass = sum(rows_at_step(k) for k in range(self._steps_per_pass))
        self._finished_epochs_steps = 0
        self._epoch_steps = 0

    @classmethod
    def for_batches(cls, rows: int, batch_size: int) -> RowsTrained:
        """A pass of `rows` rows in batches of `batch_size`, the last one short."""
        steps = -(-rows // batch_size)
        return cls(lambda k: min(batch_size, rows - k * batch_size), steps)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._epoch_steps = int(batch) + 1  # with steps_per_execution > 1, `batch` is the last step run

    def on_epoch_end(self, epoch, logs=None):
        self._finished_epochs_steps += self._epoch_steps
        self._epoch_steps = 0

    @property
    def steps(self) -> int:
        """Training steps completed, across epochs (a partial last epoch included)."""
        return self._finished_epochs_steps + self._epoch_steps

    @property
    def rows(self) -> int:
        """Rows in the steps completed."""
        passes, rest = divmod(self.steps, self._steps_per_pass)
        return passes * self._rows_per_pass + sum(self._rows_at_step(k) for k in range(rest))


def with_callback(callbacks, callback: keras.callbacks.Callback, model) -> list | keras.callbacks.CallbackList:
    """The user's `callbacks` argument of fit with one more callback of ours."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callback.set_model(model)
        callbacks.callbacks.append(callback)
        return callbacks
    return [*(callbacks or []), callback]

"""Checkpoints of a fit on the driver: resume from the last good one, commit one after every epoch.

The core's shuffle order for an epoch is a function of (seed, epoch) alone (`BatchPlanner::start_epoch`
in src/cpp/pipeline.cc), so a run resumed at epoch e with the first run's seed is served every later
epoch in the order the first run would have been: resuming at an epoch's boundary is exact.
"""

from __future__ import annotations

import dataclasses
import time

import keras

from keras_spark.checkpoints.options import Checkpoint
from keras_spark.checkpoints.record import (
    RECORD_FILE,
    STATE_FILE,
    CheckpointRecord,
    check_fingerprint,
    model_fingerprint,
    restore,
    snapshot,
)
from keras_spark.checkpoints.store import CheckpointStore


def _plain_value(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def fit_fingerprint(model, cached, arguments: dict) -> dict:
    """Which model, which data (bound columns, rows, partition ids) and which fit arguments a run is."""
    columns = [f"{b.column} {b.spark_type} -> {b.role} {b.keras_name}" for b in cached.bindings]
    data = {"columns": columns, "rows": int(cached.rows), "partitions": len(cached.partitions)}
    return {"model": model_fingerprint(model), "data": data,
            "fit": {k: _plain_fit_argument(v) for k, v in sorted(arguments.items())}}


def _plain_fit_argument(value):
    if dataclasses.is_dataclass(value):
        return _plain_fit_argument(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain_fit_argument(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain_fit_argument(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


@dataclasses.dataclass
class ResumePoint:
    """Where a resumed fit starts: the next epoch, the feed's seed, the History of the epochs done."""

    epoch: int
    shuffle_seed: int
    interleave: int
    history: dict[str, list]
    checkpoint: str


class DriverCheckpoints:
    """The checkpoints of one `fit` on the driver (`fit(df, checkpoint=...)`).

    Example:
        checkpoints = DriverCheckpoints(Checkpoint("s3://bucket/run1"))
        seed, interleave, first_epoch = checkpoints.start(model, cached, seed, 4, 0, {"batch_size": 32})
        history = checkpoints.complete(model.fit(..., callbacks=[checkpoints.callback()]))
    """

    def __init__(self, checkpoint):
        self.options = Checkpoint.of(checkpoint)
        self.store = CheckpointStore(self.options.location, keep=self.options.keep,
                                     storage_options=self.options.storage_options,
                                     retries=self.options.retries, backoff_s=self.options.backoff_s)
        self.resume_s = 0.0
        self.resumed_from: str | None = None
        self._history: dict[str, list] = {}
        self._epochs_before = 0
        self._fingerprint: dict = {}
        self._seed = self._interleave = 0
        self._set_backend_rng = None  # set by a resume; called right before the first step

    def start(self, model, cached, shuffle_seed: int, interleave: int, initial_epoch: int,
              arguments: dict) -> tuple[int, int, int]:
        """(shuffle seed, partitions interleaved, initial epoch) for this fit: the checkpoint's when there
        is one (`model` restored), so that the resumed epochs are served in the first run's order.

        `arguments`: the fit arguments a resumed run must share with the first (its fingerprint's "fit").
        """
        self._fingerprint = fit_fingerprint(model, cached, arguments)
        point = self.resume(model, self._fingerprint)
        if point is None:
            self._seed, self._interleave = shuffle_seed, interleave
            return shuffle_seed, interleave, initial_epoch
        if initial_epoch not in (0, point.epoch):
            raise ValueError(f"initial_epoch={initial_epoch}, but the checkpoint {self.options.location}/"
                             f"{point.checkpoint} resumes at epoch {point.epoch}; leave initial_epoch out")
        self._seed, self._interleave = point.shuffle_seed, point.interleave
        return point.shuffle_seed, point.interleave, point.epoch

    def resume(self, model, fingerprint: dict) -> ResumePoint | None:
        """Restore `model` from the last good checkpoint (its fingerprint checked); None when there is none."""
        started = time.perf_counter()
        stored = self.store.latest()
        if stored is None:
            return None
        check_fingerprint(stored.manifest["fingerprint"], fingerprint, f"{self.options.location}/{stored.name}")
        record = CheckpointRecord.from_json(stored.files[RECORD_FILE])
        self._set_backend_rng = restore(model, record.variables, stored.files[STATE_FILE])
        self.resume_s = time.perf_counter() - started
        self.resumed_from = stored.name
        self._history = {k: list(v) for k, v in record.history.items()}
        self._epochs_before = record.epoch
        return ResumePoint(record.epoch, record.shuffle_seed, record.interleave, self._history, stored.name)

    def callback(self) -> keras.callbacks.Callback:
        """A Keras callback that commits a checkpoint at the end of every epoch (after `start`)."""
        return _CommitEveryEpoch(self)

    def commit(self, model, epoch: int, logs: dict | None) -> str:
        """Commit `model`'s state after epoch `epoch` (0-based) with its logs added to the History so far."""
        for key, value in (logs or {}).items():
            self._history.setdefault(key, []).append(_plain_value(value))
        index, state = snapshot(model)
        record = CheckpointRecord(epoch=epoch + 1, step=0, history=self._history, shuffle_seed=int(self._seed),
                                  interleave=int(self._interleave), variables=index)
        return self.store.commit({STATE_FILE: state, RECORD_FILE: record.to_json()}, epoch=epoch + 1, step=0,
                                 fingerprint=self._fingerprint, extra={"world_size": 1, "versions": _versions()})

    def complete(self, history):
        """Keras's History of this fit, with the epochs done before the resume put back in front."""
        if self._epochs_before and history is not None:
            for key, values in self._history.items():
                history.history[key] = values[:]
            history.epoch = list(range(self._epochs_before)) + list(getattr(history, "epoch", []))
        return history

    def stats(self) -> dict:
        """Figures for `model.data_stats`: checkpoint seconds, commits, bytes, resume seconds and source."""
        return {"checkpoint_s": self.store.stats["commit_s"], "checkpoints_written": self.store.stats["commits"],
                "checkpoint_bytes": self.store.stats["bytes_written"], "resume_s": self.resume_s,
                "resumed_from": self.resumed_from, "steps_replayed": 0}


class _CommitEveryEpoch(keras.callbacks.Callback):
    def __init__(self, checkpoints: DriverCheckpoints):
        super().__init__()
        self._checkpoints = checkpoints

    def on_train_batch_begin(self, batch, logs=None):
        # After Keras's set-up (its data loader draws from torch's RNG), as in the run that never stopped.
        set_backend_rng, self._checkpoints._set_backend_rng = self._checkpoints._set_backend_rng, None
        if set_backend_rng is not None:
            set_backend_rng()

    def on_epoch_end(self, epoch, logs=None):
        self._checkpoints.commit(self.model, epoch, logs)


def _versions() -> dict:
    import numpy
    import pyarrow

    import keras_spark

    return {"keras_spark": getattr(keras_spark, "__version__", "unknown"), "keras": keras.__version__,
            "backend": keras.backend.backend(), "numpy": numpy.__version__, "pyarrow": pyarrow.__version__}

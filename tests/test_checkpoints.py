"""fit(df, checkpoint=...) on the driver: a run stopped at a step and resumed ends as the run never stopped.

The checkpoint code runs on the driver after the Spark pass, whatever the session: these tests run on
the classic session. Exactness depends on the backend (its RNG and optimizer state), so the resume
tests run under every backend; the refusals and the store's rules are the backend's bystanders.
"""

import os

import keras
import numpy as np
import pytest
from builders import numeric_frame

import keras_spark
from keras_spark.checkpoints.store import CheckpointStore
from keras_spark.errors import CheckpointMismatchError
from keras_spark.models import KerasSparkModel

pytestmark = pytest.mark.session_independent

EPOCHS, BATCH = 4, 32


def _model(seed: int, units: int = 8) -> KerasSparkModel:
    """A model with a dropout layer, so that its seed generator's state is part of what must resume."""
    keras.utils.set_random_seed(seed)  # the weights' initial values and, through `random`, fit's shuffle seed
    x = keras.Input(shape=(4,), name="x")
    h = keras.layers.Dense(units, activation="relu")(x)
    h = keras.layers.Dropout(0.25)(h)
    model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(h))
    model.compile(keras.optimizers.Adam(0.01), "mse")
    return model


class _StopAt(keras.callbacks.Callback):
    """Stops the run inside epoch `epoch`, after step `step`, as a killed driver would."""

    def __init__(self, epoch: int, step: int):
        super().__init__()
        self.epoch, self.step, self._current = epoch, step, -1

    def on_epoch_begin(self, epoch, logs=None):
        self._current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._current == self.epoch and batch == self.step:
            raise KeyboardInterrupt(f"stopped in epoch {self.epoch} after step {self.step}")


@pytest.fixture(scope="module")
def frame(spark):
    return numeric_frame(spark, 256, 4)


@pytest.fixture(scope="module")
def uninterrupted(frame):
    """The run that was never stopped (and had no checkpoint): its weights and History."""
    model = _model(seed=7)
    history = model.fit(frame, batch_size=BATCH, epochs=EPOCHS, verbose=0)
    return model.get_weights(), history.history


def _same_weights(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise: every backend is deterministic on CPU here


@pytest.mark.parametrize("store", ["local", "s3"])
def test_a_run_stopped_mid_epoch_resumes_to_the_uninterrupted_weights_and_history(frame, uninterrupted, store,
                                                                                  tmp_path, request):
    location = str(tmp_path / "run") if store == "local" else request.getfixturevalue("s3_bucket") + "/run"
    with pytest.raises(KeyboardInterrupt):
        _model(seed=7).fit(frame, batch_size=BATCH, epochs=EPOCHS, verbose=0, checkpoint=location,
                           callbacks=[_StopAt(epoch=2, step=3)])
    assert [c.split("-e")[1] for c in CheckpointStore(location).committed()] == ["1-s0", "2-s0"]

    resumed = _model(seed=99)  # other initial weights, another dropout seed, another `random` for the shuffle
    history = resumed.fit(frame, batch_size=BATCH, epochs=EPOCHS, verbose=0, checkpoint=location)

    weights, expected_history = uninterrupted
    _same_weights(resumed.get_weights(), weights)
    assert history.epoch == list(range(EPOCHS))
    assert history.history == expected_history  # every epoch once: 2 from the checkpoint, 2 trained now
    stats = resumed.data_stats
    assert stats["resumed_from"].endswith("-e2-s0") and stats["checkpoints_written"] == 2
    assert stats["resume_s"] > 0 and stats["checkpoint_s"] > 0 and stats["steps_replayed"] == 0


def test_a_finished_run_given_its_location_again_trains_nothing(frame, uninterrupted, tmp_path):
    location = str(tmp_path / "run")
    _model(seed=7).fit(frame, batch_size=BATCH, epochs=EPOCHS, verbose=0, checkpoint=location)
    again = _model(seed=5)
    history = again.fit(frame, batch_size=BATCH, epochs=EPOCHS, verbose=0, checkpoint=location)
    _same_weights(again.get_weights(), uninterrupted[0])
    assert history.history == uninterrupted[1] and again.data_stats["checkpoints_written"] == 0


@pytest.mark.backend_independent
def test_every_epoch_commits_and_the_last_k_are_kept(frame, tmp_path):
    location = str(tmp_path / "run")
    model = _model(seed=7)
    model.fit(frame, batch_size=BATCH, epochs=EPOCHS, verbose=0,
              checkpoint=keras_spark.Checkpoint(location, keep=2))
    assert model.data_stats["checkpoints_written"] == EPOCHS and model.data_stats["resumed_from"] is None
    assert [name.split("-e")[1] for name in sorted(os.listdir(location))] == ["3-s0", "4-s0"]


@pytest.mark.backend_independent
def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(frame, uninterrupted, tmp_path):
    location = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        _model(seed=7).fit(frame, batch_size=BATCH, epochs=EPOCHS, verbose=0, checkpoint=location,
                           callbacks=[_StopAt(epoch=3, step=0)])
    latest = CheckpointStore(location).committed()[-1]
    state = os.path.join(location, latest, "state.bin")
    with open(state, "r+b") as f:  # one flipped byte in the latest's weights
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))

    resumed = _model(seed=99)
    with pytest.warns(RuntimeWarning, match=f"skipping checkpoint .*{latest}.*checksum"):
        history = resumed.fit(frame, batch_size=BATCH, epochs=EPOCHS, verbose=0, checkpoint=location)
    assert resumed.data_stats["resumed_from"].endswith("-e2-s0")  # the one before the corrupt e3
    _same_weights(resumed.get_weights(), uninterrupted[0])
    assert history.history == uninterrupted[1]


@pytest.mark.backend_independent
@pytest.mark.parametrize("change, named", [
    ("another model", "model.layers[1]"),
    ("other data", "data.rows: checkpoint 256, this fit 192"),
    ("another batch size", "fit.batch_size: checkpoint 32, this fit 16"),
])
def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(spark, frame, tmp_path, change, named):
    location = str(tmp_path / "run")
    _model(seed=7).fit(frame, batch_size=BATCH, epochs=1, verbose=0, checkpoint=location)
    model, df, batch = _model(seed=7), frame, BATCH
    if change == "another model":
        model = _model(seed=7, units=16)
    elif change == "other data":
        df = numeric_frame(spark, 192, 4)
    else:
        batch = 16
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(CheckpointMismatchError, match="belongs to another run") as refused:
        model.fit(df, batch_size=batch, epochs=2, verbose=0, checkpoint=location)
    assert named in str(refused.value) and location in str(refused.value)
    _same_weights(model.get_weights(), before)  # never silently loaded, not even in part
    assert len(CheckpointStore(location).committed()) == 1


@pytest.mark.backend_independent
def test_checkpoint_is_refused_where_resume_could_not_be_exact(frame, tmp_path):
    with pytest.raises(ValueError, match="steps_per_epoch=3 is not supported with checkpoint"):
        _model(seed=7).fit(frame, epochs=1, steps_per_epoch=3, checkpoint=str(tmp_path))
    with pytest.raises(ValueError, match="checkpoint is not yet supported with num_workers > 1"):
        _model(seed=7).fit(frame, epochs=1, num_workers=2, checkpoint=str(tmp_path))
    with pytest.raises(TypeError, match="checkpoint"):
        _model(seed=7).fit(np.zeros((4, 4)), np.zeros((4, 1)), checkpoint=str(tmp_path), verbose=0)
    assert not os.listdir(tmp_path)


@pytest.mark.backend_independent
def test_a_resume_on_a_driver_with_other_cores_keeps_the_first_runs_order(frame, uninterrupted, tmp_path,
                                                                           monkeypatch):
    """Partition ids read at once default to one per core and decide the order: the checkpoint keeps them."""
    assert (os.cpu_count() or 1) > 1, "the uninterrupted run must interleave more than one id for this check"
    location = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        _model(seed=7).fit(frame, batch_size=BATCH, epochs=EPOCHS, verbose=0, checkpoint=location,
                           callbacks=[_StopAt(epoch=1, step=0)])
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # a smaller driver: one id at a time by default
    resumed = _model(seed=99)
    history = resumed.fit(frame, batch_size=BATCH, epochs=EPOCHS, verbose=0, checkpoint=location)
    _same_weights(resumed.get_weights(), uninterrupted[0])
    assert history.history == uninterrupted[1]


@pytest.mark.backend_independent
def test_keras_estimator_commits_to_its_checkpoint_location_and_resumes_there(frame, tmp_path):
    from builders import regression_model

    from keras_spark.ml import KerasEstimator

    location = str(tmp_path / "stage")
    stage = KerasEstimator(model=regression_model(), epochs=2, batchSize=BATCH, checkpointLocation=location)
    first = stage.fit(frame)
    assert [n.split("-e")[1] for n in CheckpointStore(location).committed()] == ["1-s0", "2-s0"]
    longer = stage.copy({stage.epochs: 3}).fit(frame)  # the same run, one epoch more: epochs 0 and 1 not retrained
    assert longer.history["loss"][:2] == first.history["loss"] and len(longer.history["loss"]) == 3
    assert [n.split("-e")[1] for n in CheckpointStore(location).committed()] == ["1-s0", "2-s0", "3-s0"]


@pytest.mark.backend_independent
def test_a_store_that_goes_down_fails_fit_naming_the_store_and_the_last_good_checkpoint(frame, tmp_path,
                                                                                          monkeypatch):
    import pyarrow.fs as pafs

    from keras_spark.checkpoints import store
    from keras_spark.errors import CheckpointStoreError

    location = str(tmp_path / "run")

    class GoesDown:  # a local file system whose writes fail after the first commit's three files
        writes = 0

        def open_output_stream(self, path):
            GoesDown.writes += 1
            if GoesDown.writes > 3:
                raise OSError("AWS Error NETWORK_CONNECTION: connection reset by peer")
            return pafs.LocalFileSystem().open_output_stream(path)

        def __getattr__(self, name):
            return getattr(pafs.LocalFileSystem(), name)

    monkeypatch.setattr(store, "open_file_system", lambda where, options: (GoesDown(), location))
    checkpoint = keras_spark.Checkpoint(location, retries=2, backoff_s=0.001)
    with pytest.raises(CheckpointStoreError, match="connection reset") as failed:
        _model(seed=7).fit(frame, batch_size=BATCH, epochs=EPOCHS, verbose=0, checkpoint=checkpoint)
    monkeypatch.undo()
    (good,) = CheckpointStore(location).committed()
    assert f"{location}/{good}" in str(failed.value) and "failed to write" in str(failed.value)
    assert "2 times" in str(failed.value)
    assert good.endswith("-e1-s0")

"""fit on a Spark DataFrame: exact epochs, shuffling, the progress bar, validation and callbacks."""

import math

import keras
import numpy as np
import pytest
from builders import numeric_frame, regression_model, to_numpy
from keras import ops

from keras_spark.binding import bind_inputs
from keras_spark.feed import BatchFeed
from keras_spark.models import KerasSparkModel
from keras_spark.spark.extract import extract


def _id_model():
    ids = keras.Input(shape=(1,), name="id", dtype="int64")
    return KerasSparkModel(ids, ids)


def _epochs_of_ids(spark, df, epochs, *, shuffle=True, batch_size=64, parallel=3, seed=11):
    model = _id_model()
    cached = extract(df, bind_inputs(model, df.schema), "partition_id")
    try:
        feed = BatchFeed(model, cached, batch_size=batch_size, shuffle=shuffle, seed=seed, num_parallel_calls=parallel)
        batches = iter(feed)
        out = []
        for _ in range(epochs):
            sizes, ids = [], []
            for _ in range(feed.steps_per_epoch):
                (x,) = next(batches)
                sizes.append(len(x))
                ids.append(x.reshape(-1))
            out.append((sizes, np.concatenate(ids)))
        feed.close()
        return out
    finally:
        cached.remove()


def test_every_row_is_served_exactly_once_per_epoch(spark):
    df = numeric_frame(spark, rows=5003, partitions=7)
    for sizes, ids in _epochs_of_ids(spark, df, epochs=3):
        assert sizes[:-1] == [64] * (len(sizes) - 1) and sizes[-1] == 5003 - 64 * (len(sizes) - 1)
        assert np.array_equal(np.sort(ids), np.arange(5003))


@pytest.mark.session_independent
def test_shuffle_changes_order_between_epochs_and_is_reproducible(spark):
    df = numeric_frame(spark, rows=3000, partitions=5)
    first = _epochs_of_ids(spark, df, epochs=2, seed=5)
    again = _epochs_of_ids(spark, df, epochs=2, seed=5)
    other = _epochs_of_ids(spark, df, epochs=1, seed=6)
    assert not np.array_equal(first[0][1], first[1][1])
    assert np.array_equal(first[0][1], again[0][1]) and np.array_equal(first[1][1], again[1][1])
    assert not np.array_equal(first[0][1], other[0][1])
    # Shuffled across interleaved partitions: the first batch mixes several partition ids.
    assert len(set(first[0][1][:64] % 5)) >= 3


@pytest.mark.session_independent
def test_without_shuffle_partitions_are_interleaved_in_order(spark):
    df = numeric_frame(spark, rows=100, partitions=4)
    [(_, ids)] = _epochs_of_ids(spark, df, epochs=1, shuffle=False, parallel=2, batch_size=10)
    # Partitions 0 and 1 are open first and alternate row by row, each in stored order.
    assert list(ids[:6] % 4) == [0, 1, 0, 1, 0, 1]
    assert np.array_equal(np.sort(ids), np.arange(100))


class RowCounter(keras.layers.Layer):
    """Counts the rows and sums the ids the model trains on."""

    def build(self, shape):
        self.rows = self.add_weight(shape=(), initializer="zeros", trainable=False, dtype="float64")
        self.id_sum = self.add_weight(shape=(), initializer="zeros", trainable=False, dtype="float64")

    def call(self, ids, training=None):
        if training:
            self.rows.assign_add(ops.cast(ops.shape(ids)[0], "float64"))
            self.id_sum.assign_add(ops.sum(ops.cast(ids, "float64")))
        return ops.cast(ids, "float32")


def test_fit_trains_on_every_row_once_per_epoch_and_shows_true_steps(spark):
    df = numeric_frame(spark, rows=2050, partitions=3)
    ids = keras.Input(shape=(1,), name="id", dtype="int64")
    x = keras.Input(shape=(4,), name="x")
    counter = RowCounter()
    out = keras.layers.Dense(1, name="y")(keras.layers.Concatenate()([x, counter(ids) * 0.0]))
    model = KerasSparkModel([ids, x], out)
    model.compile("sgd", "mse")
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(("steps", self.params["steps"]))

        def on_epoch_end(self, epoch, logs=None):
            seen.append((float(ops.convert_to_numpy(counter.rows)), float(ops.convert_to_numpy(counter.id_sum))))

    history = model.fit(df, batch_size=100, epochs=3, callbacks=[Record()], verbose=0)
    assert seen[0] == ("steps", math.ceil(2050 / 100))
    per_epoch_sum = 2050 * 2049 / 2
    assert seen[1:] == [(2050.0 * e, per_epoch_sum * e) for e in (1, 2, 3)]
    assert len(history.history["loss"]) == 3


@pytest.mark.session_independent
def test_validation_data_and_callbacks_work_as_with_numpy(spark, tmp_path):
    train, val = numeric_frame(spark, 3000, 4, seed=1), numeric_frame(spark, 500, 2, seed=2)
    model = regression_model()
    checkpoint = tmp_path / "best.keras"
    history = model.fit(
        train, batch_size=64, epochs=4, validation_data=val, verbose=0,
        callbacks=[
            keras.callbacks.ModelCheckpoint(str(checkpoint), monitor="val_loss", save_best_only=True),
            keras.callbacks.EarlyStopping(monitor="loss", patience=1, min_delta=1e9),
        ],
    )
    # EarlyStopping with an impossible min_delta stops after patience + 1 epochs.
    assert len(history.history["loss"]) == 2
    assert set(history.history) == {"loss", "val_loss"}
    assert checkpoint.exists()
    # Validation loss is Keras's own evaluate on the same rows in NumPy.
    x, y = to_numpy(val, "x", "y")
    expected = model.evaluate(x, y, batch_size=64, verbose=0)
    assert model.evaluate(val, batch_size=64, verbose=0) == pytest.approx(expected, rel=1e-5)


@pytest.mark.session_independent
def test_backup_and_restore_resumes_after_interruption(spark, tmp_path):
    df = numeric_frame(spark, 600, 2)
    model = regression_model()

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(df, batch_size=50, epochs=4, callbacks=[backup, Interrupt()], verbose=0)
    history = model.fit(df, batch_size=50, epochs=4, callbacks=[backup], verbose=0)
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only


@pytest.mark.session_independent
def test_loss_goes_down(spark):
    df = numeric_frame(spark, 4000, 4)
    model = regression_model()
    history = model.fit(df, batch_size=32, epochs=5, verbose=0)
    assert history.history["loss"][-1] < 0.2 * history.history["loss"][0]


@pytest.mark.session_independent
def test_tensorflow_adapter_serves_the_same_batches_as_single_pulls(spark):
    from keras_spark.feed import _tf_dataset

    df = numeric_frame(spark, rows=1000, partitions=3)
    model = _id_model()
    cached = extract(df, bind_inputs(model, df.schema), "partition_id")
    try:
        single = BatchFeed(model, cached, batch_size=48, shuffle=True, seed=3, num_parallel_calls=2)
        pulled = BatchFeed(model, cached, batch_size=48, shuffle=True, seed=3, num_parallel_calls=2,
                           batches_per_pull=5)
        plain, dataset = iter(single), _tf_dataset(pulled)
        for _ in range(2):  # each iteration of the dataset is the next epoch, partial batch last
            sliced = list(dataset)
            assert len(sliced) == single.steps_per_epoch
            for (b,) in sliced:
                (a,) = next(plain)
                np.testing.assert_array_equal(a, b.numpy())
        single.close()
        pulled.close()
    finally:
        cached.remove()

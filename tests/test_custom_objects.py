"""Models users write: custom objects on the executors, a weight column, class_weight, plain-Keras files.

The custom layer, loss and metric are defined here, in a test module the Spark
executors cannot import, so they can only get there by value. Run this file under
each backend (KERAS_BACKEND=tensorflow, jax, torch); `num_workers=2` runs under JAX
in a subprocess (custom_objects_distributed_run.py).
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
from builders import Shift, numeric_frame, only_in_the_jax_pass, regression_model, to_numpy
from pyspark.sql import functions as F

from keras_spark.binding import bind_inputs, bind_labels
from keras_spark.errors import BindingError, DataError, ModelPackageError
from keras_spark.feed import BatchFeed, keras_input
from keras_spark.models import KerasSparkModel, load_model
from keras_spark.spark.extract import extract

HERE = Path(__file__).parent


@keras.saving.register_keras_serializable(package="test_custom_objects")
class Scale(keras.layers.Layer):
    """Multiplies its input by a learned scalar (starts at `initial`)."""

    def __init__(self, initial=1.0, **kwargs):
        super().__init__(**kwargs)
        self.initial = initial

    def build(self, input_shape):
        self.factor = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.initial), name="factor")

    def call(self, x):
        return keras.ops.multiply(x, self.factor)

    def get_config(self):
        return dict(super().get_config(), initial=self.initial)


@keras.saving.register_keras_serializable(package="test_custom_objects")
def halved_mse(y_true, y_pred):
    return 0.5 * keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)


@keras.saving.register_keras_serializable(package="test_custom_objects")
class WorstError(keras.metrics.Metric):
    """The largest absolute error seen."""

    def __init__(self, name="worst_error", **kwargs):
        super().__init__(name=name, **kwargs)
        self.worst = self.add_variable(shape=(), initializer="zeros", name="worst")

    def update_state(self, y_true, y_pred, sample_weight=None):
        error = keras.ops.max(keras.ops.abs(keras.ops.reshape(y_true, (-1,)) - keras.ops.reshape(y_pred, (-1,))))
        self.worst.assign(keras.ops.maximum(self.worst, keras.ops.cast(error, self.worst.dtype)))

    def result(self):
        return keras.ops.convert_to_tensor(self.worst)


def custom_model(features: int = 4, optimizer="adam") -> KerasSparkModel:
    x = keras.Input(shape=(features,), name="x")
    h = Scale(2.0)(keras.layers.Dense(8, activation="relu")(x))
    model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(h))
    model.compile(optimizer=optimizer, loss=halved_mse, metrics=[WorstError()])
    return model


def _scored(df, model, **kwargs) -> np.ndarray:
    rows = model.predict(df, **kwargs).orderBy("id").select("model_output.y").collect()
    return np.array([r[0] for r in rows], dtype="float32")


# -- custom objects on the executors --------------------------------------------------
def test_registered_custom_layer_loss_and_metric_score_on_the_executors(spark):
    df = numeric_frame(spark, 300, 3)
    model = custom_model()
    model.fit(df, batch_size=50, epochs=1, verbose=0)
    (x,) = to_numpy(df, "x")
    expected = model.predict(x, verbose=0).reshape(-1)
    np.testing.assert_allclose(_scored(df, model), expected, rtol=1e-5, atol=1e-6)


def test_unregistered_layer_travels_when_passed_as_custom_objects(spark):
    df = numeric_frame(spark, 100, 2)
    x = keras.Input(shape=(4,), name="x")
    model = KerasSparkModel(x, Shift(3.0, name="y")(keras.layers.Dense(1)(x)))
    (features,) = to_numpy(df, "x")
    expected = model.predict(features, verbose=0).reshape(-1)
    np.testing.assert_allclose(_scored(df, model, custom_objects={"Shift": Shift}), expected, rtol=1e-5, atol=1e-6)


_LOCK = threading.Lock()


def unshippable_activation(x):
    with _LOCK:  # a lock cannot be pickled, so neither can this function (it is shipped by value)
        return x


def test_an_unpicklable_custom_object_is_refused_on_the_driver_naming_it(classic_spark):
    spark = classic_spark  # counts jobs through the SparkContext
    df = numeric_frame(spark, 20, 2)
    model = regression_model()
    spark.sparkContext.setJobGroup("unpicklable", "no job may start")
    try:
        with pytest.raises(ModelPackageError, match="custom object 'my_activation'.*cannot be shipped"):
            model.predict(df, custom_objects={"my_activation": unshippable_activation})
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert spark.sparkContext.statusTracker().getJobIdsForGroup("unpicklable") == []


@pytest.fixture
def compiled_helper_module(tmp_path, monkeypatch):
    """A module of the user's that cloudpickle cannot carry: a compiled extension beside the script (faked:
    a module whose file is a .so outside site-packages), with a function the model's code uses."""
    import importlib.machinery
    import types

    module = types.ModuleType("fastops")
    module.__file__ = str(tmp_path / f"fastops{importlib.machinery.EXTENSION_SUFFIXES[0]}")

    def fast_relu(x):
        return keras.ops.relu(x)

    fast_relu.__module__ = "fastops"
    module.fast_relu = fast_relu
    monkeypatch.setitem(sys.modules, "fastops", module)
    return module


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_a_users_module_that_cannot_travel_is_named_with_how_to_ship_it_before_any_spark_job(
        classic_spark, compiled_helper_module):
    spark = classic_spark  # counts jobs through the SparkContext
    df = numeric_frame(spark, 20, 2)
    fastops = compiled_helper_module

    def my_activation(x):  # shipped by value; what it calls is in the compiled module
        return fastops.fast_relu(x)

    spark.sparkContext.setJobGroup("compiled-module", "no job may start")
    try:
        with pytest.raises(ModelPackageError, match=r"module 'fastops' \(.*fastops.*\), a compiled extension.*"
                                                    r"addPyFile\('.*fastops.*'\).*addArtifacts\(<file>, pyfile=True\)"):
            regression_model().predict(df, custom_objects={"my_activation": my_activation})
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert spark.sparkContext.statusTracker().getJobIdsForGroup("compiled-module") == []


def test_the_package_carries_only_the_registered_objects_the_model_names():
    from keras_spark.model_package import pack_model, read_package

    parts = read_package(pack_model(custom_model()))
    assert parts["custom_object_names"] == [
        "test_custom_objects>Scale", "test_custom_objects>WorstError", "test_custom_objects>halved_mse"]
    assert read_package(pack_model(regression_model()))["custom_object_names"] == []


# -- a weight column -------------------------------------------------------------------
def _weighted_frame(spark, rows=400):
    return numeric_frame(spark, rows, 4).withColumn("w", (F.col("id") % 3).cast("double"))


@pytest.mark.session_independent
def test_evaluate_with_a_weight_column_matches_keras_on_numpy(spark):
    df = _weighted_frame(spark)
    model = regression_model()
    x, y, w = to_numpy(df, "x", "y", "w")
    expected = model.evaluate(x, y, sample_weight=w, batch_size=64, verbose=0)
    assert model.evaluate(df, sample_weight="w", batch_size=64, verbose=0) == pytest.approx(expected, rel=1e-5)
    assert model.evaluate(df, batch_size=64, verbose=0) != pytest.approx(expected, rel=1e-3)


def _sgd_model(lr):
    keras.utils.set_random_seed(7)
    model = regression_model()
    model.compile(keras.optimizers.SGD(lr), "mse")
    return model


@pytest.mark.session_independent
def test_fit_with_a_weight_of_two_equals_twice_the_learning_rate(spark):
    df = numeric_frame(spark, 300, 3).withColumn("two", F.lit(2.0))
    weighted, faster = _sgd_model(0.01), _sgd_model(0.02)
    weighted.fit(df, sample_weight="two", batch_size=32, epochs=2, shuffle=False, verbose=0)
    faster.fit(df, batch_size=32, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(weighted.get_weights(), faster.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.session_independent
def test_rows_of_weight_zero_do_not_train(spark):
    df = numeric_frame(spark, 200, 2).withColumn("zero", F.lit(0).cast("int"))
    model = _sgd_model(0.1)
    before = model.get_weights()
    model.fit(df, sample_weight="zero", batch_size=32, epochs=1, verbose=0)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value, message", [
    ("-1.0", r"sample_weight column 'w' has the weight -1.0 at row \d+ of partition id 1"),
    ("'NaN'", r"column 'w' has a NaN or infinite value \(nan\) at row \d+ of partition id 1"),
])
def test_negative_and_nan_weights_are_refused_naming_column_and_row(spark, value, message):
    df = numeric_frame(spark, 100, 2).withColumn(
        "w", F.when(F.col("id") == 41, F.expr(f"CAST({value} AS DOUBLE)")).otherwise(F.lit(1.0)))
    with pytest.raises(DataError, match=message):
        regression_model().fit(df, sample_weight="w", batch_size=32, verbose=0)


@pytest.mark.session_independent
def test_null_weights_are_refused_naming_the_column(spark):
    df = numeric_frame(spark, 100, 2).withColumn("w", F.when(F.col("id") != 7, F.lit(1.0)))
    with pytest.raises(DataError, match="column 'w' has a null"):
        regression_model().evaluate(df, sample_weight="w", verbose=0)


@pytest.mark.session_independent
def test_weights_must_be_a_numeric_column_name(spark):
    df = numeric_frame(spark, 20, 2)
    with pytest.raises(TypeError, match="sample_weight is the name of a column"):
        regression_model().fit(df, sample_weight=np.ones(20), verbose=0)
    with pytest.raises(BindingError, match="sample_weight column 'x' has type array<float>"):
        regression_model().fit(df, sample_weight="x", verbose=0)
    with pytest.raises(BindingError, match="sample_weight='nope'"):
        regression_model().fit(df, sample_weight="nope", verbose=0)


# -- class_weight ----------------------------------------------------------------------
def _classifier():
    keras.utils.set_random_seed(11)
    x = keras.Input(shape=(4,), name="x")
    model = KerasSparkModel(x, keras.layers.Dense(3, activation="softmax", name="label")(x))
    model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
    return model


@pytest.mark.session_independent
def test_class_weight_trains_as_keras_does_on_numpy(spark):
    df = numeric_frame(spark, 120, 1).withColumn("label", (F.col("id") % 3).cast("int"))
    class_weight = {0: 1.0, 1: 5.0, 2: 0.2}
    on_spark, on_numpy = _classifier(), _classifier()
    on_spark.fit(df, batch_size=120, epochs=3, shuffle=False, class_weight=class_weight, verbose=0)
    x, label = to_numpy(df, "x", "label")
    on_numpy.fit(x, label, batch_size=120, epochs=3, shuffle=False, class_weight=class_weight, verbose=0)
    for a, b in zip(on_spark.get_weights(), on_numpy.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    unweighted = _classifier()
    unweighted.fit(df, batch_size=120, epochs=3, shuffle=False, verbose=0)
    assert not np.allclose(unweighted.get_weights()[0], on_spark.get_weights()[0])


@pytest.mark.session_independent
def test_class_weight_with_a_weight_column_is_refused_as_with_numpy(spark):
    df = numeric_frame(spark, 30, 1).withColumn("label", F.lit(1)).withColumn("w", F.lit(1.0))
    with pytest.raises(ValueError, match="sample_weight or class_weight, not both"):
        _classifier().fit(df, sample_weight="w", class_weight={1: 2.0}, verbose=0)


# -- files that outlive keras-spark ------------------------------------------------------
_PLAIN_KERAS_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.modules["keras_spark"] = None  # not importable here, whatever sys.path or an installed package holds
    import keras, numpy as np
    try:
        import keras_spark  # noqa: F401
        raise AssertionError("keras_spark is importable")
    except ImportError:
        pass
    model = keras.saving.load_model(sys.argv[1])
    x = np.load(sys.argv[2])
    print("RESULT " + json.dumps({"type": type(model).__name__, "is_keras_model": isinstance(model, keras.Model),
                                   "scores": model.predict(x, verbose=0).reshape(-1).tolist(),
                                   "keras_spark_imported": any(m.startswith("keras_spark.") for m in sys.modules)}))
""")


@pytest.mark.session_independent
def test_a_saved_model_loads_in_plain_keras_without_keras_spark(spark, tmp_path):
    df = numeric_frame(spark, 200, 2)
    model = regression_model()
    model.fit(df, batch_size=50, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    (x,) = to_numpy(df, "x")
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "plain_keras.py"
    script.write_text(_PLAIN_KERAS_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # keras_spark cannot even be found
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "model.keras"), str(tmp_path / "x.npy")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["type"] == "Functional" and result["is_keras_model"] and not result["keras_spark_imported"]
    np.testing.assert_allclose(result["scores"], model.predict(x, verbose=0).reshape(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.session_independent
def test_keras_spark_load_model_keeps_weights_compile_config_and_optimizer_state(spark, tmp_path):
    df = numeric_frame(spark, 200, 2)
    model = custom_model()
    model.fit(df, batch_size=50, epochs=2, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    assert isinstance(loaded, KerasSparkModel)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(loaded.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) == 8
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    assert loaded.get_compile_config() == model.get_compile_config()
    history = loaded.fit(df, batch_size=50, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "worst_error"}


# -- no hang in the feed ---------------------------------------------------------------
def _in_time(fn, seconds=60):
    """fn's result, or its exception; fails the test instead of hanging when fn blocks."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result(timeout=seconds)


def _take(data, n):
    it = iter(data)
    return [next(it) for _ in range(n)]


@pytest.mark.session_independent
def test_the_training_input_serves_batches_before_beside_and_after_keras_then_errors_once_closed(spark):
    df = numeric_frame(spark, 500, 3)
    model = regression_model()
    cached = extract(df, bind_inputs(model, df.schema) + bind_labels(model, df.schema), "partition_id")
    feed = BatchFeed(model, cached, batch_size=64, shuffle=True, seed=1)
    try:
        data = keras_input(feed)
        assert len(_in_time(lambda: _take(data, 3))) == 3  # before Keras's loop
        if keras.backend.backend() == "tensorflow":  # a dataset: each full iteration is one epoch, and ends
            assert _in_time(lambda: sum(1 for _ in data)) == feed.steps_per_epoch

        class Beside(keras.callbacks.Callback):
            taken = []

            def on_epoch_end(self, epoch, logs=None):
                self.taken.append(len(_in_time(lambda: _take(data, 2))))

        model.fit(data, steps_per_epoch=feed.steps_per_epoch, epochs=2, callbacks=[Beside()], verbose=0)
        assert Beside.taken == [2, 2]
        assert len(_in_time(lambda: _take(data, 2))) == 2  # after
    finally:
        feed.close()
        cached.remove()
    with pytest.raises(Exception, match="belongs to a fit\\(\\) or evaluate\\(\\) that has finished"):
        _in_time(lambda: _take(data, 1))


@only_in_the_jax_pass
def test_distributed_fit_with_custom_objects_and_weights():
    env = dict(os.environ, KERAS_BACKEND="jax")
    done = subprocess.run([sys.executable, str(HERE / "custom_objects_distributed_run.py")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["history_keys"] == ["loss", "worst_error"]
    assert result["loss"][-1] < result["loss"][0]
    assert result["max_score_diff"] < 1e-4  # the trained model scores the same on the executors
    # A layer whose base (and the base's helper function) is in a module only the driver can import.
    assert result["executors_find_mylayers"] is False
    assert result["base_module_score_diff"] < 1e-4
    assert len(result["base_module_loss"]) == 2 and all(np.isfinite(result["base_module_loss"]))

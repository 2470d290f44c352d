"""A KerasSparkModel saves to .keras: plain Keras loads it as a functional model, keras_spark as a KerasSparkModel."""

import keras
import numpy as np
import pytest
from builders import numeric_frame, regression_model, to_numpy

from keras_spark.models import KerasSparkModel, load_model


@pytest.mark.session_independent
def test_save_and_load_round_trip(spark, tmp_path):
    df = numeric_frame(spark, 500, 2)
    model = regression_model()
    model.fit(df, batch_size=50, epochs=2, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = load_model(path)
    assert isinstance(loaded, KerasSparkModel)
    (x,) = to_numpy(df, "x")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    # The loaded model keeps its Spark powers.
    loaded.fit(df, batch_size=50, epochs=1, verbose=0)
    assert loaded.predict(df).count() == 500


def test_numpy_data_behaves_as_keras_model():
    x = keras.Input(shape=(2,), name="x")
    model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(x))
    model.compile("sgd", "mse")
    data = np.random.rand(64, 2).astype("float32")
    history = model.fit(data, data.sum(1), batch_size=16, epochs=2, verbose=0, validation_split=0.25)
    assert set(history.history) == {"loss", "val_loss"}
    assert model.predict(data, verbose=0).shape == (64, 1)
    assert np.isfinite(model.evaluate(data, data.sum(1), verbose=0))


@pytest.mark.session_independent
def test_keras_load_model_gives_a_keras_spark_model_where_keras_spark_is_imported(spark, tmp_path):
    df = numeric_frame(spark, 100, 2)
    model = regression_model()
    model.fit(df, batch_size=50, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded, KerasSparkModel) and type(loaded).__name__ == "KerasSparkModel"
    assert loaded.get_compile_config() == model.get_compile_config()
    assert loaded.predict(df).count() == 100  # the user never has to know about keras_spark.models.load_model


# -- KerasSparkModel as a class: made functionally, it stays subclassable ---------------
class Doubler(KerasSparkModel):
    """A subclassed KerasSparkModel with its own __init__ and call, as a keras.Model subclass is written."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(1)

    def call(self, x):
        return 2.0 * self.dense(x)


class Residual(KerasSparkModel):
    """A subclass that builds its own graph and is made functionally (super().__init__(inputs, outputs))."""

    def __init__(self, **kwargs):
        x = keras.Input(shape=(2,), name="x")
        super().__init__(x, keras.layers.Add(name="y")([x, keras.layers.Dense(2)(x)]), **kwargs)


def test_a_functional_keras_spark_model_leaves_the_class_subclassable():
    bases = KerasSparkModel.__bases__
    x = keras.Input(shape=(2,), name="x")
    functional = KerasSparkModel(x, keras.layers.Dense(1, name="y")(x))
    residual = Residual()  # a subclass made functionally changes only itself
    assert KerasSparkModel.__bases__ == bases == (keras.Model,)
    assert isinstance(functional, KerasSparkModel) and type(functional).__name__ == "KerasSparkModel"
    assert isinstance(residual, Residual) and residual.output_names == ["y"]

    class Later(Doubler):  # defined after the functional ones were built
        pass

    data = np.random.rand(64, 2).astype("float32")
    for model in (Doubler(), Later()):
        model.compile(keras.optimizers.SGD(0.05), "mse")
        history = model.fit(data, data.sum(1), batch_size=16, epochs=3, verbose=0)
        assert history.history["loss"][-1] < history.history["loss"][0]
        assert "Functional" not in [cls.__name__ for cls in type(model).__mro__]
    assert type(Later()).__mro__[1:4] == (Doubler, KerasSparkModel, keras.Model)


def test_keras_spark_model_without_arguments_is_a_subclass_style_model_as_keras_model_is():
    plain, ours = keras.Model(), KerasSparkModel()
    assert type(plain) is keras.Model and type(ours) is KerasSparkModel
    for model in (plain, ours):
        with pytest.raises(NotImplementedError, match="does not have a `call\\(\\)` method"):
            model.call(np.zeros((1, 2), "float32"))

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
    assert type(loaded) is KerasSparkModel
    assert loaded.get_compile_config() == model.get_compile_config()
    assert loaded.predict(df).count() == 100  # the user never has to know about keras_spark.models.load_model

"""Custom objects in a user's `keras.saving.custom_object_scope`: keras-spark adds its own objects to the
user's scope wherever it loads a model (never replaces it), ships the scope's objects to the executors,
and refuses on the driver, before any Spark job, a model whose class the executors could not find.

The layers here are not registered and live in a test module the executors cannot import.
"""

import keras
import numpy as np
import pytest
from builders import numeric_frame, to_numpy

from keras_spark.errors import ModelPackageError
from keras_spark.models import KerasSparkModel, load_model


class Offset(keras.layers.Layer):
    """Adds a constant; not registered."""

    def __init__(self, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.offset = offset

    def call(self, x):
        return x + self.offset

    def get_config(self):
        return dict(super().get_config(), offset=self.offset)


class Twice(keras.layers.Layer):
    """Doubles its input; not registered."""

    def call(self, x):
        return 2.0 * x


def _model() -> KerasSparkModel:
    x = keras.Input(shape=(4,), name="x")
    model = KerasSparkModel(x, Twice(name="y")(Offset(3.0)(keras.layers.Dense(1)(x))))
    model.compile("adam", "mse")
    return model


def _scored(df, model, **kwargs) -> np.ndarray:
    rows = model.predict(df, **kwargs).orderBy("id").select("model_output.y").collect()
    return np.array([r[0] for r in rows], "float32")


def test_a_users_scope_and_keras_sparks_custom_objects_are_merged_in_load_fit_and_predict(spark, tmp_path):
    df = numeric_frame(spark, 100, 2)
    _model().save(tmp_path / "model.keras")
    with keras.saving.custom_object_scope({"Offset": Offset}):
        loaded = load_model(tmp_path / "model.keras", custom_objects={"Twice": Twice})  # needs both
        loaded.fit(df, batch_size=50, epochs=1, verbose=0)
        scored = _scored(df, loaded, custom_objects={"Twice": Twice})  # and the scope's Offset travels
    (x,) = to_numpy(df, "x")
    np.testing.assert_allclose(scored, loaded.predict(x, verbose=0).reshape(-1), rtol=1e-5, atol=1e-6)


def test_predict_inside_a_users_scope_ships_the_scopes_objects(spark):
    df = numeric_frame(spark, 60, 2)
    model = _model()
    with keras.saving.custom_object_scope({"Offset": Offset, "Twice": Twice}):
        scored = _scored(df, model)
    (x,) = to_numpy(df, "x")
    np.testing.assert_allclose(scored, model.predict(x, verbose=0).reshape(-1), rtol=1e-5, atol=1e-6)


def test_a_class_the_executors_cannot_find_is_refused_before_any_spark_job(classic_spark):
    spark = classic_spark  # counts jobs through the SparkContext
    df = numeric_frame(spark, 20, 2)
    spark.sparkContext.setJobGroup("unknown-class", "no job may start")
    try:
        with pytest.raises(ModelPackageError, match=r"class 'Offset'.*custom_objects=\{'Offset': Offset\}.*"
                                                    r"register_keras_serializable"):
            with keras.saving.custom_object_scope({"Twice": Twice}):
                _model().predict(df)
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert spark.sparkContext.statusTracker().getJobIdsForGroup("unknown-class") == []

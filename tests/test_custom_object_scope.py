"""Custom objects in a user's `keras.saving.custom_object_scope`: keras-spark adds its own objects to the
user's scope wherever it loads a model (never replaces it), ships the scope's objects to the executors,
and refuses on the driver, before any Spark job, a model whose class the executors could not find.

The layers here are not registered and live in a test module the executors cannot import.
"""

import keras
import numpy as np
import pytest
from builders import numeric_frame, to_numpy
from pyspark.ml import PipelineModel

from keras_spark.errors import ModelPackageError
from keras_spark.ml import KerasEstimator, KerasModel
from keras_spark.ml.estimator import model_to_keras_bytes
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


# -- the Spark ML stages say the same ---------------------------------------------------------
_STAGE_REFUSAL = (r"classes 'Offset' \(test_custom_object_scope.Offset\), 'Twice' \(test_custom_object_scope.Twice\), "
                  r"which Keras cannot find by name, so the {what} cannot open its model; {how}")


@pytest.mark.session_independent
def test_a_stage_without_custom_objects_names_the_classes_and_the_param_before_any_spark_job(classic_spark):
    spark = classic_spark  # counts jobs through the SparkContext
    df = numeric_frame(spark, 20, 2)
    estimator = KerasEstimator(model=_model(), epochs=1)
    scoring = KerasModel(model_to_keras_bytes(_model(), {"Offset": Offset, "Twice": Twice}))
    how = r"set the stage's customObjects Param \(customObjects=\{'Offset': Offset, 'Twice': Twice\}"
    spark.sparkContext.setJobGroup("stage-unknown-class", "no job may start")
    try:
        with pytest.raises(ModelPackageError, match=_STAGE_REFUSAL.format(what="stage", how=how)):
            estimator.fit(df)
        with pytest.raises(ModelPackageError, match=_STAGE_REFUSAL.format(what="stage", how=how)):
            scoring.transform(df)
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert spark.sparkContext.statusTracker().getJobIdsForGroup("stage-unknown-class") == []


def test_loading_a_saved_stage_whose_classes_are_missing_names_them_and_a_scope_around_load_keeps_them(spark,
                                                                                                     tmp_path):
    stage = KerasModel(model_to_keras_bytes(_model(), {"Offset": Offset, "Twice": Twice}))
    stage.save(str(tmp_path / "stage"))
    PipelineModel(stages=[stage]).save(str(tmp_path / "pipeline"))
    how = r"load it inside keras.saving.custom_object_scope\(\{'Offset': Offset, 'Twice': Twice\}\)"
    for load, path in ((KerasModel.load, "stage"), (PipelineModel.load, "pipeline")):
        with pytest.raises(ModelPackageError, match=_STAGE_REFUSAL.format(what="saved stage", how=how)):
            load(str(tmp_path / path))
    with keras.saving.custom_object_scope({"Offset": Offset, "Twice": Twice}):
        loaded = KerasModel.load(str(tmp_path / "stage"))
    assert loaded.getCustomObjects() == {"Offset": Offset, "Twice": Twice}  # it opens outside the scope too
    assert loaded.getKerasModel().output_names == ["y"]

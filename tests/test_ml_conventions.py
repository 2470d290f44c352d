"""keras_spark.ml stages follow Spark ML's conventions: getX/setX for every Param, a readable
explainParams, Sequential models, an outputCol, custom objects, and one model for transform and save."""

import keras
import numpy as np
import pytest
from builders import Shift, numeric_frame, regression_model
from ml_frames import classifier
from pyspark.ml import Pipeline

from keras_spark.ml import KerasEstimator, KerasModel
from keras_spark.ml.estimator import model_to_keras_bytes


def _example_values() -> dict:
    """A value for each Param, other than its default (a new Param needs one here)."""
    return {
        "kerasModelBytes": model_to_keras_bytes(classifier(width=2)), "inputCols": {"features": "f"},
        "labelCols": {"label": "y"}, "predictionStyle": "regression", "predictionCol": "p", "probabilityCol": "q",
        "rawPredictionCol": "r", "predictBatchSize": 7, "outputCol": "scores", "customObjects": {"Shift": Shift},
        "epochs": 3, "batchSize": 5, "learningRate": 0.25, "partitionCol": "part", "numPartitions": 4,
        "numWorkers": 2, "validationFraction": 0.5, "seed": 9, "verbose": 2, "checkpointLocation": "s3://b/run",
    }


# -- getters and setters ------------------------------------------------------------------
@pytest.mark.backend_independent
@pytest.mark.parametrize("stage_class", [KerasEstimator, KerasModel])
def test_every_param_has_a_getter_and_a_setter_that_round_trip(stage_class):
    stage, values = stage_class(), _example_values()
    assert {p.name for p in stage.params} <= set(values)
    for param in stage.params:
        suffix = param.name[0].upper() + param.name[1:]
        setter, getter = getattr(stage, f"set{suffix}", None), getattr(stage, f"get{suffix}", None)
        assert setter is not None and getter is not None, f"{stage_class.__name__}.{param.name}"
        assert setter(values[param.name]) is stage
        assert getter() == values[param.name], param.name


# -- outputCol ------------------------------------------------------------------------------
def _regression_estimator(**params) -> KerasEstimator:
    return KerasEstimator(model=regression_model(), epochs=1, batchSize=16, **params)


def test_two_keras_stages_in_one_pipeline_each_add_their_output_column(spark):
    df = numeric_frame(spark, 64, 2)
    pipeline = Pipeline(stages=[_regression_estimator(outputCol="first"), _regression_estimator()])
    scored = pipeline.fit(df).transform(df)
    assert {"first", "model_output"} <= set(scored.columns)
    row = scored.select("first.y", "model_output.y").first()
    assert np.isfinite(row[0]) and np.isfinite(row[1])


def test_a_scored_frame_is_scored_again_under_another_output_col(spark):
    df = numeric_frame(spark, 32, 2)
    model = regression_model()
    twice = model.predict(model.predict(df), output_col="again")
    rows = twice.select("model_output.y", "again.y").collect()
    assert len(rows) == 32 and all(r[0] == r[1] for r in rows)


# -- Sequential models --------------------------------------------------------------------
def _sequential(*first) -> keras.Sequential:
    model = keras.Sequential([*first, keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1, name="y")])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    return model


def test_a_sequential_model_trains_and_scores_with_its_own_weights(spark):
    sequential = _sequential(keras.Input((4,), name="x"))
    estimator = KerasEstimator(model=sequential, epochs=1, batchSize=16)
    held = estimator.getKerasModel()
    assert held.output_names == ["y"]
    for a, b in zip(held.get_weights(), sequential.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    df = numeric_frame(spark, 64, 2)
    scored = estimator.fit(df).transform(df).select("model_output.y").collect()
    assert len(scored) == 64 and all(np.isfinite(r[0]) for r in scored)


@pytest.mark.backend_independent
def test_a_sequential_model_without_an_input_shape_is_refused_saying_why():
    with pytest.raises(ValueError, match=r"no input shape yet.*keras.Input\(shape, name=...\)"):
        KerasEstimator(model=_sequential())


# -- explainParams ------------------------------------------------------------------------
@pytest.mark.backend_independent
@pytest.mark.parametrize("make_stage", [lambda m: KerasEstimator(model=m),
                                        lambda m: KerasModel(model_to_keras_bytes(m))], ids=["estimator", "model"])
def test_explain_params_describes_the_model_instead_of_printing_its_bytes(make_stage):
    model = classifier(width=30, output="score")
    explained = make_stage(model).explainParams()
    line = next(x for x in explained.splitlines() if x.startswith("kerasModelBytes:"))
    assert len(explained) < 4000 and "b'PK" not in explained
    assert f"model '{model.name}'" in line and "features float32 (None, 30)" in line
    assert "score float32 (None, 1)" in line and f"{model.count_params():,} parameters" in line


# -- one model for transform and save -------------------------------------------------------
def _scores(stage, df) -> np.ndarray:
    return np.array([r[0] for r in stage.transform(df).orderBy("id").select("model_output.y").collect()])


def test_a_fine_tuned_keras_model_is_what_the_saved_stage_scores(spark, tmp_path):
    df = numeric_frame(spark, 32, 2)
    stage = KerasModel(model_to_keras_bytes(regression_model()))
    before = _scores(stage, df)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    stage.getKerasModel().fit(x, x.sum(1) + 5.0, epochs=3, verbose=0)  # fine-tuned in place
    tuned = _scores(stage, df)
    assert not np.allclose(tuned, before)
    stage.save(str(tmp_path / "stage"))
    np.testing.assert_array_equal(_scores(KerasModel.load(str(tmp_path / "stage")), df), tuned)
    np.testing.assert_array_equal(_scores(stage.copy(), df), tuned)


# -- custom objects -------------------------------------------------------------------------
def _shifted_model() -> keras.Model:
    """A model with the unregistered Shift layer: opening it needs Shift given, by scope or Param."""
    x = keras.Input((4,), name="x")
    model = keras.Model(x, Shift(1.0, name="y")(keras.layers.Dense(1)(x)))
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    return model


def test_custom_objects_param_ships_with_the_stage_through_fit_transform_save_and_load(spark, tmp_path):
    df = numeric_frame(spark, 32, 2)
    fitted = KerasEstimator(model=_shifted_model(), customObjects={"Shift": Shift}, epochs=1, batchSize=16).fit(df)
    scored = _scores(fitted, df)
    fitted.save(str(tmp_path / "stage"))
    loaded = KerasModel.load(str(tmp_path / "stage"))
    assert set(loaded.getCustomObjects()) == {"Shift"}
    np.testing.assert_allclose(_scores(loaded, df), scored, rtol=1e-6)


def test_a_users_custom_object_scope_reaches_fit_and_transform(spark):
    df = numeric_frame(spark, 32, 2)
    with keras.saving.custom_object_scope({"Shift": Shift}):
        fitted = KerasEstimator(model=_shifted_model(), epochs=1, batchSize=16).fit(df)
        scored = _scores(fitted, df)
        assert keras.saving.get_registered_object("Shift") is Shift  # the user's scope is still the active one
    assert len(scored) == 32 and np.isfinite(scored).all()
    np.testing.assert_allclose(_scores(fitted, df), scored, rtol=1e-6)  # the fitted stage keeps what it needs

"""keras_spark.ml: KerasEstimator / KerasModel as pyspark.ml stages, in pipelines, under tuning, saved and loaded."""

from pathlib import Path

import keras
import numpy as np
import pytest
from ml_frames import breast_cancer_frame, classifier, pipeline_stages
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import (
    BinaryClassificationEvaluator,
    MulticlassClassificationEvaluator,
    RegressionEvaluator,
)
from pyspark.ml.linalg import VectorUDT
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder, TrainValidationSplit
from pyspark.sql import functions as F
from pyspark.sql import types as T

from keras_spark.errors import BindingError, DataError
from keras_spark.ml import KerasEstimator, KerasModel
from keras_spark.ml.estimator import model_to_keras_bytes
from keras_spark.spark.session import is_connect


def _estimator(**params) -> KerasEstimator:
    defaults = dict(epochs=2, batchSize=32, labelCols={"score": "label"}, predictionStyle="classification")
    return KerasEstimator(model=classifier(output="score"), **{**defaults, **params})


@pytest.fixture(scope="module")
def cancer(spark):
    return breast_cancer_frame(spark).cache()


@pytest.fixture(scope="module")
def fitted_pipeline(cancer):
    return Pipeline(stages=pipeline_stages(_estimator(epochs=3))).fit(cancer)


# -- a stage in a pipeline -------------------------------------------------------------
def test_pipeline_fits_and_binary_evaluator_reads_its_columns(fitted_pipeline, cancer):
    scored = fitted_pipeline.transform(cancer)
    types = {f.name: f.dataType for f in scored.schema.fields}
    assert isinstance(types["probability"], VectorUDT) and isinstance(types["rawPrediction"], VectorUDT)
    assert types["prediction"] == T.DoubleType()
    assert BinaryClassificationEvaluator(metricName="areaUnderROC").evaluate(scored) > 0.95
    assert MulticlassClassificationEvaluator(metricName="accuracy").evaluate(scored) > 0.85


def test_classification_columns_agree_with_model_output(fitted_pipeline, cancer):
    rows = fitted_pipeline.transform(cancer).select("model_output.score", "probability", "prediction").collect()
    for row in rows:
        assert row["probability"][1] == pytest.approx(row["score"], abs=1e-6)
        assert row["probability"][0] == pytest.approx(1.0 - row["score"], abs=1e-6)
        assert row["prediction"] == float(row["score"] > 0.5)


def test_fit_records_history_and_every_input_column_is_kept(fitted_pipeline, cancer):
    keras_stage = fitted_pipeline.stages[-1]
    assert isinstance(keras_stage, KerasModel)
    assert len(keras_stage.history["loss"]) == 3
    assert set(cancer.columns) <= set(fitted_pipeline.transform(cancer).columns)


def _three_classes(spark, labels):
    """Three classes a linear model separates: x one-hot of the label, labels as Spark ML's doubles."""
    rows = [(float(y), [float(y == 0), float(y == 1), float(y == 2)]) for y in labels]
    return spark.createDataFrame(rows, "label double, x array<float>")


def _softmax_estimator():
    features = keras.Input((3,), name="x")
    model = keras.Model(features, keras.layers.Dense(3, activation="softmax", name="label")(features))
    model.compile(keras.optimizers.Adam(0.1), "sparse_categorical_crossentropy")
    return KerasEstimator(model=model, epochs=20, batchSize=8, predictionStyle="classification")


def test_double_class_ids_train_a_softmax_output(spark):
    df = _three_classes(spark, [i % 3 for i in range(60)])
    scored = _softmax_estimator().fit(df).transform(df)
    assert MulticlassClassificationEvaluator(metricName="accuracy").evaluate(scored) == 1.0


@pytest.mark.parametrize("bad", [1.5, 3.0, -1.0, float("nan"), float("inf")], ids=str)
def test_a_value_that_is_no_class_id_is_refused_not_truncated(spark, bad):
    df = _three_classes(spark, [i % 3 for i in range(12)]).withColumn(
        "label", F.when(F.col("x")[1] == 1.0, F.lit(bad)).otherwise(F.col("label")))
    with pytest.raises(DataError, match=rf"label column 'label' \(double\) .* 3 scores.* has the value {bad}"):
        _softmax_estimator().fit(df)


def test_softmax_output_gives_argmax_prediction_for_multiclass_evaluator(spark):
    features = keras.Input((2,), name="x")
    probabilities = keras.layers.Dense(3, activation="softmax", name="label")(features)
    model = keras.Model(features, probabilities)
    model.compile("adam", "sparse_categorical_crossentropy")
    stage = KerasModel(model_to_keras_bytes(model)).setParams(predictionStyle="classification")
    df = spark.createDataFrame([(float(i % 3), [i / 10.0, 1.0 - i / 10.0]) for i in range(12)],
                               "label double, x array<float>")
    rows = stage.transform(df).select("model_output.label", "probability", "prediction").collect()
    for row in rows:
        assert list(row["probability"]) == pytest.approx(row["label"], abs=1e-6)
        assert row["prediction"] == float(np.argmax(row["label"]))
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(stage.transform(df))
    assert 0.0 <= accuracy <= 1.0


def test_regression_style_feeds_regression_evaluator(spark):
    df = spark.range(200).select(F.col("id"), F.array(F.rand(1).cast("float"), F.rand(2).cast("float")).alias("x"))
    df = df.withColumn("target", F.col("x")[0] + F.col("x")[1])
    features = keras.Input((2,), name="x")
    model = keras.Model(features, keras.layers.Dense(1, name="y")(features))
    model.compile(keras.optimizers.Adam(5e-2), "mse")
    stage = KerasEstimator(model=model, epochs=4, batchSize=16, labelCols={"y": "target"},
                           predictionStyle="regression").fit(df)
    scored = stage.transform(df)
    assert scored.schema["prediction"].dataType == T.DoubleType()
    assert RegressionEvaluator(labelCol="target", metricName="rmse").evaluate(scored) < 0.5
    first = scored.select("model_output.y", "prediction").first()
    assert first["prediction"] == pytest.approx(first["y"])


# -- Params -------------------------------------------------------------------------------
def test_learning_rate_param_replaces_the_compiled_one(cancer):
    model = classifier(width=2)  # compiled with Adam(1e-2)
    start = model.get_weights()
    trained = KerasEstimator(model=model, epochs=1, learningRate=0.0, inputCols={"features": "pair"}).fit(
        cancer.select(F.array("f0", "f1").alias("pair"), "label")).getKerasModel()
    for before, after in zip(start, trained.get_weights(), strict=True):  # a rate of 0 moves nothing
        np.testing.assert_array_equal(before, after)
    assert float(keras.ops.convert_to_numpy(trained.optimizer.learning_rate)) == 0.0


def test_partition_column_is_made_when_unset_and_absent_and_used_when_present(cancer):
    stage_pipeline = Pipeline(stages=pipeline_stages(_estimator(epochs=1, numPartitions=3)))
    assert "partition_id" not in cancer.columns
    made = stage_pipeline.fit(cancer)  # the stage made `partition_id` from a row hash
    assert made.stages[-1].history["loss"]
    with pytest.raises(BindingError, match="partition column 'fold'"):  # present: used as given (a double here)
        Pipeline(stages=pipeline_stages(_estimator(partitionCol="fold"))).fit(
            cancer.withColumn("fold", F.col("fold").cast("double")))


def test_validation_fraction_reports_validation_loss(cancer):
    stage = Pipeline(stages=pipeline_stages(_estimator(epochs=2, validationFraction=0.25))).fit(cancer).stages[-1]
    assert len(stage.history["val_loss"]) == 2


def test_mapping_to_a_missing_column_names_it(cancer):
    with pytest.raises(BindingError, match="'nope'"):
        _estimator(inputCols={"features": "nope"}).fit(cancer)


def test_uncompiled_model_is_refused_at_once():
    features = keras.Input((2,), name="x")
    with pytest.raises(ValueError, match="not compiled"):
        KerasEstimator(model=keras.Model(features, keras.layers.Dense(1)(features)))


# -- tuning -------------------------------------------------------------------------------
def _two_grid_points(estimator):
    # epochs, batchSize and learningRate all move between the two points
    return [{estimator.epochs: 1, estimator.batchSize: 64, estimator.learningRate: 1e-4},
            {estimator.epochs: 2, estimator.batchSize: 32, estimator.learningRate: 3e-2}]


@pytest.mark.backend_independent
def test_cross_validator_picks_the_same_best_model_as_by_hand(cancer):
    estimator = _estimator()
    pipeline = Pipeline(stages=pipeline_stages(estimator))
    grid = _two_grid_points(estimator)
    evaluator = BinaryClassificationEvaluator()
    cv = CrossValidator(estimator=pipeline, estimatorParamMaps=grid, evaluator=evaluator, foldCol="fold",
                        numFolds=2, parallelism=2).fit(cancer)
    by_hand = []
    for params in grid:
        scores = []
        for fold in (0, 1):
            model = pipeline.fit(cancer.filter(F.col("fold") != fold), params)
            scores.append(evaluator.evaluate(model.transform(cancer.filter(F.col("fold") == fold))))
        by_hand.append(float(np.mean(scores)))
    assert cv.avgMetrics == pytest.approx(by_hand, abs=1e-4)
    best = int(np.argmax(by_hand))
    assert best == 1  # a learning rate of 1e-4 for one epoch barely moves the model
    assert isinstance(cv.bestModel.stages[-1], KerasModel)
    assert cv.bestModel.stages[-1].history["loss"] and len(cv.bestModel.stages[-1].history["loss"]) == 2


@pytest.mark.backend_independent
def test_train_validation_split_runs_in_parallel_threads(cancer):
    estimator = _estimator()
    split = TrainValidationSplit(estimator=Pipeline(stages=pipeline_stages(estimator)),
                                 estimatorParamMaps=ParamGridBuilder().addGrid(estimator.epochs, [1, 2]).build(),
                                 evaluator=BinaryClassificationEvaluator(), trainRatio=0.7, parallelism=2,
                                 seed=7).fit(cancer)
    assert len(split.validationMetrics) == 2 and all(m > 0.5 for m in split.validationMetrics)


# -- persistence ----------------------------------------------------------------------------
def _in_a_new_session(spark, work):
    """work(session) in another Spark session, on its own thread.

    Classic: `newSession()` (same JVM, its own session state). Connect: a new server session; on a
    fresh thread it is the active one, which Spark's Connect ML readers load into (the ML models they
    load are cached per server session, so the loading session must be the one that scores).
    """
    import concurrent.futures
    import os

    def run():
        if not is_connect(spark):
            return work(spark.newSession())
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        other = ConnectSession.builder.remote(os.environ["SPARK_REMOTE"]).create()
        try:
            return work(other)
        finally:
            other.stop()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def test_saved_pipeline_scores_the_same_in_a_new_session(spark, fitted_pipeline, cancer, tmp_path):
    saved = str(tmp_path / "pipeline")
    fitted_pipeline.write().overwrite().save(saved)
    before = fitted_pipeline.transform(cancer).select("id", "probability", "prediction").orderBy("id").collect()

    def load_and_score(other):
        loaded = PipelineModel.read().session(other).load(saved)
        scored = loaded.transform(breast_cancer_frame(other)).select("id", "probability", "prediction")
        return [type(s).__name__ for s in loaded.stages], scored.orderBy("id").collect()

    stages, after = _in_a_new_session(spark, load_and_score)
    assert stages == ["VectorAssembler", "StandardScalerModel", "KerasModel"]
    assert [tuple(r) for r in after] == [tuple(r) for r in before]  # exactly, not approximately


def test_saved_stage_holds_a_plain_keras_file_and_its_params(spark, fitted_pipeline, tmp_path):
    saved = str(tmp_path / "stage")
    keras_stage = fitted_pipeline.stages[-1]
    keras_stage.save(saved)
    loaded = KerasModel.load(saved)
    assert loaded.uid == keras_stage.uid and loaded.getPredictionStyle() == "classification"
    assert loaded.getLabelCols() == {"score": "label"}
    for a, b in zip(loaded.getKerasModel().get_weights(), keras_stage.getKerasModel().get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    if not is_connect(spark):  # over Connect the file lies on the server's file system
        import zipfile

        assert "config.json" in zipfile.ZipFile(Path(saved) / "model.keras").namelist()


def test_unfitted_pipeline_with_estimator_round_trips(spark, tmp_path):
    saved = str(tmp_path / "unfitted")
    Pipeline(stages=pipeline_stages(_estimator(epochs=5, learningRate=0.5))).save(saved)
    estimator = Pipeline.load(saved).getStages()[-1]
    assert isinstance(estimator, KerasEstimator)
    assert estimator.getOrDefault(estimator.epochs) == 5 and estimator.getOrDefault(estimator.learningRate) == 0.5
    assert estimator.getKerasModel().output_names == ["score"]

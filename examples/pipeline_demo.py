"""A Spark ML pipeline with a Keras stage, on scikit-learn's bundled breast cancer data set.

    pip install ".[demo]" && python examples/pipeline_demo.py [--epochs 10]

VectorAssembler -> StandardScaler -> KerasEstimator in one pyspark.ml Pipeline; the learning
rate chosen by a 2-fold CrossValidator (BinaryClassificationEvaluator's AUC), the best pipeline
scored on held-out rows, saved, loaded back and scored again (the same AUC).
"""

import argparse
import os
import sys
import tempfile

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

import keras_spark.models  # noqa: E402, F401, I001  (first: Keras imported without the backend's start-up lines)

import keras  # noqa: E402
from pyspark.ml import Pipeline, PipelineModel  # noqa: E402
from pyspark.ml.evaluation import BinaryClassificationEvaluator, MulticlassClassificationEvaluator  # noqa: E402
from pyspark.ml.feature import StandardScaler, VectorAssembler  # noqa: E402
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402

from keras_spark.ml import KerasEstimator  # noqa: E402


def cancer_frame(spark):
    frame = load_breast_cancer(as_frame=True).frame.rename(columns=lambda c: c.replace(" ", "_"))
    return spark.createDataFrame(frame.astype({"target": "float64"}))


def small_classifier(width: int) -> keras.Model:
    features = keras.Input((width,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(features)
    malignant = keras.layers.Dense(1, activation="sigmoid", name="target")(hidden)
    model = keras.Model(features, malignant)
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy", metrics=["accuracy"])
    return model


def main(epochs: int = 10, spark=None):
    """Tune, score, save and reload the pipeline; `spark`: a session to use (kept open), else a local one."""
    keras.utils.set_random_seed(0)
    own_session = spark is None
    if own_session:
        spark = SparkSession.builder.master("local[2]").appName("keras-spark-pipeline-demo") \
            .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
    df = cancer_frame(spark).cache()
    train, test = df.randomSplit([0.8, 0.2], seed=1)
    columns = [c for c in df.columns if c != "target"]

    keras_stage = KerasEstimator(model=small_classifier(len(columns)), epochs=epochs, batchSize=32,
                                 inputCols={"features": "scaled"}, predictionStyle="classification")
    pipeline = Pipeline(stages=[VectorAssembler(inputCols=columns, outputCol="assembled"),
                                StandardScaler(inputCol="assembled", outputCol="scaled", withMean=True),
                                keras_stage])
    auc = BinaryClassificationEvaluator(labelCol="target")
    grid = ParamGridBuilder().addGrid(keras_stage.learningRate, [1e-3, 1e-2]).build()
    cv = CrossValidator(estimator=pipeline, estimatorParamMaps=grid, evaluator=auc, numFolds=2, parallelism=2,
                        seed=1).fit(train)
    for params, metric in zip(grid, cv.avgMetrics, strict=True):
        print(f"learning rate {params[keras_stage.learningRate]:g}: cross-validated AUC {metric:.4f}")

    scored = cv.bestModel.transform(test)
    accuracy = MulticlassClassificationEvaluator(labelCol="target", metricName="accuracy").evaluate(scored)
    print(f"held-out AUC {auc.evaluate(scored):.4f}, accuracy {accuracy:.4f} ({test.count()} rows)")

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "cancer_pipeline")
        cv.bestModel.save(path)
        reloaded = PipelineModel.load(path)
        print(f"reloaded from {path}: held-out AUC {auc.evaluate(reloaded.transform(test)):.4f}")
    scored.select("target", "probability", "prediction").show(5, truncate=False)
    df.unpersist()
    if own_session:
        spark.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of each fit (default 10)")
    main(parser.parse_args().epochs)

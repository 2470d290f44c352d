"""Data and models for the pyspark.ml stage tests: scikit-learn's bundled breast cancer set, 569 rows."""

import keras
import numpy as np
import pandas as pd

FEATURES = [f"f{i}" for i in range(30)]


def breast_cancer_frame(spark):
    """f0..f29 (double), label (double 0/1, Spark ML's convention), fold (0/1, fixed), id."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    frame = pd.DataFrame(data.data, columns=FEATURES)
    frame["label"] = data.target.astype("float64")
    frame["fold"] = (np.arange(len(frame)) % 2).astype("int32")
    frame["id"] = np.arange(len(frame), dtype="int64")
    return spark.createDataFrame(frame)


def classifier(width: int = 30, output: str = "label") -> keras.Model:
    """A small compiled sigmoid classifier: input `features` (width,), output `output`."""
    features = keras.Input((width,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(features)
    score = keras.layers.Dense(1, activation="sigmoid", name=output)(hidden)
    model = keras.Model(features, score)
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    return model


def pipeline_stages(estimator):
    from pyspark.ml.feature import StandardScaler, VectorAssembler

    return [VectorAssembler(inputCols=FEATURES, outputCol="raw_features"),
            StandardScaler(inputCol="raw_features", outputCol="features", withMean=True), estimator]

"""keras-spark as pyspark.ml stages: KerasEstimator (fit) and KerasModel (transform = predict)."""

from keras_spark.ml.estimator import KerasEstimator, KerasModel

__all__ = ["KerasEstimator", "KerasModel"]

"""The Params that KerasEstimator and the KerasModel it fits share, with their checks.

Names follow Spark ML (camelCase, `setX`/`getX`), so a ParamGridBuilder, a CrossValidator
and a saved pipeline's metadata treat them as any other stage's.
"""

from __future__ import annotations

from pyspark.ml.param import Param, Params, TypeConverters

PREDICTION_STYLES = ("none", "regression", "classification")


def _to_column_map(value) -> dict:
    """{Keras input or output name: column name}; an empty dict is the default (by name)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TypeError(f"expected a dict of Keras name -> column name (both strings); got {value!r}")
    return dict(value)


def _to_prediction_style(value) -> str:
    value = TypeConverters.toString(value)
    if value not in PREDICTION_STYLES:
        raise ValueError(f"predictionStyle must be one of {PREDICTION_STYLES}; got {value!r}")
    return value


def _to_positive_int(value) -> int:
    value = TypeConverters.toInt(value)
    if value < 1:
        raise ValueError(f"expected a positive integer; got {value}")
    return value


def _to_fraction(value) -> float:
    value = TypeConverters.toFloat(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"validationFraction must be in [0, 1); got {value}")
    return value


def _to_bytes(value) -> bytes:
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"expected the model's .keras bytes; got {type(value).__name__}")
    return bytes(value)


class KerasScoringParams(Params):
    """Which columns feed the model and which columns `transform` adds."""

    kerasModelBytes = Param(Params._dummy(), "kerasModelBytes",
                            "the compiled Keras model as .keras bytes (saved with the stage as model.keras)",
                            typeConverter=_to_bytes)
    inputCols = Param(Params._dummy(), "inputCols",
                      "{Keras input name: column}; inputs not named here read the column of their own name",
                      typeConverter=_to_column_map)
    labelCols = Param(Params._dummy(), "labelCols",
                      "{Keras output name: label column}; outputs not named here read the column of their own name",
                      typeConverter=_to_column_map)
    predictionStyle = Param(Params._dummy(), "predictionStyle",
                            "'none': only the model_output struct; 'regression': also `prediction` (double); "
                            "'classification': also `prediction` (double), `probability` and `rawPrediction` "
                            "(vectors) from a sigmoid (1 unit) or softmax (k units) output",
                            typeConverter=_to_prediction_style)
    predictionCol = Param(Params._dummy(), "predictionCol", "prediction column name",
                          typeConverter=TypeConverters.toString)
    probabilityCol = Param(Params._dummy(), "probabilityCol", "class probabilities column name (a vector)",
                           typeConverter=TypeConverters.toString)
    rawPredictionCol = Param(Params._dummy(), "rawPredictionCol", "raw prediction column name (a vector)",
                             typeConverter=TypeConverters.toString)
    predictBatchSize = Param(Params._dummy(), "predictBatchSize",
                             "rows per scoring call on the executors; unset: about 4 MB of input a call",
                             typeConverter=_to_positive_int)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(inputCols={}, labelCols={}, predictionStyle="none", predictionCol="prediction",
                         probabilityCol="probability", rawPredictionCol="rawPrediction")

    def setParams(self, **params):
        """Sets any of the stage's Params by name (`stage.setParams(predictionStyle="regression")`)."""
        unknown = [name for name in params if not self.hasParam(name)]
        if unknown:
            raise TypeError(f"{type(self).__name__} has no Param(s) {unknown}; its Params are "
                            f"{sorted(p.name for p in self.params)}")
        return self._set(**params)

    def getInputCols(self) -> dict:
        return self.getOrDefault(self.inputCols)

    def getLabelCols(self) -> dict:
        return self.getOrDefault(self.labelCols)

    def getPredictionStyle(self) -> str:
        return self.getOrDefault(self.predictionStyle)

    def getPredictionCol(self) -> str:
        return self.getOrDefault(self.predictionCol)

    def getProbabilityCol(self) -> str:
        return self.getOrDefault(self.probabilityCol)

    def getRawPredictionCol(self) -> str:
        return self.getOrDefault(self.rawPredictionCol)


class KerasTrainingParams(KerasScoringParams):
    """How KerasEstimator trains: the arguments of KerasSparkModel.fit, as Params."""

    epochs = Param(Params._dummy(), "epochs", "training epochs (each one pass over every row)",
                   typeConverter=_to_positive_int)
    batchSize = Param(Params._dummy(), "batchSize", "rows per training step (the global batch with numWorkers)",
                      typeConverter=_to_positive_int)
    learningRate = Param(Params._dummy(), "learningRate",
                         "when set, replaces the compiled optimizer's learning rate",
                         typeConverter=TypeConverters.toFloat)
    partitionCol = Param(Params._dummy(), "partitionCol",
                         "integer partition ids 0..n (units of streaming); when the DataFrame has no such column, "
                         "the stage makes one from a hash of each row's id into numPartitions ids",
                         typeConverter=TypeConverters.toString)
    numPartitions = Param(Params._dummy(), "numPartitions", "partition ids made when partitionCol is absent",
                          typeConverter=_to_positive_int)
    numWorkers = Param(Params._dummy(), "numWorkers",
                       "1: train on the driver; N > 1: N data-parallel JAX processes on the executors",
                       typeConverter=_to_positive_int)
    validationFraction = Param(Params._dummy(), "validationFraction",
                               "fraction of rows held out (randomSplit with `seed`) as validation_data; 0: none",
                               typeConverter=_to_fraction)
    seed = Param(Params._dummy(), "seed", "seed of the shuffle order and of the validation split",
                 typeConverter=TypeConverters.toInt)
    verbose = Param(Params._dummy(), "verbose", "Keras's fit verbosity", typeConverter=TypeConverters.toInt)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(epochs=1, batchSize=32, partitionCol="partition_id", numPartitions=8, numWorkers=1,
                         validationFraction=0.0, seed=0, verbose=0)

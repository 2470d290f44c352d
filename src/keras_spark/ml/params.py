"""The Params that KerasEstimator and the KerasModel it fits share, with their checks.

Names follow Spark ML (camelCase, `setX`/`getX`), so a ParamGridBuilder, a CrossValidator
and a saved pipeline's metadata treat them as any other stage's.
"""

from __future__ import annotations

from typing import Self

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


def _to_column_name(value) -> str:
    value = TypeConverters.toString(value)
    if not value:
        raise ValueError("expected a column name; got an empty string")
    return value


def _to_custom_objects(value) -> dict:
    """{name: class or function}, as keras.saving.custom_object_scope takes them."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"customObjects must be a dict of name -> class or function (as "
                        f"keras.saving.custom_object_scope takes); got {value!r}")
    return dict(value)


def describe_model(model) -> str:
    """One line: the model's name, its inputs and outputs (name, dtype, shape) and its parameter count."""
    def tensors(names, specs):
        return ", ".join(f"{n} {t.dtype} {tuple(t.shape)}" for n, t in zip(names, specs, strict=True))

    input_names = [t.name for t in model.inputs]  # a functional model names each input by its InputLayer
    return (f"model '{model.name}': inputs {tensors(input_names, model.inputs)}; "
            f"outputs {tensors(model.output_names, model.outputs)}; {model.count_params():,} parameters")


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
                            "'none': only the outputCol struct; 'regression': also `prediction` (double); "
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
    outputCol = Param(Params._dummy(), "outputCol",
                      "the struct column transform adds, one field per Keras output (predict's output_col)",
                      typeConverter=_to_column_name)
    customObjects = Param(Params._dummy(), "customObjects",
                          "{name: class or function} the model needs beyond those registered with "
                          "keras.saving.register_keras_serializable; saved with the stage (cloudpickled) and "
                          "shipped to the executors",
                          typeConverter=_to_custom_objects)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(inputCols={}, labelCols={}, predictionStyle="none", predictionCol="prediction",
                         probabilityCol="probability", rawPredictionCol="rawPrediction", outputCol="model_output",
                         customObjects={})

    def explainParam(self, param) -> str:
        """As Params.explainParam, except that the model is described (name, inputs, outputs, parameter
        count), not printed as its .keras bytes."""
        param = self._resolveParam(param)
        if param.name != "kerasModelBytes" or not self.isDefined(param):
            return super().explainParam(param)
        return f"{param.name}: {param.doc} (current: {self._model_description()})"

    def _model_description(self) -> str:
        size = f"{len(self.getKerasModelBytes()) / 1024:.1f} KB as .keras"
        try:
            model = self.getKerasModel()
        except Exception as error:  # explaining must not fail where opening the model does
            return f"a model of {size}, not opened here ({type(error).__name__}: {error})"
        return f"{describe_model(model)}; {size}"

    def setParams(self, **params):
        """Sets any of the stage's Params by name (`stage.setParams(predictionStyle="regression")`)."""
        unknown = [name for name in params if not self.hasParam(name)]
        if unknown:
            raise TypeError(f"{type(self).__name__} has no Param(s) {unknown}; its Params are "
                            f"{sorted(p.name for p in self.params)}")
        return self._set(**params)

    def getKerasModelBytes(self) -> bytes:
        """The model as .keras bytes (what the stage saves as model.keras)."""
        return self.getOrDefault(self.kerasModelBytes)

    def setKerasModelBytes(self, value: bytes) -> Self:
        """Sets the model from .keras bytes (`model_to_keras_bytes(model)`); returns the stage."""
        return self._set(kerasModelBytes=value)

    def getInputCols(self) -> dict[str, str]:
        """{Keras input name: column}."""
        return self.getOrDefault(self.inputCols)

    def setInputCols(self, value: dict[str, str]) -> Self:
        """Sets {Keras input name: column}; returns the stage."""
        return self._set(inputCols=value)

    def getLabelCols(self) -> dict[str, str]:
        """{Keras output name: label column}."""
        return self.getOrDefault(self.labelCols)

    def setLabelCols(self, value: dict[str, str]) -> Self:
        """Sets {Keras output name: label column}; returns the stage."""
        return self._set(labelCols=value)

    def getPredictionStyle(self) -> str:
        """'none', 'regression' or 'classification'."""
        return self.getOrDefault(self.predictionStyle)

    def setPredictionStyle(self, value: str) -> Self:
        """Sets the prediction style ('none', 'regression' or 'classification'); returns the stage."""
        return self._set(predictionStyle=value)

    def getPredictionCol(self) -> str:
        """The prediction column's name."""
        return self.getOrDefault(self.predictionCol)

    def setPredictionCol(self, value: str) -> Self:
        """Sets the prediction column's name; returns the stage."""
        return self._set(predictionCol=value)

    def getProbabilityCol(self) -> str:
        """The class probabilities column's name."""
        return self.getOrDefault(self.probabilityCol)

    def setProbabilityCol(self, value: str) -> Self:
        """Sets the class probabilities column's name; returns the stage."""
        return self._set(probabilityCol=value)

    def getRawPredictionCol(self) -> str:
        """The raw prediction column's name."""
        return self.getOrDefault(self.rawPredictionCol)

    def setRawPredictionCol(self, value: str) -> Self:
        """Sets the raw prediction column's name; returns the stage."""
        return self._set(rawPredictionCol=value)

    def getPredictBatchSize(self) -> int | None:
        """Rows per scoring call; None when unset (about 4 MB of input a call)."""
        return self.getOrDefault(self.predictBatchSize) if self.isDefined(self.predictBatchSize) else None

    def setPredictBatchSize(self, value: int) -> Self:
        """Sets the rows per scoring call on the executors; returns the stage."""
        return self._set(predictBatchSize=value)

    def getOutputCol(self) -> str:
        """The struct column transform adds (default 'model_output')."""
        return self.getOrDefault(self.outputCol)

    def setOutputCol(self, value: str) -> Self:
        """Sets the struct column transform adds, e.g. to run two Keras stages in one Pipeline; returns the stage."""
        return self._set(outputCol=value)

    def getCustomObjects(self) -> dict:
        """{name: class or function} the stage ships with its model."""
        return self.getOrDefault(self.customObjects)

    def setCustomObjects(self, value: dict) -> Self:
        """Sets {name: class or function} the model needs (unregistered custom layers, losses, metrics);
        returns the stage."""
        return self._set(customObjects=value)


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
                         "integer partition ids 0..n (units of streaming); when set, the DataFrame must have it; "
                         "unset, 'partition_id', made from a hash of each row's id into numPartitions ids when absent",
                         typeConverter=TypeConverters.toString)
    numPartitions = Param(Params._dummy(), "numPartitions", "partition ids made when partitionCol is absent",
                          typeConverter=_to_positive_int)
    numWorkers = Param(Params._dummy(), "numWorkers",
                       "1: train on the driver; N > 1: N data-parallel processes on the executors (JAX or PyTorch)",
                       typeConverter=_to_positive_int)
    validationFraction = Param(Params._dummy(), "validationFraction",
                               "fraction of rows held out (randomSplit with `seed`) as validation_data; 0: none",
                               typeConverter=_to_fraction)
    seed = Param(Params._dummy(), "seed", "seed of the shuffle order and of the validation split",
                 typeConverter=TypeConverters.toInt)
    verbose = Param(Params._dummy(), "verbose", "Keras's fit verbosity", typeConverter=TypeConverters.toInt)
    checkpointLocation = Param(Params._dummy(), "checkpointLocation",
                               "where fit commits a checkpoint after every epoch and resumes from (a path, s3://, "
                               "gs://, hdfs://, abfs://...); one location per fit; unset: no checkpoints",
                               typeConverter=TypeConverters.toString)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(epochs=1, batchSize=32, partitionCol="partition_id", numPartitions=8, numWorkers=1,
                         validationFraction=0.0, seed=0, verbose=0)

    def getEpochs(self) -> int:
        """Training epochs."""
        return self.getOrDefault(self.epochs)

    def setEpochs(self, value: int) -> Self:
        """Sets the training epochs; returns the stage."""
        return self._set(epochs=value)

    def getBatchSize(self) -> int:
        """Rows per training step."""
        return self.getOrDefault(self.batchSize)

    def setBatchSize(self, value: int) -> Self:
        """Sets the rows per training step; returns the stage."""
        return self._set(batchSize=value)

    def getLearningRate(self) -> float | None:
        """The learning rate that replaces the compiled optimizer's; None when unset (the compiled one is used)."""
        return self.getOrDefault(self.learningRate) if self.isDefined(self.learningRate) else None

    def setLearningRate(self, value: float) -> Self:
        """Sets a learning rate that replaces the compiled optimizer's; returns the stage."""
        return self._set(learningRate=value)

    def getPartitionCol(self) -> str:
        """The partition id column ('partition_id' unless set; made when unset and absent)."""
        return self.getOrDefault(self.partitionCol)

    def setPartitionCol(self, value: str) -> Self:
        """Sets the partition id column, which the DataFrame must then have (never made); returns the stage."""
        return self._set(partitionCol=value)

    def getNumPartitions(self) -> int:
        """Partition ids made when partitionCol is absent."""
        return self.getOrDefault(self.numPartitions)

    def setNumPartitions(self, value: int) -> Self:
        """Sets the number of partition ids made when partitionCol is absent; returns the stage."""
        return self._set(numPartitions=value)

    def getNumWorkers(self) -> int:
        """1: train on the driver; N > 1: N JAX processes on the executors."""
        return self.getOrDefault(self.numWorkers)

    def setNumWorkers(self, value: int) -> Self:
        """Sets the number of training processes; returns the stage."""
        return self._set(numWorkers=value)

    def getValidationFraction(self) -> float:
        """Fraction of rows held out as validation data."""
        return self.getOrDefault(self.validationFraction)

    def setValidationFraction(self, value: float) -> Self:
        """Sets the fraction of rows held out as validation data, in [0, 1); returns the stage."""
        return self._set(validationFraction=value)

    def getSeed(self) -> int:
        """Seed of the shuffle order and of the validation split."""
        return self.getOrDefault(self.seed)

    def setSeed(self, value: int) -> Self:
        """Sets the seed of the shuffle order and of the validation split; returns the stage."""
        return self._set(seed=value)

    def getVerbose(self) -> int:
        """Keras's fit verbosity."""
        return self.getOrDefault(self.verbose)

    def setVerbose(self, value: int) -> Self:
        """Sets Keras's fit verbosity; returns the stage."""
        return self._set(verbose=value)

    def getCheckpointLocation(self) -> str | None:
        """Where fit commits checkpoints and resumes from; None when unset (no checkpoints)."""
        return self.getOrDefault(self.checkpointLocation) if self.isDefined(self.checkpointLocation) else None

    def setCheckpointLocation(self, value: str) -> Self:
        """Sets where fit commits a checkpoint after every epoch and resumes from (see the checkpoints guide);
        returns the stage."""
        return self._set(checkpointLocation=value)

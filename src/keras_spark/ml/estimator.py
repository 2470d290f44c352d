"""KerasEstimator and KerasModel: a Keras model as a pyspark.ml Estimator and the Transformer it fits.

    from pyspark.ml import Pipeline
    from pyspark.ml.feature import VectorAssembler, StandardScaler
    from keras_spark.ml import KerasEstimator

    keras_stage = KerasEstimator(model=compiled_keras_model, epochs=5, batchSize=64,
                                 inputCols={"features": "scaled"}, labelCols={"label": "label"},
                                 predictionStyle="classification")
    pipeline = Pipeline(stages=[VectorAssembler(...), StandardScaler(...), keras_stage])
    fitted = pipeline.fit(train)             # KerasSparkModel.fit on the DataFrame
    scored = fitted.transform(test)          # KerasSparkModel.predict, plus prediction/probability

The estimator holds the compiled model as `.keras` bytes (a Param), never as a live object:
every `fit` opens its own copy from the bytes, so a CrossValidator with `parallelism > 1`
trains several copies in threads without sharing one (Keras models are not thread safe),
and a saved pipeline stores a plain `.keras` file (with, cloudpickled beside it, only the
`customObjects` the user gives).
"""

from __future__ import annotations

import threading

from pyspark.ml import Estimator, Model
from pyspark.ml.util import MLReadable, MLWritable
from pyspark.sql import functions as F
from pyspark.sql import types as T

from keras_spark.errors import BindingError, DataError
from keras_spark.ml.custom_objects import check_stage_classes, for_shipping
from keras_spark.ml.outputs import flatten_outputs
from keras_spark.ml.params import KerasScoringParams, KerasTrainingParams

_LOADING = threading.Lock()  # Keras's loading touches process-wide registries; one thread at a time


def model_to_keras_bytes(model, custom_objects: dict | None = None) -> bytes:
    """A compiled Keras model (functional, Sequential or KerasSparkModel) as the .keras bytes a stage holds.

    `custom_objects` ({name: class or function}) are in scope while its compile config is read again.
    """
    import keras

    from keras_spark.model_package import custom_object_scope, model_to_bytes
    from keras_spark.models import as_keras_spark_model

    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a compiled keras.Model; got {type(model).__name__}")
    if not model.compiled:
        raise ValueError("model is not compiled: call model.compile(optimizer, loss, ...) before giving it to "
                         "KerasEstimator (the estimator trains it with fit)")
    with custom_object_scope(custom_objects):  # added to the user's active scope
        if isinstance(model, keras.Sequential):
            model = functional_from_sequential(model)
        model = as_keras_spark_model(model)
    if model.optimizer is not None and not model.optimizer.built:
        # Saved unbuilt, the optimizer's file holds fewer variables than the copy each fit loads
        # builds, and Keras warns at every load; built (all state zero) it loads as saved.
        model.optimizer.build(model.trainable_variables)
    return model_to_bytes(model)


def functional_from_sequential(model):
    """A compiled Sequential model as a functional one: the same layers (so the same weights), compile
    config and optimizer. Spark binds columns by input and output name, which only functional models have.

    The input is named after the Sequential's first layer (`keras.Input(shape, name="features")`); the output
    after its last layer.
    """
    import keras

    try:
        inputs, outputs = model.inputs, model.outputs
    except AttributeError as error:
        raise ValueError(
            f"Sequential model '{model.name}' has no input shape yet, so its input has no name for a column to "
            f"feed: start it with keras.Input(shape, name=...) (or call model.build((None, ...)))") from error
    functional = keras.Model(inputs[0], outputs[0], name=model.name)
    config = keras.saving.deserialize_keras_object(model.get_compile_config())
    functional.compile(**dict(config, optimizer=model.optimizer))
    return functional


def keras_model_from_bytes(model_bytes: bytes, custom_objects: dict | None = None):
    """A fresh KerasSparkModel (its own layers, weights and optimizer) from a stage's .keras bytes, opened with
    the user's active custom_object_scope and `custom_objects` ({name: class or function})."""
    from keras_spark.model_package import model_from_bytes
    from keras_spark.models import as_keras_spark_model

    objects = for_shipping(model_bytes, custom_objects or {})
    check_stage_classes(model_bytes, objects)  # keras-spark's error naming the class, not Keras's with the config
    with _LOADING:
        return as_keras_spark_model(model_from_bytes(model_bytes, custom_objects=objects))


def _with_keras_names(df, mapping: dict):
    """`df` with each mapped column also reachable under its Keras name; the names added."""
    renamed = {name: column for name, column in mapping.items() if name != column}
    for name, column in renamed.items():
        if column not in df.columns:
            raise BindingError(f"column '{column}' (mapped to Keras name '{name}') is not in the DataFrame; "
                               f"found columns {df.columns}")
    clashes = [name for name in renamed if name in df.columns]
    if clashes:
        raise BindingError(f"the DataFrame has column(s) {clashes} named like Keras inputs/outputs that are mapped "
                           f"to other columns ({ {n: renamed[n] for n in clashes} }); rename or drop them")
    if not renamed:
        return df, []
    return df.select("*", *[F.col(f"`{c}`").alias(n) for n, c in renamed.items()]), list(renamed)


def _class_ids_as_integers(df, model):
    """Spark ML's class labels are doubles (StringIndexer, and every Spark classifier's convention);
    where such a scalar label meets a k-wide output of scores, it holds class ids: integers for
    a sparse loss. Before the cast, one more pass over the data looks for a value that is not a
    class id (a fraction, out of 0..k-1, NaN or infinite): Spark's cast would truncate it, or
    fail in the JVM, so it is refused here by name. Nulls pass through to the Spark pass's own
    null check. (The core's float-to-int cast checks range, not fractions; teaching it to would
    let plain `fit` take double class ids too, without this pass.)
    """
    types = {f.name: f.dataType for f in df.schema.fields}
    for name, output in zip(model.output_names, model.outputs, strict=True):
        scores = len(output.shape) == 2 and (output.shape[-1] or 0) > 1
        if not (scores and isinstance(types.get(name), (T.DoubleType, T.FloatType))):
            continue
        label, classes = F.col(f"`{name}`"), output.shape[-1]
        class_id = (label >= 0) & (label < classes) & (label == F.floor(label))  # false for NaN and +-inf
        odd = df.filter(~class_id).select(label).limit(1).collect()
        if odd:
            raise DataError(
                f"label column '{name}' ({types[name].simpleString()}) feeds Keras output '{name}' of "
                f"{classes} scores, so it holds class ids, but it has the value {odd[0][0]}; class ids "
                f"must be whole numbers 0..{classes - 1} (as StringIndexer makes them)")
        df = df.withColumn(name, label.cast("int"))
    return df


class KerasEstimator(Estimator, KerasTrainingParams, MLWritable, MLReadable):
    """A pyspark.ml Estimator that trains a compiled Keras model on a DataFrame (`KerasSparkModel.fit`).

    Params (all settable in the constructor, with `setParams`, or by a ParamGridBuilder):
    `epochs`, `batchSize`, `learningRate` (overrides the compiled optimizer's), `partitionCol` /
    `numPartitions` (made from a row hash when the column is absent), `numWorkers`,
    `validationFraction` (or `setValidationData(df)`), `inputCols` / `labelCols`
    ({Keras name: column}; by name otherwise), `seed`, `verbose`, `customObjects` ({name: class or
    function} for unregistered custom layers, losses and metrics; a `keras.saving.custom_object_scope`
    around `fit` works too), and the KerasModel's `predictionStyle`, `predictionCol`, `probabilityCol`,
    `rawPredictionCol`, `predictBatchSize`, `outputCol`. Each Param has its `getX` and `setX`.

    `model` may be functional, a KerasSparkModel, or a Sequential one that starts with `keras.Input`
    (held as a functional model with the same layers and weights). A class of the model that Keras cannot
    find (not registered, not in `customObjects` or the active scope) is a
    `keras_spark.errors.ModelPackageError` naming it and `customObjects`, raised by `fit` before any Spark job.
    """

    def __init__(self, model=None, **params) -> None:
        super().__init__()
        self._validation_data = None
        self.setParams(model=model, **params)

    def setParams(self, model=None, **params) -> KerasEstimator:
        """Sets the Keras model (a compiled keras.Model) and any of the Params by name."""
        if model is not None:
            objects = params.get("customObjects") or self.getCustomObjects()
            params["kerasModelBytes"] = model_to_keras_bytes(model, objects)
        return super().setParams(**params)

    def setModel(self, model) -> KerasEstimator:
        """Sets the Keras model (a compiled keras.Model); returns the estimator."""
        return self.setParams(model=model)

    def setValidationData(self, df) -> KerasEstimator:
        """A DataFrame validated after each epoch (instead of `validationFraction`; not saved with the stage)."""
        self._validation_data = df
        return self

    def getKerasModel(self):
        """A fresh copy of the (untrained) Keras model this estimator holds."""
        return keras_model_from_bytes(self.getKerasModelBytes(), self.getCustomObjects())

    def _fit(self, dataset) -> KerasModel:
        if not self.isDefined(self.kerasModelBytes):
            raise ValueError("KerasEstimator has no model: pass model=<compiled keras.Model>")
        self._check_partition_col(dataset, self._validation_data)  # before any Spark job
        model = self.getKerasModel()  # this fit's own copy: fits in other threads never share it
        if self.isSet(self.learningRate):
            model.optimizer.learning_rate = self.getOrDefault(self.learningRate)
        train, validation = dataset, self._validation_data
        fraction = self.getOrDefault(self.validationFraction)
        if validation is None and fraction > 0:
            train, validation = dataset.randomSplit([1.0 - fraction, fraction], seed=self.getOrDefault(self.seed))
        # Named in the fitted stage: it then scores, saves and loads outside the user's scope too.
        objects = for_shipping(self.getKerasModelBytes(), self.getCustomObjects())
        mapping = {**self.getInputCols(), **self.getLabelCols()}
        train, partition_col = self._for_training(train, mapping, model)
        if validation is not None:
            validation, _ = self._for_training(validation, mapping, model)
        history = model.fit(
            train, batch_size=self.getOrDefault(self.batchSize), epochs=self.getOrDefault(self.epochs),
            partition_col=partition_col, num_workers=self.getOrDefault(self.numWorkers),
            validation_data=validation, verbose=self.getOrDefault(self.verbose),
            shuffle_seed=self.getOrDefault(self.seed), custom_objects=objects,
            **({"checkpoint": self.getCheckpointLocation()} if self.getCheckpointLocation() else {}),
        )
        fitted = self._copyValues(KerasModel())  # the scoring Params this estimator was given
        fitted._set(kerasModelBytes=model_to_keras_bytes(model), customObjects=objects)  # the trained weights
        fitted.history = dict(history.history) if history is not None else {}
        return fitted

    def _named_partition_col(self) -> str | None:
        """The partitionCol Param where the user set it (that column must exist), else None (made when absent)."""
        return self.getOrDefault(self.partitionCol) if self.isSet(self.partitionCol) else None

    def _check_partition_col(self, train, validation) -> None:
        from keras_spark.spark.training import check_named_partition_column

        named = self._named_partition_col()
        if named is not None:
            check_named_partition_column(train.columns, named, "partitionCol")
            if validation is not None:
                check_named_partition_column(validation.columns, named, "partitionCol", "the validation data")

    def _for_training(self, df, mapping: dict, model):
        """`df` ready for fit, and its partition id column."""
        from keras_spark.spark.training import with_partition_ids

        df, _ = _with_keras_names(df, mapping)
        df = _class_ids_as_integers(df, model)
        df, partition_col, _ = with_partition_ids(df, self._named_partition_col(), seed=self.getOrDefault(self.seed),
                                                  count=self.getOrDefault(self.numPartitions), keyword="partitionCol")
        return df, partition_col

    def write(self):
        from keras_spark.ml.persistence import KerasStageWriter

        return KerasStageWriter(self)

    @classmethod
    def read(cls):
        from keras_spark.ml.persistence import KerasStageReader

        return KerasStageReader(cls)


class KerasModel(Model, KerasScoringParams, MLWritable, MLReadable):
    """The fitted stage: `transform(df)` is `KerasSparkModel.predict(df)` on the executors.

    The result keeps every column of `df` and adds `outputCol` (default `model_output`: a struct,
    one field per Keras output); with `predictionStyle` 'regression' or 'classification' it also adds the
    columns Spark ML's evaluators read, from the model's first output. `history` holds the
    Keras History of the fit that made it (not saved with the stage).
    """

    def __init__(self, model_bytes: bytes | None = None) -> None:
        super().__init__()
        self.history: dict = {}
        self._keras_model = None
        self._keras_model_lock = threading.Lock()
        if model_bytes is not None:
            self._set(kerasModelBytes=model_bytes)

    def copy(self, extra=None) -> KerasModel:
        """A copy with the same Params; it opens its own Keras model, from the bytes of this one's as it is now."""
        self.getKerasModelBytes()  # changes made to the opened model travel with the copy
        that = super().copy(extra)
        that._keras_model, that._keras_model_lock = None, threading.Lock()  # each copy opens its own
        return that

    def _set(self, **kwargs):
        if "kerasModelBytes" in kwargs and getattr(self, "_keras_model", None) is not None:
            self._keras_model = None  # new bytes are a new model: the next transform opens them
        return super()._set(**kwargs)

    def getKerasModel(self):
        """The model `transform` scores, as a KerasSparkModel (opened once per stage object, then kept).

        It is the stage's model, not a copy: what is done to it (`fit`, `set_weights`, a layer made
        untrainable) changes what `transform` scores, and what `save`, `copy` and `getKerasModelBytes`
        write. Copy it first (`keras.models.clone_model`) to change it without changing the stage.
        """
        with self._keras_model_lock:
            if self._keras_model is None:
                self._keras_model = keras_model_from_bytes(self.getOrDefault(self.kerasModelBytes),
                                                           self.getCustomObjects())
            return self._keras_model

    def getKerasModelBytes(self) -> bytes:
        """The .keras bytes of the model `transform` scores: once it is opened (getKerasModel), written
        from it as it is now, so changes made to it since are saved too."""
        with self._keras_model_lock:
            if self._keras_model is not None:
                # Into the map directly: through _set the new bytes would close the model they came from.
                self._paramMap[self.kerasModelBytes] = model_to_keras_bytes(self._keras_model)
        return self.getOrDefault(self.kerasModelBytes)

    def _transform(self, dataset):
        model = self.getKerasModel()
        df, added = _with_keras_names(dataset, self.getInputCols())
        objects = for_shipping(self.getOrDefault(self.kerasModelBytes), self.getCustomObjects())
        with self._keras_model_lock:  # predict reads the model's config and weights on this thread
            scored = model.predict(df, batch_size=self.getPredictBatchSize(), output_col=self.getOutputCol(),
                                   custom_objects=objects)
        if added:
            scored = scored.drop(*added)
        return flatten_outputs(
            scored, model.output_names[0], self.getPredictionStyle(), prediction_col=self.getPredictionCol(),
            probability_col=self.getProbabilityCol(), raw_prediction_col=self.getRawPredictionCol(),
            output_col=self.getOutputCol(),
        )

    def write(self):
        from keras_spark.ml.persistence import KerasStageWriter

        return KerasStageWriter(self)

    @classmethod
    def read(cls):
        from keras_spark.ml.persistence import KerasStageReader

        return KerasStageReader(cls)

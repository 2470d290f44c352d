"""KerasSparkModel: a functional `keras.Model` that also trains on and scores Spark DataFrames.

    model = KerasSparkModel(inputs, outputs)
    model.compile("adam", "mse")
    model.fit(spark_df, batch_size=32, epochs=5, partition_col="partition_id")
    scored = model.predict(spark_df).select("model_output.label1")

Given anything that is not a Spark DataFrame, every method is keras.Model's own.
"""

from __future__ import annotations

import contextlib
import functools

import keras

from keras_spark import binding
from keras_spark.spark import is_spark_dataframe

_UNSET = object()


@keras.saving.register_keras_serializable(package="keras_spark")
class KerasSparkModel(keras.Model):
    """A Keras functional model whose fit, evaluate and predict also take a PySpark DataFrame.

    Inputs are fed from the columns named like the Keras inputs; each output's label is
    the column named like the output (`model.output_names`).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

    def get_config(self):
        return super().get_config()

    # -- training -------------------------------------------------------------------
    def fit(self, x=None, y=None, batch_size=None, epochs=1, *args, partition_col=_UNSET,
            num_parallel_calls=_UNSET, cache_dir=_UNSET, num_workers=_UNSET, allow_non_finite=_UNSET,
            custom_objects=_UNSET, image_resize=_UNSET, row_id_col=_UNSET, **kwargs):
        """keras.Model.fit; with a Spark DataFrame `x`, trains on its columns.

        Spark-only keywords: `partition_col` (default "partition_id": integer ids 0..n,
        each one unit of streaming), `num_parallel_calls` (partitions read and interleaved
        at once; default one per core) and `cache_dir` (where the one Spark pass leaves
        its dense cache; must be visible to executors and driver; default a temporary
        directory, removed after fit), `num_workers` (default 1: train on the driver; N > 1:
        N data-parallel JAX processes in one Spark barrier stage on the executors, with
        `batch_size` the global batch), `allow_non_finite` (default False: a NaN or infinite
        feature or label is an error naming the column and row; True keeps Keras's own behaviour),
        `custom_objects` (a dict of custom layers, losses and metrics the num_workers processes
        need beyond those registered with `keras.saving.register_keras_serializable`, which
        travel by themselves). With a DataFrame, `sample_weight` is the name of a column of
        row weights, and `class_weight` works as with NumPy data. `image_resize` (None, "resize" or
        "center_crop") fits image columns (binary JPEG/PNG, Spark's image struct) to their
        input's (height, width); see keras_spark.images. `row_id_col` (str or None, default None: a
        binaryFile frame's `path`, else none) names a column whose value identifies a row: a bad value is
        a DataError naming its row by partition id, position among that id's rows in the DataFrame's
        order (from 0), and this column's value (with num_workers > 1, by its place in a batch).
        """
        spark_only = dict(partition_col=partition_col, num_parallel_calls=num_parallel_calls, cache_dir=cache_dir,
                          num_workers=num_workers, allow_non_finite=allow_non_finite, custom_objects=custom_objects,
                          image_resize=image_resize, row_id_col=row_id_col)
        if not is_spark_dataframe(x):
            _reject_spark_keywords(spark_only, "fit")
            if is_spark_dataframe(kwargs.get("validation_data")):
                raise TypeError("validation_data is a Spark DataFrame but x is not; pass both as DataFrames")
            return super().fit(x, y, batch_size, epochs, *args, **kwargs)
        if args:
            raise TypeError("with a Spark DataFrame, pass fit's arguments after `epochs` by keyword")
        from keras_spark.spark.training import fit_dataframe

        return fit_dataframe(
            self, x, y=y, batch_size=batch_size, epochs=epochs, super_fit=super().fit,
            **{k: v for k, v in spark_only.items() if v is not _UNSET}, **kwargs,
        )

    def evaluate(self, x=None, y=None, batch_size=None, *args, partition_col=_UNSET, cache_dir=_UNSET,
                 allow_non_finite=_UNSET, image_resize=_UNSET, row_id_col=_UNSET, **kwargs):
        """keras.Model.evaluate; with a Spark DataFrame `x`, evaluates on its columns (on the driver).

        Takes fit's `partition_col`, `cache_dir`, `allow_non_finite`, `image_resize` and `row_id_col`
        (str or None); with a DataFrame, `sample_weight` is the name of a column of row weights.
        """
        spark_only = dict(partition_col=partition_col, cache_dir=cache_dir, allow_non_finite=allow_non_finite,
                          image_resize=image_resize, row_id_col=row_id_col)
        if not is_spark_dataframe(x):
            _reject_spark_keywords(spark_only, "evaluate")
            return super().evaluate(x, y, batch_size, *args, **kwargs)
        from keras_spark.spark.training import evaluate_dataframe

        return evaluate_dataframe(
            self, x, y=y, batch_size=batch_size, super_evaluate=super().evaluate,
            **{k: v for k, v in spark_only.items() if v is not _UNSET}, **kwargs,
        )

    # -- scoring --------------------------------------------------------------------
    def predict(self, x, batch_size=None, *args, custom_objects=_UNSET, image_resize=_UNSET, **kwargs):
        """keras.Model.predict; with a Spark DataFrame, a lazy DataFrame scored on the executors.

        The result keeps every column of `x`, row for row, and adds a struct column
        `model_output` with one field per model output, e.g. `model_output.label1`.
        Without `batch_size`, each Arrow batch is scored in pieces of about
        `score.PREDICT_BATCH_BYTES` of input (at least 32 rows, at most 8,192): Keras's
        default of 32 rows is several times slower for DataFrame scoring.
        Custom objects registered with `keras.saving.register_keras_serializable` or in an
        active `keras.saving.custom_object_scope` travel with the model; pass others as
        `custom_objects={"Name": obj}` (dict). A class the executors could not find is a
        ModelPackageError on the driver, before any Spark job. Image columns are fitted
        as fit's `image_resize` says (pass the same value).
        """
        if not is_spark_dataframe(x):
            _reject_spark_keywords(dict(custom_objects=custom_objects, image_resize=image_resize), "predict")
            return super().predict(x, batch_size, *args, **kwargs)
        from keras_spark.spark.score import predict_dataframe
        from keras_spark.spark.training import batch_size_or_default

        if batch_size is not None:
            batch_size = batch_size_or_default(batch_size)
        from keras_spark import sequences

        options = sequences.SequenceOptions.pop_from(kwargs)
        resize = None if image_resize is _UNSET else image_resize
        bindings = sequences.with_options(binding.bind_inputs(self, x.schema, resize), options)
        objects = None if custom_objects is _UNSET else custom_objects
        return predict_dataframe(self, x, bindings, batch_size, custom_objects=objects)

    # -- files ----------------------------------------------------------------------
    def save(self, filepath, *args, **kwargs):
        """keras.Model.save, written as a functional model registered as a KerasSparkModel.

        `keras.saving.load_model` gives a KerasSparkModel again where keras_spark is imported, and a
        functional `keras.Model` where keras-spark is not installed (a serving process, MLflow's workers).
        """
        if type(self) is not KerasSparkModel:  # a user's subclass: its own class is its config
            return super().save(filepath, *args, **kwargs)
        with _as_functional(self):
            return _functional_class().save(self, filepath, *args, **kwargs)


def _reject_spark_keywords(spark_only: dict, method: str) -> None:
    given = [k for k, v in spark_only.items() if v is not _UNSET]
    if given:
        raise TypeError(f"{method}() got {given}, which apply only when x is a Spark DataFrame")


@functools.cache
def _functional_class() -> type:
    """Keras's functional model class (what `keras.Model(inputs, outputs)` builds), through the public API."""
    probe = keras.Input((1,))
    return type(keras.Model(probe, probe))


@functools.cache
def _saved_class() -> type:
    """The class a KerasSparkModel is saved as: Keras's Functional by module and name, KerasSparkModel by
    registered name.

    Keras looks a class up by its registered name first and falls back to module and name
    (`_retrieve_class_or_fn` in keras/src/saving/serialization_lib.py): a process that imported
    keras_spark gets a KerasSparkModel, one without it Keras's functional model.
    """
    functional = _functional_class()
    saved = type(functional.__name__, (functional,), {"__module__": functional.__module__,
                                                       "__qualname__": functional.__qualname__})
    registered = keras.saving.get_registered_name(KerasSparkModel)
    package, name = registered.split(">", 1)
    keras.saving.register_keras_serializable(package, name)(saved)
    # Registering `saved` pointed the name at it: point the name back, loading gives KerasSparkModel.
    keras.saving.register_keras_serializable(package, name)(KerasSparkModel)
    return saved


@contextlib.contextmanager
def _as_functional(model):
    # The saved config names the class; for the length of the save it is Keras's own, but registered as ours.
    object.__setattr__(model, "__class__", _saved_class())
    try:
        yield
    finally:
        object.__setattr__(model, "__class__", KerasSparkModel)


def as_keras_spark_model(model) -> KerasSparkModel:
    """A functional keras.Model as a KerasSparkModel: the same layers and weights, the same
    compile config and the same optimizer (its state included)."""
    if (isinstance(model, KerasSparkModel) or not isinstance(model, _functional_class())
            or isinstance(model, keras.Sequential)):
        return model
    wrapped = KerasSparkModel(model.input, model.output, name=model.name)
    if model.compiled and model.get_compile_config():
        config = keras.saving.deserialize_keras_object(model.get_compile_config())
        wrapped.compile(**dict(config, optimizer=model.optimizer))
    return wrapped


def load_model(path: str, custom_objects: dict | None = None, **kwargs) -> KerasSparkModel:
    """keras.saving.load_model, giving back a KerasSparkModel (weights, compile config, optimizer state).

    `custom_objects` (dict, name -> class or function) are added to those of an active
    `keras.saving.custom_object_scope`, not put in their place.
    """
    from keras_spark.model_package import custom_object_scope

    with custom_object_scope(custom_objects):
        return as_keras_spark_model(keras.saving.load_model(path, **kwargs))

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

from keras_spark.quiet import import_backend

import_backend()  # Keras and its backend, without the backend's C++ start-up lines (KERAS_SPARK_VERBOSE=1 keeps them)

import keras  # noqa: E402

# Private to Keras: what keras.Model.__init__ uses to build a functional model (see KerasSparkModel.__new__).
from keras.src.models.functional import Functional  # noqa: E402
from keras.src.models.model import Trainer, functional_init_arguments  # noqa: E402

from keras_spark import binding  # noqa: E402
from keras_spark.spark import is_spark_dataframe  # noqa: E402

_UNSET = object()
_REGISTERED = ("keras_spark", "KerasSparkModel")  # KerasSparkModel's registered package and name


@keras.saving.register_keras_serializable(*_REGISTERED)
class KerasSparkModel(keras.Model):
    """A Keras functional model whose fit, evaluate and predict also take a PySpark DataFrame.

    Made as `keras.Model(inputs, outputs)` is: `KerasSparkModel(inputs, outputs, name=None)`.
    Inputs are fed from the columns named like the Keras inputs; each output's label is
    the column named like the output (`model.output_names`). Given anything that is not a
    Spark DataFrame, every method is `keras.Model`'s own. It can be subclassed as `keras.Model` is
    (an `__init__` and a `call` of your own), whatever was built before in the process: made from
    (inputs, outputs), a KerasSparkModel is an instance of a functional subclass of it, and
    KerasSparkModel itself is never changed into a functional class.

    Attributes:
        data_stats (dict): after a `fit` on a DataFrame, where the time went and what was trained
            (see `fit`).

    Example:
        ```python
        x = keras.Input(shape=(1,), name="x")
        model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(x))
        model.compile("adam", "mse")
        model.fit(df, batch_size=32, epochs=5)
        model.predict(df).select("x", "y", "model_output.y")
        ```
    """

    def __new__(cls, *args, **kwargs):
        # Made functionally, a KerasSparkModel is an instance of a class that already is Keras's Functional:
        # keras.Model.__init__ would otherwise rewrite KerasSparkModel's own bases (its
        # inject_functional_model_class), and every later subclass would be functional too.
        if cls is KerasSparkModel and _functional_arguments(args, kwargs):
            cls = _FunctionalKerasSparkModel
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, *args, **kwargs):
        if not _functional_arguments(args, kwargs):
            super().__init__(*args, **kwargs)  # a subclass with its own call(), as keras.Model's
            return
        # What keras.Model.__init__ does with (inputs, outputs), with Functional put under the instance's
        # class without rewriting KerasSparkModel's bases.
        _with_functional(type(self))
        Trainer.__init__(self)
        Functional.__init__(self, *args, **kwargs)

    def get_config(self):
        return super().get_config()

    # -- training -------------------------------------------------------------------
    def fit(self, x=None, y=None, batch_size=None, epochs=1, *args, partition_col=_UNSET,
            num_parallel_calls=_UNSET, cache_dir=_UNSET, num_workers=_UNSET, allow_non_finite=_UNSET,
            custom_objects=_UNSET, image_resize=_UNSET, row_id_col=_UNSET, checkpoint=_UNSET, **kwargs):
        """keras.Model.fit; with a Spark DataFrame `x`, trains on its columns.

        Given anything but a Spark DataFrame, this is `keras.Model.fit` exactly (and the
        Spark-only keywords below are a TypeError). With a DataFrame, each Keras input is fed
        from the column of its name and each output's label is the column named like the
        output (`model.output_names`); one Spark pass writes a local cache, then Keras's own
        loop trains from it, every epoch one pass over every row. Every other `keras.Model.fit`
        argument (`callbacks`, `verbose`, `initial_epoch`, `steps_per_epoch`, `validation_batch_size`,
        `validation_steps`, ...) is Keras's own. See the user guide, [Columns and kinds](../guide/columns.md).

        Args:
            x (pyspark.sql.DataFrame): the training rows (classic or Spark Connect).
            y (None): must be None with a DataFrame: labels are the columns named like the outputs.
            batch_size (int | None): rows a step (default 32); with `num_workers` > 1 the global batch,
                which must split evenly over the workers.
            epochs (int): passes over every row.
            partition_col (str): default "partition_id". The column of integer partition ids 0..n; each id
                is one unit of streaming (up to `num_parallel_calls` ids are read at once and their rows
                interleaved). Left unset, with no "partition_id" column in the DataFrame, fit makes one: a
                hash of each row's id into `keras_spark.spark.training.MADE_PARTITION_IDS` (8) ids, as
                KerasEstimator does; `data_stats["partitions"]` is the number of ids and
                `data_stats["partition_ids_made"]` says whether fit made them. A column named here is never
                made: the DataFrame (and `validation_data`) must have it, or fit raises a BindingError.
            num_parallel_calls (int | None): partition ids read and interleaved at once; default one per core.
            cache_dir (str | None): where the one Spark pass leaves its cache; default a temporary
                directory. It is removed after fit. Executors write there when they can see it;
                otherwise the rows travel to the driver, which writes it (see Spark Connect).
            num_workers (int): default 1, train on the driver. N > 1: N data-parallel processes in one
                Spark barrier stage on the executors, under the JAX or PyTorch backend (TensorFlow is refused,
                with the reason); see [num_workers](../guide/num-workers.md).
            allow_non_finite (bool): default False: a NaN or infinite feature or label is a DataError
                naming the column and row, before the first step. True keeps Keras's own behaviour.
            custom_objects (dict[str, object] | None): custom layers, losses and metrics the `num_workers`
                processes need beyond those registered with `keras.saving.register_keras_serializable`
                (which travel by themselves).
            image_resize (str | None): None (sizes must match), "resize" (bilinear) or "center_crop": how
                image columns (binary JPEG/PNG, Spark's image struct) meet their input's (height, width).
                See [Images](../guide/images.md).
            row_id_col (str | None): default None (a binaryFile frame's `path`, else none): a column whose
                value identifies a row. A bad value is a DataError naming its row by partition id, its
                position among that id's rows in the DataFrame's order (from 0), and this column's value
                (with `num_workers` > 1, by its place in a batch).
            checkpoint (str | os.PathLike | keras_spark.Checkpoint | None): default None. Where to commit
                a checkpoint after every epoch (a local or mounted path, `s3://`, `gs://`, `hdfs://`,
                `abfs://`, ...) and resume from: a fit given a location holding checkpoints of the same
                model, data and arguments restores the last good one (weights, optimizer, RNG states) and
                trains from the next epoch; the returned History covers every epoch once. Driver only
                (num_workers=1), not with `steps_per_epoch`. See [Checkpoints](../guide/checkpoints.md).

        Keyword Args:
            sequence_length (int | None): default None. Pad (or cut) every variable-length
                column (an input of shape `(None, ...)`) to this length; None pads each batch to its
                longest row. See [Sequences](../guide/sequences.md).
            padding (str): "post" (default) or "pre": where padding goes, as
                `keras.utils.pad_sequences`.
            truncating (str | None): default None: a row longer than `sequence_length` is a
                DataError naming the column and row; "pre" or "post" cuts it there.
            pad_value (float): default 0: the padding value (`mask_zero` and `Masking` read 0 as
                padding).
            bucket_by_length (bool | list[int]): default False. True (or a list of length
                boundaries) batches rows of similar length, as tf.data's `bucket_by_sequence_length`,
                every row still once an epoch.
            shuffle (bool): default True: rows shuffled across the open partition ids and the id order
                reshuffled each epoch, seeded by `keras.utils.set_random_seed`.
            shuffle_seed (int | None): fixes the shuffle order without touching the global
                `random` (KerasEstimator passes its `seed`).
            sample_weight (str | None): with a DataFrame, the *name* of a column of row weights
                (non-negative, finite), as Spark ML's `weightCol`. `validation_data` is not weighted.
            class_weight (dict[int, float] | None): as with NumPy data; one output, not with `sample_weight`.
            validation_data (pyspark.sql.DataFrame | None): a DataFrame with the same columns, evaluated
                after every epoch (partition ids made too when it has none). `validation_split` is
                refused: use `df.randomSplit`.

        Returns:
            keras.callbacks.History: Keras's History. `model.data_stats` (dict) then says where the
                time went and what was trained: `spark_pass_s`, `train_s`, `consumer_wait_s`, `rows` (rows
                in the steps Keras completed), `rows_prefetched`, `partitions`, `partition_ids_made`,
                `cache_path`, `distinct_shapes` (int: the distinct batch shapes fed; JAX compiles a step for
                each), and the padding figures of sequence columns (`padding_fraction`, float: pad steps /
                all steps served). With `checkpoint`: `checkpoint_s` (seconds committing), `checkpoints_written`,
                `checkpoint_bytes` (written in all), `resume_s`, `resumed_from` (the checkpoint's name or None),
                `steps_replayed` (0). With `verbose` on, fit prints it in one line.

        Raises:
            keras_spark.errors.BindingError: a column is missing (the `partition_col` named too) or cannot feed
                its input (before Spark runs).
            keras_spark.errors.DataError: a value cannot be fed (after the Spark pass, before the first step).
            keras_spark.errors.TrainingError: a `num_workers` training process failed.
            keras_spark.errors.CheckpointMismatchError: the checkpoint location holds another run's checkpoint.
            keras_spark.errors.CheckpointStoreError: the checkpoint store failed on every retry.
            TypeError: a Spark-only keyword with data that is not a DataFrame, or a bad argument type.
            ValueError: a bad argument value (`batch_size=0`, `num_workers=-1`, `validation_split`).

        Example:
            ```python
            model.fit(df, batch_size=64, epochs=5)                      # partition ids made if absent
            model.fit(df, epochs=5, sequence_length=128, truncating="post", bucket_by_length=True)
            ```
        """
        spark_only = dict(partition_col=partition_col, num_parallel_calls=num_parallel_calls, cache_dir=cache_dir,
                          num_workers=num_workers, allow_non_finite=allow_non_finite, custom_objects=custom_objects,
                          image_resize=image_resize, row_id_col=row_id_col, checkpoint=checkpoint)
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

        One Spark pass writes the cache, then Keras's own `evaluate` reads it in row order. Every
        other `keras.Model.evaluate` argument (`verbose`, `steps`, `return_dict`, ...) is Keras's own.

        Args:
            x (pyspark.sql.DataFrame): the rows to evaluate on.
            y (None): must be None with a DataFrame.
            batch_size (int | None): rows a step (default 32).
            partition_col (str): as in `fit`: left unset, "partition_id", made (hashed row ids) when the
                DataFrame has no such column; a column named here must exist (a BindingError otherwise).
            cache_dir (str | None): as in `fit`.
            allow_non_finite (bool): as in `fit`.
            image_resize (str | None): as in `fit`.
            row_id_col (str | None): as in `fit`.

        Keyword Args:
            sequence_length (int | None): as in `fit`.
            padding (str): as in `fit`.
            truncating (str | None): as in `fit`.
            pad_value (float): as in `fit`.
            bucket_by_length (bool | list[int]): as in `fit`.
            sample_weight (str | None): the name of a column of row weights.

        Returns:
            float | list[float] | dict[str, float]: what `keras.Model.evaluate` returns.

        Raises:
            keras_spark.errors.BindingError: as in `fit`.
            keras_spark.errors.DataError: as in `fit`.
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
    def predict(self, x, batch_size=None, *args, custom_objects=_UNSET, image_resize=_UNSET,
                output_col: str = "model_output", **kwargs):
        """keras.Model.predict; with a Spark DataFrame, a lazy DataFrame scored on the executors.

        The result keeps every column of `x`, row for row, and adds a struct column
        `model_output` (or `output_col`) with one field per model output, e.g. `model_output.label1`: a `()` or `(1,)`
        output is a number, `(k,)` an array, `(k, m)` an array of arrays; a per-step output of a
        sequence model is cut back to each row's own length. A streaming DataFrame
        (`spark.readStream`) gives a streaming result (see [Streaming predict](../guide/streaming.md)).
        The model travels to the executors once (its `.keras` bytes and custom objects) and each
        Python worker opens it once.

        Args:
            x (pyspark.sql.DataFrame): the rows to score, batch or streaming.
            batch_size (int | None): rows a call into the backend on the executors. Default: each Arrow
                batch in pieces of about `keras_spark.spark.score.PREDICT_BATCH_BYTES` (4 MB) of input, at
                least 32 rows and at most 8,192; Keras's default of 32 rows is several times slower here.
            custom_objects (dict[str, object] | None): objects the model needs beyond those registered with
                `keras.saving.register_keras_serializable` (which travel by themselves).
            image_resize (str | None): as in `fit` (pass the same value).
            output_col (str): the name of the struct column added (default "model_output"); another name
                lets a scored DataFrame be scored again, or two models score one DataFrame.

        Keyword Args:
            sequence_length (int | None): as in `fit`.
            padding (str): as in `fit`.
            truncating (str | None): as in `fit`.
            pad_value (float): as in `fit`.
            bucket_by_length (bool | list[int]): accepted as in `fit` (scoring keeps row order).

        Returns:
            pyspark.sql.DataFrame: lazy; nothing runs until an action (`show`, `write`, `collect`).

        Raises:
            keras_spark.errors.BindingError: a column is missing or cannot feed its input (at once).
            keras_spark.errors.ModelPackageError: a custom object cannot be pickled (at once, on the driver).
        """
        if not is_spark_dataframe(x):
            named = _UNSET if output_col == "model_output" else output_col
            _reject_spark_keywords(dict(custom_objects=custom_objects, image_resize=image_resize, output_col=named),
                                   "predict")
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
        return predict_dataframe(self, x, bindings, batch_size, custom_objects=objects, output_col=output_col)

    # -- files ----------------------------------------------------------------------
    def save(self, filepath, *args, **kwargs):
        """keras.Model.save, written as a functional model registered as a KerasSparkModel.

        `keras.saving.load_model` gives a KerasSparkModel again where keras_spark is imported, and a
        functional `keras.Model` where keras-spark is not installed (a serving process, MLflow's workers).
        """
        if type(self) is not _FunctionalKerasSparkModel:  # a user's subclass: its own class is its config
            return super().save(filepath, *args, **kwargs)
        with _as_functional(self):
            return _functional_class().save(self, filepath, *args, **kwargs)


def _functional_arguments(args, kwargs) -> bool:
    """Whether a model class is being called as keras.Model(inputs, outputs) is (Keras's own test)."""
    return functional_init_arguments(args, kwargs)


def _with_functional(cls: type) -> None:
    """A user's subclass of KerasSparkModel made from (inputs, outputs) becomes functional, as Keras makes a
    keras.Model subclass functional: rebased on the functional KerasSparkModel, KerasSparkModel left as it is."""
    if not issubclass(cls, Functional):
        cls.__bases__ = tuple(_functional_base(base) for base in cls.__bases__)


def _functional_base(base: type) -> type:
    if base is KerasSparkModel:
        return _FunctionalKerasSparkModel
    if issubclass(base, KerasSparkModel):
        _with_functional(base)
    return base


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
    keras.saving.register_keras_serializable(*_REGISTERED)(saved)
    # Registering `saved` pointed the name at it: point the name back, loading gives KerasSparkModel.
    keras.saving.register_keras_serializable(*_REGISTERED)(KerasSparkModel)
    return saved


@contextlib.contextmanager
def _as_functional(model):
    # The saved config names the class; for the length of the save it is Keras's own, but registered as ours.
    object.__setattr__(model, "__class__", _saved_class())
    try:
        yield
    finally:
        object.__setattr__(model, "__class__", _FunctionalKerasSparkModel)


class _FunctionalKerasSparkModel(KerasSparkModel, Functional):
    """A KerasSparkModel made from (inputs, outputs): KerasSparkModel and Keras's Functional.

    Named KerasSparkModel and registered under its name, so saved configs, `repr` and default model
    names read as KerasSparkModel's, and what is saved loads as a KerasSparkModel.
    """


_FunctionalKerasSparkModel.__name__ = "KerasSparkModel"
keras.saving.register_keras_serializable(*_REGISTERED)(_FunctionalKerasSparkModel)  # the name it saves under
keras.saving.register_keras_serializable(*_REGISTERED)(KerasSparkModel)  # the class that name loads as


def as_keras_spark_model(model) -> KerasSparkModel:
    """A functional keras.Model as a KerasSparkModel: the same layers and weights, the same
    compile config and the same optimizer (its state included).

    Args:
        model (keras.Model): a functional model; a KerasSparkModel, a Sequential model or a
            subclassed model is given back unchanged.

    Returns:
        KerasSparkModel | keras.Model: the wrapped model (or `model` itself, as above).
    """
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

    Args:
        path (str): a `.keras` file, as `KerasSparkModel.save` or `keras.Model.save` writes it.
        custom_objects (dict[str, object] | None): objects the file names that are not registered; added
            to those of an active `keras.saving.custom_object_scope`, not put in their place.
        **kwargs (Any): `keras.saving.load_model`'s other arguments (`compile`, `safe_mode`).

    Returns:
        KerasSparkModel: the model, ready for `fit`, `evaluate` and `predict` on DataFrames.
    """
    from keras_spark.model_package import custom_object_scope

    with custom_object_scope(custom_objects):
        return as_keras_spark_model(keras.saving.load_model(path, **kwargs))

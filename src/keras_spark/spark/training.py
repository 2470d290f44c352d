"""fit and evaluate on a Spark DataFrame: bind, one Spark pass to the cache, then Keras's own loop.

Everything that can be wrong with the schema is raised by `binding` before Spark
runs; everything wrong with the values is raised after the one Spark pass and
before the first training step.
"""

from __future__ import annotations

import contextlib
import numbers
import random
import time

import keras

from keras_spark import binding, sequences
from keras_spark.errors import BindingError
from keras_spark.feed import BatchFeed, batches_per_pull, default_parallelism, keras_input
from keras_spark.kinds import data_parallel_refusal
from keras_spark.progress import RowsTrained, with_callback
from keras_spark.shutdown import terminate_cleanly
from keras_spark.spark import is_spark_dataframe
from keras_spark.spark.extract import extract
from keras_spark.weights import bind_weight_column, check_weight_values, class_weight_table

MADE_PARTITION_IDS = 8
"""int: partition ids fit/evaluate make when the DataFrame has no `partition_col` column (as KerasEstimator)."""

DEFAULT_PARTITION_COL = "partition_id"
"""str: the partition id column fit, evaluate and KerasEstimator read when none is named (made when absent)."""


def check_named_partition_column(columns: list[str], partition_col: str, keyword: str = "partition_col",
                                 frame: str = "the DataFrame") -> None:
    """A BindingError when a partition column the user named is not among `columns`: a named column is never
    made in its place (a typo would train on made-up ids). `keyword` is how the user named it."""
    if partition_col not in columns:
        raise BindingError(
            f"{keyword}='{partition_col}' names a partition id column that {frame} does not have; columns are "
            f"{list(columns)}. Name a column of integer partition ids, or leave {keyword} unset to use "
            f"'{DEFAULT_PARTITION_COL}', which is made from a hash of each row's id when absent")


def with_partition_ids(df, partition_col: str | None = None, seed: int = 0, count: int = MADE_PARTITION_IDS, *,
                       keyword: str = "partition_col", frame: str = "the DataFrame"):
    """`df` with its partition id column: the one named, or, with `partition_col` None, DEFAULT_PARTITION_COL,
    made from a hash of each row's id into `count` ids when the DataFrame has none.

    Returns (DataFrame, the column's name, whether the ids were made). A named column must exist
    (check_named_partition_column; `keyword` and `frame` word its error). fit, evaluate and KerasEstimator
    (its `numPartitions` and `seed`) make ids this one way.
    """
    if partition_col is not None:
        check_named_partition_column(df.columns, partition_col, keyword, frame)
        return df, partition_col, False
    if DEFAULT_PARTITION_COL in df.columns:
        return df, DEFAULT_PARTITION_COL, False
    from pyspark.sql import functions as F

    ids = F.pmod(F.xxhash64(F.monotonically_increasing_id(), F.lit(seed)), F.lit(count))
    return df.withColumn(DEFAULT_PARTITION_COL, ids.cast("int")), DEFAULT_PARTITION_COL, True


def _bind(model, df, partition_col: str, with_labels: bool, sample_weight=None, sequence_options=None,
          image_resize=None):
    binding.check_partition_column(df.schema, partition_col)
    bound = binding.bind_inputs(model, df.schema, image_resize)
    if with_labels:
        bound += binding.bind_labels(model, df.schema, keras.config.floatx())
    if sample_weight is not None:
        bound.append(bind_weight_column(df.schema, sample_weight, keras.config.floatx()))
    return sequences.with_options(bound, sequence_options or sequences.DEFAULT_OPTIONS)


def _check_class_weight(model, sample_weight, class_weight) -> None:
    """The rules Keras applies to NumPy data, applied before Spark runs."""
    if class_weight is None:
        return
    if sample_weight is not None:
        raise ValueError("pass sample_weight or class_weight, not both (as Keras does for NumPy data)")
    if len(model.output_names) != 1:
        raise ValueError(f"class_weight is only supported for models with a single output; this model has "
                           f"{model.output_names}")
    class_weight_table(class_weight)


def _reject(name: str, value, why: str) -> None:
    if value is not None and value is not False and not (isinstance(value, float) and value == 0.0):
        raise ValueError(f"{name} is not supported with a Spark DataFrame: {why}")


def batch_size_or_default(value, name: str = "batch_size") -> int:
    """Keras's default of 32 for None; anything but a positive integer is refused (not silently 32)."""
    if value is None:
        return 32
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer; got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value}")
    return int(value)


@contextlib.contextmanager
def _cached(model, df, bindings, partition_col, cache_dir, allow_non_finite=False, row_id_col=None):
    cached = extract(df, bindings, partition_col, cache_dir=cache_dir, allow_non_finite=allow_non_finite,
                     row_id_col=row_id_col)
    try:
        binding.check_label_shapes(model, cached.bindings, cached.shapes)
        check_weight_values(cached)
        yield cached
    finally:
        cached.remove()


def _feed(model, cached, batch_size, **kwargs) -> BatchFeed:
    # Ragged columns are padded per pull: one batch a pull keeps the padding (and buckets) per batch.
    pull = 1 if sequences.has_ragged(cached.bindings) else batches_per_pull(batch_size * cached.row_bytes())
    return BatchFeed(model, cached, batch_size=batch_size, batches_per_pull=pull, **kwargs)


def _report(stats: dict) -> str:
    waited = stats["consumer_wait_s"] / max(stats["train_s"], 1e-9)
    verdict = "input-bound" if waited > 0.2 else "not input-bound"
    return (
        f"keras-spark: Spark pass {stats['spark_pass_s']:.2f}s; {stats['rows']:,} rows trained "
        f"({stats['rows_prefetched']:,} rows, {stats['bytes'] / 1e6:,.1f} MB read ahead in {stats['batches']:,} "
        f"pulls); training {stats['train_s']:.2f}s, "
        f"of which waiting for data {stats['consumer_wait_s']:.3f}s ({waited:.1%}): {verdict}"
    )


def _checkpoints(checkpoint, num_workers: int, steps_per_epoch):
    """The fit's DriverCheckpoints (None without `checkpoint`); refused where resume could not be exact."""
    if checkpoint is None:
        return None
    if num_workers > 1:
        raise ValueError("checkpoint is not yet supported with num_workers > 1; train on the driver "
                         "(num_workers=1) or use keras.callbacks.BackupAndRestore (see the num_workers guide)")
    if steps_per_epoch is not None:
        raise ValueError(f"steps_per_epoch={steps_per_epoch} is not supported with checkpoint: each epoch is one "
                         f"pass over every row, so that a resumed epoch starts where the data's order does")
    from keras_spark.checkpoints.driver import DriverCheckpoints

    return DriverCheckpoints(checkpoint)


def fit_dataframe(model, df, *, y=None, batch_size=None, epochs=1, super_fit, partition_col=None,
                  num_parallel_calls=None, cache_dir=None, shuffle=True, validation_data=None,
                  validation_split=0.0, validation_batch_size=None, sample_weight=None, initial_epoch=0,
                  steps_per_epoch=None, validation_steps=None, num_workers=1, allow_non_finite=False,
                  class_weight=None, custom_objects=None, image_resize=None, shuffle_seed=None, row_id_col=None,
                  checkpoint=None, **keras_kwargs):
    """Model.fit on a DataFrame: labels are the columns named like the outputs, weights a column's name.

    `shuffle_seed` fixes the shuffle order without touching the global `random` (pyspark.ml stages
    fit in several threads at once under a CrossValidator). `partition_col` None: DEFAULT_PARTITION_COL,
    made when absent; a named one must exist (with_partition_ids). `checkpoint` (a location or a
    keras_spark.Checkpoint): commit after every epoch there, and resume from its last good checkpoint.
    """
    _reject("y", y, "labels are the columns named like the model's outputs")
    _check_class_weight(model, sample_weight, class_weight)
    sequence_options = sequences.SequenceOptions.pop_from(keras_kwargs)
    _reject("validation_split", validation_split, "pass validation_data=<DataFrame> (e.g. from df.randomSplit)")
    batch_size = batch_size_or_default(batch_size)
    named = partition_col
    df, partition_col, ids_made = with_partition_ids(df, named)
    if is_spark_dataframe(validation_data):
        validation_data, _, _ = with_partition_ids(validation_data, named, frame="validation_data")
    if validation_batch_size is not None:
        validation_batch_size = batch_size_or_default(validation_batch_size, "validation_batch_size")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int):
        raise TypeError(f"num_workers must be a positive integer; got {num_workers!r}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be a positive integer; got {num_workers!r}")
    train_bindings = _bind(model, df, partition_col, with_labels=True, sample_weight=sample_weight,
                           sequence_options=sequence_options, image_resize=image_resize)
    refusal = data_parallel_refusal(train_bindings, num_workers) if num_workers > 1 else None
    if refusal:  # a kind that trains on the driver only (sparse, string: ColumnKind.data_parallel_refusal)
        raise ValueError(refusal)
    spark_validation = validation_data is not None and is_spark_dataframe(validation_data)
    val_bindings = (_bind(model, validation_data, partition_col, True, sequence_options=sequence_options,
                          image_resize=image_resize)
                    if spark_validation else None)
    checkpoints = _checkpoints(checkpoint, num_workers, steps_per_epoch)
    if num_workers > 1:
        from keras_spark.spark.distributed import fit_distributed

        _reject("steps_per_epoch", steps_per_epoch, "each epoch is one pass over every row")
        _reject("validation_steps", validation_steps, "validation is one pass over every validation row")
        history = fit_distributed(
            model, df, train_bindings, num_workers=num_workers, batch_size=batch_size, epochs=epochs,
            partition_col=partition_col, num_parallel_calls=num_parallel_calls, cache_dir=cache_dir,
            shuffle=shuffle, validation_data=validation_data, validation_batch_size=validation_batch_size,
            initial_epoch=initial_epoch, allow_non_finite=allow_non_finite, class_weight=class_weight,
            custom_objects=custom_objects, **keras_kwargs,
        )
        model.data_stats["partition_ids_made"] = ids_made
        return history
    seed = random.getrandbits(63) if shuffle_seed is None else int(shuffle_seed)  # set_random_seed seeds `random`

    verbose = keras_kwargs.get("verbose", "auto")
    with contextlib.ExitStack() as stack:
        stack.enter_context(terminate_cleanly())
        started = time.perf_counter()
        cached = stack.enter_context(
            _cached(model, df, train_bindings, partition_col, cache_dir, allow_non_finite, row_id_col))
        if spark_validation:
            val_cached = stack.enter_context(
                _cached(model, validation_data, val_bindings, partition_col, cache_dir, allow_non_finite, row_id_col))
        train_parallel_calls = num_parallel_calls
        if checkpoints is not None:  # resumed: the model restored; the data's order and first epoch the checkpoint's
            seed, train_parallel_calls, initial_epoch = checkpoints.start(
                model, cached, seed, default_parallelism(num_parallel_calls, max(1, len(cached.partitions))),
                initial_epoch, dict(batch_size=batch_size, shuffle=shuffle, shuffle_seed=shuffle_seed,
                                    num_parallel_calls=num_parallel_calls, class_weight=class_weight,
                                    sample_weight=sample_weight, sequence_options=sequence_options,
                                    image_resize=image_resize, partition_col=partition_col,
                                    validation=spark_validation))
            keras_kwargs["callbacks"] = [*(keras_kwargs.get("callbacks") or []), checkpoints.callback()]
        feed = _feed(model, cached, batch_size, shuffle=shuffle, seed=seed,
                     num_parallel_calls=train_parallel_calls, first_epoch=initial_epoch, class_weight=class_weight)
        stack.callback(feed.close)
        if spark_validation:
            val_feed = _feed(model, val_cached, validation_batch_size or batch_size, shuffle=False, seed=0,
                             num_parallel_calls=num_parallel_calls)
            stack.callback(val_feed.close)
            validation_data, validation_steps = keras_input(val_feed), validation_steps or val_feed.steps_per_epoch
        spark_pass_s = time.perf_counter() - started
        trained = RowsTrained(feed.rows_at_step, feed.steps_per_epoch)
        keras_kwargs["callbacks"] = with_callback(keras_kwargs.get("callbacks"), trained, model)
        history = super_fit(
            keras_input(feed, endless=steps_per_epoch is not None), epochs=epochs,
            steps_per_epoch=steps_per_epoch or feed.steps_per_epoch,
            validation_data=validation_data, validation_steps=validation_steps, initial_epoch=initial_epoch,
            shuffle=False, **keras_kwargs,
        )
        if checkpoints is not None:
            history = checkpoints.complete(history)
        served = feed.stats()  # read ahead of training: the prefetch queues run past the last step
        model.data_stats = dict(served, rows=trained.rows, rows_prefetched=served["rows"], steps=trained.steps,
                                spark_pass_s=spark_pass_s, train_s=time.perf_counter() - started - spark_pass_s,
                                cache_path=cached.path, partitions=len(cached.partition_ids),
                                partition_ids_made=ids_made)
        model.data_stats.update(sequences.padding_stats(cached, feed.batch_size, served))
        if checkpoints is not None:
            model.data_stats.update(checkpoints.stats())
        if spark_validation:
            model.data_stats["validation_cache_path"] = val_cached.path
    if verbose not in (0, "silent"):
        print(_report(model.data_stats))
    return history


def evaluate_dataframe(model, df, *, y=None, batch_size=None, super_evaluate, partition_col=None,
                       cache_dir=None, sample_weight=None, steps=None, allow_non_finite=False, image_resize=None,
                       row_id_col=None, **keras_kwargs):
    """Model.evaluate on a DataFrame, in row order, on the driver; `sample_weight` names a weight column."""
    _reject("y", y, "labels are the columns named like the model's outputs")
    df, partition_col, _ = with_partition_ids(df, partition_col)
    bindings = _bind(model, df, partition_col, with_labels=True, sample_weight=sample_weight,
                     sequence_options=sequences.SequenceOptions.pop_from(keras_kwargs), image_resize=image_resize)
    with terminate_cleanly(), _cached(model, df, bindings, partition_col, cache_dir, allow_non_finite,
                                      row_id_col) as cached:
        feed = _feed(model, cached, batch_size_or_default(batch_size), shuffle=False, seed=0, num_parallel_calls=1)
        try:
            return super_evaluate(keras_input(feed), steps=steps or feed.steps_per_epoch, **keras_kwargs)
        finally:
            feed.close()

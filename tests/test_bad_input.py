"""Bad input: a Python exception naming the column, the expected and the found, before training."""

import keras
import pytest
from builders import numeric_frame
from pyspark.sql import functions as F

from keras_spark.errors import BindingError, DataError
from keras_spark.models import KerasSparkModel


def _model(shape=(4,), name="x", label="y"):
    x = keras.Input(shape=shape, name=name)
    flat = keras.layers.Flatten()(x) if len(shape) > 1 else x
    if None in shape:  # a variable-length input: average it to one number
        flat = keras.layers.GlobalAveragePooling1D()(keras.layers.Reshape((-1, 1))(x))
    model = KerasSparkModel(x, keras.layers.Dense(1, name=label)(flat))
    model.compile("sgd", "mse")
    return model


def _fit_fails(model, df, error, *patterns, batch_size_override=8, **kwargs):
    with pytest.raises(error) as caught:
        model.fit(df, batch_size=batch_size_override, epochs=1, verbose=0, **kwargs)
    message = str(caught.value)
    for pattern in patterns:
        assert pattern in message, message
    assert int(model.optimizer.iterations.numpy()) == 0  # no training step ran
    return message


@pytest.fixture(scope="module")
def frame(spark):
    return numeric_frame(spark, rows=40, partitions=2)


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_missing_input_column(frame):
    _fit_fails(_model(name="pixels"), frame, BindingError, "'pixels'", "columns are")


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_missing_label_column(frame):
    _fit_fails(_model(label="target"), frame, BindingError, "'target'", "label")


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_unnamed_input_matches_no_column(frame):
    x = keras.Input(shape=(4,))
    model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(x))
    model.compile("sgd", "mse")
    _fit_fails(model, frame, BindingError, "no name of its own", "name=")


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_string_column_for_a_float_input(frame):
    df = frame.withColumn("x", F.lit("text"))
    _fit_fails(_model(), df, BindingError, "'x'", "string", "expected a number")


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_string_label_column_is_told_to_cast_or_index_the_label(frame):
    df = frame.withColumn("y", F.lit("1.5"))
    message = _fit_fails(_model(), df, BindingError, "label column 'y'", "string", "cast('double')", "StringIndexer")
    assert "TextVectorization" not in message and "dtype='string'" not in message  # advice for inputs


@pytest.mark.backend_independent
def test_arrays_of_the_wrong_length(frame):
    df = frame.withColumn("x", F.slice("x", 1, 3))
    _fit_fails(_model(), df, DataError, "'x'", "4", "3")


@pytest.mark.backend_independent
def test_steps_of_varying_length_in_a_sequence(frame):
    # Rows of different lengths feed a (None, ...) input (tests/test_sequences.py); each step's shape is fixed.
    step = F.when(F.col("id") % 7 == 3, F.slice("x", 1, 3)).otherwise(F.col("x"))
    df = frame.withColumn("x", F.array(F.col("x"), step))
    x = keras.Input(shape=(None, 4), name="x")
    model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(keras.layers.GlobalAveragePooling1D()(x)))
    model.compile("sgd", "mse")
    _fit_fails(model, df, DataError, "'x'", "length 4", "found length 3", "(step 1)")


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_nested_depth_does_not_match_the_input_rank(frame):
    df = frame.withColumn("x", F.array(F.col("x"), F.col("x")))
    _fit_fails(_model(), df, BindingError, "'x'", "array<array<float>>", "(4,)")


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_input_rank_higher_than_the_column(frame):
    _fit_fails(_model(shape=(2, 2)), frame, BindingError, "'x'", "(2, 2)")


@pytest.mark.backend_independent
def test_null_feature(frame):
    df = frame.withColumn("x", F.when(F.col("id") == 17, F.lit(None)).otherwise(F.col("x")))
    _fit_fails(_model(), df, DataError, "'x'", "null")


@pytest.mark.backend_independent
def test_null_inside_an_array(frame):
    df = frame.withColumn("x", F.when(F.col("id") == 5, F.array(F.lit(1.0), F.lit(None), F.lit(2.0), F.lit(3.0)))
                          .otherwise(F.col("x")))
    _fit_fails(_model(), df, DataError, "'x'", "null")


@pytest.mark.backend_independent
def test_null_label(frame):
    df = frame.withColumn("y", F.when(F.col("id") == 9, F.lit(None)).otherwise(F.col("y")))
    _fit_fails(_model(), df, DataError, "'y'", "null")


@pytest.mark.backend_independent
def test_non_integer_partition_id(frame):
    df = frame.withColumn("partition_id", F.col("partition_id") + 0.5)
    _fit_fails(_model(), df, BindingError, "'partition_id'", "double", "integer")


@pytest.mark.backend_independent
def test_negative_partition_id(frame):
    df = frame.withColumn("partition_id", F.col("partition_id") - 1)
    _fit_fails(_model(), df, DataError, "partition_id", "negative")


@pytest.mark.backend_independent
def test_empty_dataframe(frame):
    _fit_fails(_model(), frame.limit(0), DataError, "no rows")


@pytest.mark.backend_independent
def test_spark_keywords_with_numpy_data_are_rejected_like_keras_would():
    import numpy as np

    with pytest.raises(TypeError, match="partition_col"):
        _model().fit(np.zeros((4, 4)), np.zeros(4), partition_col="p", verbose=0)


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_predict_names_a_missing_input_column(frame):
    with pytest.raises(BindingError, match="'pixels'"):
        _model(name="pixels").predict(frame)


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_label_wider_than_its_output(frame):
    df = frame.withColumn("y", F.array(F.col("y"), F.col("y")))
    _fit_fails(_model(), df, DataError, "'y'", "(2,)", "(1,)")


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_label_wider_than_its_output_in_evaluate(frame):
    df = frame.withColumn("y", F.array(F.col("y"), F.col("y")))
    with pytest.raises(DataError, match="'y'"):
        _model().evaluate(df, batch_size=8, verbose=0)


def test_integer_class_label_beside_a_k_wide_output_trains(frame):
    x = keras.Input(shape=(4,), name="x")
    model = KerasSparkModel(x, keras.layers.Dense(3, activation="softmax", name="y")(x))
    model.compile("sgd", "sparse_categorical_crossentropy")
    df = frame.withColumn("y", (F.col("id") % 3).cast("int"))
    model.fit(df, batch_size=8, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 5


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_float_label_beside_a_k_wide_output_is_refused(frame):
    x = keras.Input(shape=(4,), name="x")
    model = KerasSparkModel(x, keras.layers.Dense(3, name="y")(x))
    model.compile("sgd", "mse")
    _fit_fails(model, frame, DataError, "'y'", "(3,)")


@pytest.mark.backend_independent
@pytest.mark.session_independent
@pytest.mark.parametrize("bad", [0, -4])
def test_batch_size_that_is_not_positive_is_refused(frame, bad):
    _fit_fails(_model(), frame, ValueError, "batch_size", str(bad), batch_size_override=bad)


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_batch_size_that_is_not_an_integer_is_refused(frame):
    _fit_fails(_model(), frame, TypeError, "batch_size", "2.5", batch_size_override=2.5)


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_predict_batch_size_zero_is_refused(frame):
    with pytest.raises(ValueError, match="batch_size"):
        _model().predict(frame, batch_size=0)


@pytest.mark.backend_independent
def test_nan_feature_names_the_column_and_row(frame):
    df = frame.withColumn("x", F.when(F.col("id") == 13, F.array(*[F.lit(float("nan"))] * 4)).otherwise(F.col("x")))
    _fit_fails(_model(), df, DataError, "'x'", "NaN or infinite", "at row", "allow_non_finite=True")


@pytest.mark.backend_independent
def test_a_bad_row_is_named_by_partition_id_and_its_position_among_that_ids_rows(frame):
    df = frame.withColumn("x", F.when(F.col("id") == 33, F.array(*[F.lit(float("nan"))] * 4)).otherwise(F.col("x")))
    ids_of_partition_1 = [r.id for r in df.where(F.col("partition_id") == 1).select("id").collect()]
    position = ids_of_partition_1.index(33)  # the DataFrame's order, from 0
    _fit_fails(_model(), df, DataError, f"at row {position} of partition id 1;", "in the DataFrame's order")


@pytest.mark.backend_independent
def test_row_id_col_names_the_bad_row_by_its_value(frame):
    df = frame.withColumn("y", F.when(F.col("id") == 21, F.lit(float("inf"))).otherwise(F.col("y")))
    with pytest.raises(DataError, match=r"column 'y' has a NaN or infinite value \(inf\) at row \d+ of partition "
                                        r"id 1 \(id=21\)"):
        _model().evaluate(df, verbose=0, row_id_col="id")
    with pytest.raises(BindingError, match="row_id_col='key' names no column"):
        _model().fit(df, verbose=0, row_id_col="key")


@pytest.mark.backend_independent
def test_infinite_label_is_an_error_too(frame):
    df = frame.withColumn("y", F.when(F.col("id") == 3, F.lit(float("inf"))).otherwise(F.col("y")))
    _fit_fails(_model(), df, DataError, "'y'", "NaN or infinite")


def test_allow_non_finite_keeps_keras_behaviour(frame):
    df = frame.withColumn("y", F.when(F.col("id") == 3, F.lit(float("nan"))).otherwise(F.col("y")))
    model = _model()
    history = model.fit(df, batch_size=8, epochs=1, verbose=0, allow_non_finite=True)
    assert len(history.history["loss"]) == 1


@pytest.mark.backend_independent
def test_value_beyond_the_input_dtype_is_an_error(frame):
    x = keras.Input(shape=(), name="code", dtype="int8")
    as_float = keras.layers.Reshape((1,))(keras.ops.cast(x, "float32"))
    model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(as_float))
    model.compile("sgd", "mse")
    df = frame.withColumn("code", F.when(F.col("id") == 7, F.lit(300)).otherwise(F.lit(1)).cast("long"))
    _fit_fails(model, df, DataError, "'code'", "300", "int8 cannot represent")

"""predict and evaluate on a Spark DataFrame equal Keras on the same rows in NumPy."""

import keras
import numpy as np
import pytest
from builders import numeric_frame, regression_model, to_numpy
from pyspark.sql import functions as F
from pyspark.sql import types as T

from keras_spark.models import KerasSparkModel


def _multi_output_model():
    x = keras.Input(shape=(4,), name="x")
    h = keras.layers.Dense(16, activation="tanh")(x)
    scalar = keras.layers.Dense(1, name="score")(h)
    vector = keras.layers.Dense(3, activation="softmax", name="probs")(h)
    matrix = keras.layers.Reshape((2, 3), name="grid")(keras.layers.Dense(6)(h))
    bare = keras.layers.Reshape((), name="bare")(keras.layers.Dense(1)(h))
    return KerasSparkModel(x, [scalar, vector, matrix, bare])


def test_predict_keeps_every_row_and_column_and_equals_keras(spark):
    df = numeric_frame(spark, rows=20000, partitions=5, spark_partitions=4)
    model = _multi_output_model()
    scored = model.predict(df, batch_size=256)
    assert scored.columns == df.columns + ["model_output"]
    fields = {f.name: f.dataType for f in scored.schema["model_output"].dataType.fields}
    assert fields == {
        "score": T.FloatType(),
        "probs": T.ArrayType(T.FloatType(), False),
        "grid": T.ArrayType(T.ArrayType(T.FloatType(), False), False),
        "bare": T.FloatType(),
    }
    got = scored.select("id", "x", "model_output.*")
    ids, x, score, probs, grid, bare = to_numpy(got, "id", "x", "score", "probs", "grid", "bare")
    assert np.array_equal(ids, np.arange(20000))
    expected_x, = to_numpy(df, "x")
    assert np.array_equal(x, expected_x)
    e_score, e_probs, e_grid, e_bare = model.predict(expected_x, batch_size=256, verbose=0)
    np.testing.assert_allclose(score, e_score.reshape(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs, e_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.stack([np.stack(g) for g in grid]), e_grid, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bare, e_bare, rtol=1e-5, atol=1e-6)


def test_predict_is_lazy_and_selectable_by_output_name(spark):
    df = numeric_frame(spark, rows=50, partitions=1)
    x = keras.Input(shape=(4,), name="x")
    model = KerasSparkModel(x, keras.layers.Dense(1, name="label1")(x))
    scored = model.predict(df)
    assert scored.select("model_output.label1").count() == 50


def test_evaluate_equals_keras_evaluate_on_numpy(spark):
    df = numeric_frame(spark, rows=3000, partitions=3)
    x = keras.Input(shape=(4,), name="x")
    model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(x))
    model.compile("adam", "mse", metrics=["mae"])
    xs, ys = to_numpy(df, "x", "y")
    expected = model.evaluate(xs, ys, batch_size=128, verbose=0, return_dict=True)
    got = model.evaluate(df, batch_size=128, verbose=0, return_dict=True)
    assert got == pytest.approx(expected, rel=1e-5)


def test_several_inputs_and_outputs_are_matched_by_name(spark):
    from pyspark.sql import functions as F

    df = numeric_frame(spark, rows=2000, partitions=2).select(
        F.col("id"), F.col("partition_id"),
        (F.col("x")[0] * 3.0).alias("t2"), F.col("x"), F.col("y").alias("t1"),
        F.col("x")[1].alias("b"),
    )
    a = keras.Input(shape=(4,), name="x")
    b = keras.Input(shape=(1,), name="b")
    t1 = keras.layers.Dense(1, name="t1")(a)
    t2 = keras.layers.Dense(1, name="t2")(keras.layers.Concatenate()([a, b]))
    # Inputs and outputs listed in an order unlike the DataFrame's columns.
    model = KerasSparkModel([b, a], [t2, t1])
    model.compile("adam", {"t1": "mse", "t2": "mae"})
    xs, bs, y1, y2 = to_numpy(df, "x", "b", "t1", "t2")
    bs = bs.reshape(-1, 1)  # the input is (1,) wide, as the feed gives it
    expected = model.evaluate([bs, xs], [y2, y1], batch_size=100, verbose=0, return_dict=True)
    assert model.evaluate(df, batch_size=100, verbose=0, return_dict=True) == pytest.approx(expected, rel=1e-5)
    history = model.fit(df, batch_size=100, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    scored = model.predict(df).select("id", "model_output.t1", "model_output.t2")
    ids, p1, p2 = to_numpy(scored, "id", "t1", "t2")
    e2, e1 = model.predict([bs, xs], verbose=0)
    np.testing.assert_allclose(p1, e1.reshape(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p2, e2.reshape(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.backend_independent
def test_a_bad_value_in_predict_surfaces_as_a_data_error_naming_the_column(spark):
    model = regression_model()
    df = numeric_frame(spark, 30, 2).withColumn("x", F.when(F.col("id") == 7, F.lit(None)).otherwise(F.col("x")))
    scored = model.predict(df)  # lazy: the bad row is found when an action reads it, on an executor
    with pytest.raises(Exception) as caught:
        scored.collect()
    message = str(caught.value)
    assert "DataError: column 'x' has a null" in message, message
    assert "ColumnError" not in message, message

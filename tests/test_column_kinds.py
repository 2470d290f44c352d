"""Each kind of Spark column reaches Keras as the dense tensor it stands for."""

import keras
import numpy as np
import pytest
from pyspark.sql import types as T

from keras_spark.binding import bind_inputs, bind_labels
from keras_spark.feed import BatchFeed
from keras_spark.models import KerasSparkModel
from keras_spark.spark.extract import extract


def _first_batch(spark, rows, schema, input_shape, input_dtype="float32", label=False):
    """Rows -> DataFrame -> cache -> the first unshuffled batch of column `v` (as input or label)."""
    df = spark.createDataFrame(rows, schema)
    inp = keras.Input(shape=input_shape, name="v" if not label else "other", dtype=input_dtype)
    out = keras.layers.Dense(1, name="v" if label else "unused")(keras.layers.Flatten()(inp))
    model = KerasSparkModel(inp, out)
    bindings = bind_labels(model, df.schema) if label else bind_inputs(model, df.schema)
    if label:
        bindings = bind_inputs(model, df.schema) + bindings
    cached = extract(df, bindings, "partition_id")
    try:
        feed = BatchFeed(model, cached, batch_size=len(rows), shuffle=False, seed=0, num_parallel_calls=1)
        batch = next(iter(feed))
        feed.close()
        return batch[1] if label else batch[0]
    finally:
        cached.remove()


SCALARS = [
    (T.ByteType(), [1, -2, 3]), (T.ShortType(), [1, -2, 300]), (T.IntegerType(), [1, -2, 70000]),
    (T.LongType(), [1, -2, 2**40]), (T.FloatType(), [0.5, -1.25, 3.0]), (T.DoubleType(), [0.1, -2.5, 1e10]),
    (T.BooleanType(), [True, False, True]),
]


@pytest.mark.parametrize("spark_type,values", SCALARS, ids=[t.simpleString() for t, _ in SCALARS])
def test_numeric_scalars_feed_a_float_input(spark, spark_type, values):
    schema = T.StructType([T.StructField("v", spark_type), T.StructField("partition_id", T.IntegerType())])
    got = _first_batch(spark, [(v, 0) for v in values], schema, (1,))
    assert got.dtype == np.float32 and got.shape == (3, 1)
    np.testing.assert_array_equal(got[:, 0], np.asarray(values, dtype=np.float64).astype(np.float32))


def test_integer_column_feeds_an_integer_input(spark):
    schema = T.StructType([T.StructField("v", T.LongType()), T.StructField("partition_id", T.IntegerType())])
    got = _first_batch(spark, [(5, 0), (7, 0)], schema, (), input_dtype="int32")
    assert got.dtype == np.int32 and list(got) == [5, 7]


@pytest.mark.parametrize("element", [T.FloatType(), T.DoubleType(), T.IntegerType()], ids=str)
def test_arrays_of_numbers(spark, element):
    schema = T.StructType([T.StructField("v", T.ArrayType(element)), T.StructField("partition_id", T.IntegerType())])
    cast = int if isinstance(element, T.IntegerType) else float
    rows = [([cast(v) for v in (1, 2, 3)], 0), ([cast(v) for v in (4, 5, 6)], 0)]
    got = _first_batch(spark, rows, schema, (3,))
    np.testing.assert_array_equal(got, np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32))


def test_nested_arrays_feed_a_multidimensional_input(spark):
    schema = T.StructType([
        T.StructField("v", T.ArrayType(T.ArrayType(T.ArrayType(T.DoubleType())))),
        T.StructField("partition_id", T.IntegerType()),
    ])
    values = np.arange(2 * 2 * 3 * 2, dtype=np.float64).reshape(2, 2, 3, 2)
    got = _first_batch(spark, [(v.tolist(), 0) for v in values], schema, (2, 3, 2))
    np.testing.assert_array_equal(got, values.astype(np.float32))


def test_trailing_unit_dimension_is_added(spark):
    schema = T.StructType([T.StructField("v", T.ArrayType(T.ArrayType(T.FloatType()))),
                           T.StructField("partition_id", T.IntegerType())])
    values = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    got = _first_batch(spark, [(v.tolist(), 0) for v in values], schema, (2, 2, 1))
    np.testing.assert_array_equal(got, values[..., None])


def test_spark_ml_dense_and_sparse_vectors(spark):
    from pyspark.ml.linalg import Vectors, VectorUDT

    schema = T.StructType([T.StructField("v", VectorUDT()), T.StructField("partition_id", T.IntegerType())])
    rows = [(Vectors.dense([1.0, 2.0, 3.0]), 0), (Vectors.sparse(3, [0, 2], [4.0, 5.0]), 0)]
    got = _first_batch(spark, rows, schema, (3,))
    np.testing.assert_array_equal(got, np.array([[1, 2, 3], [4, 0, 5]], dtype=np.float32))


def test_labels_keep_their_own_shape_and_integer_type(spark):
    schema = T.StructType([T.StructField("other", T.FloatType()), T.StructField("v", T.LongType()),
                           T.StructField("partition_id", T.IntegerType())])
    got = _first_batch(spark, [(0.0, 3, 0), (1.0, 9, 0)], schema, (1,), label=True)
    assert got.dtype == np.int64 and got.shape == (2,) and list(got) == [3, 9]


def test_array_labels_keep_their_length(spark):
    schema = T.StructType([T.StructField("other", T.FloatType()), T.StructField("v", T.ArrayType(T.DoubleType())),
                           T.StructField("partition_id", T.IntegerType())])
    got = _first_batch(spark, [(0.0, [1.0, 2.0], 0), (1.0, [3.0, 4.0], 0)], schema, (1,), label=True)
    assert got.dtype == np.float32 and got.shape == (2, 2)


def test_integer_label_trains_a_softmax_with_a_sparse_loss(spark):
    from pyspark.sql import functions as F

    df = spark.range(600).select(
        (F.col("id") % 3).cast("int").alias("partition_id"),
        F.array(*[(F.col("id") % 3 == k).cast("float") for k in range(3)]).alias("v"),
        (F.col("id") % 3).alias("label"),
    )
    x = keras.Input(shape=(3,), name="v")
    model = KerasSparkModel(x, keras.layers.Dense(3, activation="softmax", name="label")(x))
    model.compile(keras.optimizers.Adam(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(df, batch_size=32, epochs=5, verbose=0)
    assert history.history["accuracy"][-1] == 1.0


@pytest.mark.backend_independent
def test_each_column_is_bound_by_the_first_kind_that_takes_it():
    from keras_spark.kinds import KINDS, kind_of

    schema = T.StructType([
        T.StructField("x", T.ArrayType(T.FloatType())), T.StructField("steps", T.ArrayType(T.IntegerType())),
        T.StructField("picture", T.BinaryType()), T.StructField("y", T.DoubleType()),
        T.StructField("tags", T.ArrayType(T.FloatType())),
    ])
    x, steps = keras.Input(shape=(3,), name="x"), keras.Input(shape=(None,), dtype="int32", name="steps")
    picture = keras.Input(shape=(8, 8, 3), dtype="uint8", name="picture")
    pooled = keras.layers.Concatenate()([x, keras.layers.GlobalAveragePooling1D()(
        keras.layers.Embedding(10, 2)(steps)), keras.layers.Flatten()(picture)])
    per_step = keras.layers.Dense(1, name="tags")(keras.layers.Embedding(10, 2)(steps))
    model = KerasSparkModel([x, steps, picture], [keras.layers.Dense(1, name="y")(pooled), per_step])
    bound = bind_inputs(model, schema) + bind_labels(model, schema)
    assert [kind_of(b).name for b in bound] == ["dense", "sequence", "image", "dense", "sequence"]
    assert KINDS[-1].name == "dense" and len({k.name for k in KINDS}) == len(KINDS)

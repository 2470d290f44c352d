"""A Spark ML vector column feeding keras.Input(shape=(d,), sparse=True) stays sparse: in the cache
(indices and values, not d numbers a row), in every batch (tf.SparseTensor under TensorFlow, BCOO
under JAX) and when scoring; PyTorch, which has no sparse inputs in Keras, is told what to do."""

import os
import types

import keras
import numpy as np
import pyarrow as pa
import pytest
from pyspark.ml.linalg import DenseVector, SparseVector, VectorUDT
from pyspark.sql import types as T

from keras_spark import _core
from keras_spark.binding import bind_inputs
from keras_spark.errors import BindingError, DataError
from keras_spark.models import KerasSparkModel

BACKEND = keras.backend.backend()
VECTOR = pa.struct([("type", pa.int8()), ("size", pa.int32()), ("indices", pa.list_(pa.int32())),
                    ("values", pa.list_(pa.float64()))])
WIDTH = 64
needs_sparse_backend = pytest.mark.skipif(
    BACKEND == "torch", reason="Keras has no sparse inputs under PyTorch (keras.Input(sparse=True) is refused)")


# ---- data made here ------------------------------------------------------------------------------
def random_vectors(rows: int, width: int = WIDTH, seed: int = 0, dense_every: int = 5) -> tuple[list, np.ndarray]:
    """Spark ML vector structs (every `dense_every`-th row a dense one) and the same rows densified."""
    rng = np.random.default_rng(seed)
    structs, dense = [], np.zeros((rows, width), np.float32)
    for r in range(rows):
        idx = np.sort(rng.choice(width, int(rng.integers(0, 8)), replace=False))
        dense[r, idx] = rng.normal(size=len(idx)).astype(np.float32)
        if dense_every and r % dense_every == 1:
            structs.append({"type": 1, "size": None, "indices": None, "values": dense[r].astype(float).tolist()})
        else:
            structs.append({"type": 0, "size": width, "indices": idx.tolist(), "values": dense[r, idx].tolist()})
    return structs, dense


def densify(indices: np.ndarray, values: np.ndarray, shape) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    np.add.at(out, (indices[:, 0], indices[:, 1]), values)
    return out


def write_cache(tmp_path, structs, ids=None):
    """One chunk of the cache: column 0 the sparse vectors, column 1 the row ids (dense)."""
    ids = np.arange(len(structs)) if ids is None else ids
    batch = pa.RecordBatch.from_arrays(
        [pa.array(structs, VECTOR), pa.array(ids, pa.int64()), pa.array(np.zeros(len(structs), np.int32))],
        names=["x", "id", "pid"])
    writer = _core.CacheWriter(str(tmp_path / "chunk"), [("x", 0, "float32", [-1], "sparse"),
                                                         ("id", 1, "int64", [])], 2)
    writer.write(*batch.__arrow_c_array__())
    return writer.finish()


def pipeline(summary, rows, batch_size, shuffle=False, **layout):
    return _core.Pipeline([summary["files"]], [("float32", summary["shapes"][0], "sparse"), ("int64", [])],
                          [[(0, 0, rows)]], batch_size=batch_size, shuffle=shuffle, seed=3, cycle_length=1,
                          num_threads=2, prefetch=4, **layout)


# ---- the core ------------------------------------------------------------------------------------
@pytest.mark.backend_independent
def test_sparse_batches_densify_to_the_dense_reference(tmp_path):
    structs, dense = random_vectors(203)
    summary = write_cache(tmp_path, structs)
    p = pipeline(summary, 203, batch_size=32, shuffle=True)
    seen = np.zeros_like(dense)
    for _ in range(p.steps_per_epoch):
        (indices, values, shape), ids = p.next()
        assert indices.dtype == np.int64 and indices.shape == (len(values), 2) and shape == (len(ids), WIDTH)
        seen[ids] = densify(indices, values, shape)
    p.close()
    np.testing.assert_array_equal(seen, dense)


@pytest.mark.backend_independent
def test_sparse_batch_entries_are_sorted_by_row_then_column(tmp_path):
    structs, _ = random_vectors(100)
    p = pipeline(write_cache(tmp_path, structs), 100, batch_size=100, shuffle=True)
    (indices, _, _), _ = p.next()
    p.close()
    keys = indices[:, 0] * WIDTH + indices[:, 1]
    assert np.all(np.diff(keys) > 0)


@pytest.mark.backend_independent
def test_cache_holds_the_nonzeros_not_the_width(tmp_path):
    structs, dense = random_vectors(150)
    summary = write_cache(tmp_path, structs)
    nnz = int(np.count_nonzero(dense))
    offsets = summary["files"][0]
    assert os.path.getsize(offsets) == 8 * 150  # one int64 end offset a row
    assert os.path.getsize(offsets + ".indices") == 4 * nnz
    assert os.path.getsize(offsets + ".values") == 4 * nnz


@pytest.mark.backend_independent
def test_dense_vectors_keep_only_their_nonzeros():
    arr = pa.array([{"type": 1, "size": None, "indices": None, "values": [0.0, 2.0, 0.0, -1.0]}], VECTOR)
    indices, values, shape = _core.to_sparse(*arr.__arrow_c_array__(), "x", "float32", [4])
    np.testing.assert_array_equal(indices, [[0, 1], [0, 3]])
    np.testing.assert_array_equal(values, [2.0, -1.0])
    assert shape == (1, 4)


@pytest.mark.backend_independent
def test_to_sparse_densifies_to_to_dense():
    structs, _ = random_vectors(57)
    arr = pa.array(structs, VECTOR).slice(5, 40)  # a non-zero offset, as Arrow batches have
    reference, _ = _core.to_dense(*arr.__arrow_c_array__(), "x", "float32", [WIDTH])
    indices, values, shape = _core.to_sparse(*arr.__arrow_c_array__(), "x", "float32", [WIDTH])
    np.testing.assert_array_equal(densify(indices, values, shape), reference)


@pytest.mark.backend_independent
def test_jax_layout_pads_entries_with_zeros_to_a_few_sizes(tmp_path):
    structs, dense = random_vectors(203)
    p = pipeline(write_cache(tmp_path, structs), 203, batch_size=32, sparse_index_dtype="int32", sparse_pad=True)
    sizes = set()
    for _ in range(p.steps_per_epoch):
        (indices, values, shape), ids = p.next()
        real = np.count_nonzero(dense[ids])
        assert indices.dtype == np.int32 and real <= len(values) <= max(16, real * 1.125)
        assert not indices[real:].any() and not values[real:].any()  # padding: (0, 0) = 0
        np.testing.assert_array_equal(densify(indices, values, shape), dense[ids])
        sizes.add(len(values))
    p.close()
    assert len(sizes) < p.steps_per_epoch


@pytest.mark.backend_independent
def test_data_parallel_layout_batches_entries_by_row(tmp_path):
    """BCOO with n_batch=1: values [rows, k], column indices [rows, k, 1]; a row's unused entries are
    column 0, value 0, so the batch shards by row and densifies to the dense rows."""
    structs, dense = random_vectors(203)
    summary = write_cache(tmp_path, structs)
    most = int(np.count_nonzero(dense, axis=1).max())
    p = pipeline(summary, 203, batch_size=32, shuffle=True, sparse_index_dtype="int32", sparse_row_entries=most)
    seen = np.zeros_like(dense)
    for _ in range(p.steps_per_epoch):
        (indices, values, shape), ids = p.next()
        assert indices.dtype == np.int32 and indices.shape == (len(ids), most, 1) and values.shape == (len(ids), most)
        assert shape == (len(ids), WIDTH)
        rows = np.repeat(np.arange(len(ids)), most)
        seen[ids] = densify(np.stack([rows, indices.reshape(-1)], 1), values.reshape(-1), shape)
        for r, row in enumerate(ids):  # entries first, padding after
            real = np.count_nonzero(dense[row])
            assert not indices[r, real:].any() and not values[r, real:].any()
    p.close()
    np.testing.assert_array_equal(seen, dense)
    short = pipeline(summary, 203, batch_size=203, sparse_index_dtype="int32", sparse_row_entries=most - 1)
    with pytest.raises(RuntimeError, match=f"a sparse row has {most} entries, more than the {most - 1}"):
        short.next()
    short.close()


def vector(type_=0, size=6, indices=(1,), values=(1.0,)):
    return {"type": type_, "size": size, "indices": list(indices) if indices is not None else None,
            "values": list(values) if values is not None else None}


BAD_ROWS = {
    "an index past the size": (vector(indices=[2, 6], values=[1, 2]), "index 6 at row 1 is outside the size 6"),
    "a negative index": (vector(indices=[-1], values=[1]), "index -1 at row 1 is outside"),
    "unsorted indices": (vector(indices=[3, 2], values=[1, 2]), "at row 1 has index 2 after index 3"),
    "a repeated index": (vector(indices=[2, 2], values=[1, 2]), "at row 1 has index 2 after index 2"),
    "another size": (vector(size=7), "expected a vector of size 6"),
    "a dense vector of another size": (vector(1, None, None, [1.0] * 5), "found size 5 at row 1"),
    "a NaN value": (vector(values=[float("nan")]), "NaN or infinite value (nan) at row 1"),
    "a null vector": (None, "null vector at row 1"),
    "unequal indices and values": (vector(indices=[1, 2], values=[1]), "unequal indices and values"),
}


@pytest.mark.backend_independent
@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_sparse_vector_is_an_error_naming_the_column_and_row(case, tmp_path):
    bad, message = BAD_ROWS[case]
    arr = pa.array([vector(), bad, vector()], VECTOR)
    with pytest.raises(_core.ColumnError, match="column 'x'") as error:
        _core.to_sparse(*arr.__arrow_c_array__(), "x", "float32", [6])
    assert message in str(error.value)


@pytest.mark.backend_independent
def test_array_column_into_the_core_as_sparse_is_an_error():
    arr = pa.array([[1.0, 2.0]], pa.list_(pa.float32()))
    with pytest.raises(_core.ColumnError, match="takes a Spark ML vector column"):
        _core.to_sparse(*arr.__arrow_c_array__(), "x", "float32", [2])


# ---- binding -------------------------------------------------------------------------------------
def fake_model(sparse=True, shape=(None, 6)):
    """A model-shaped object whose one input claims sparse=True (Keras itself refuses that under PyTorch)."""
    tensor = types.SimpleNamespace(name="x", shape=shape, dtype="float32", sparse=sparse)
    return types.SimpleNamespace(inputs=[tensor])


VECTOR_SCHEMA = T.StructType([T.StructField("x", VectorUDT())])


@pytest.mark.skipif(BACKEND != "torch", reason="the PyTorch error; TensorFlow and JAX take sparse inputs")
def test_torch_refuses_sparse_inputs_saying_what_to_do():
    with pytest.raises(ValueError, match="sparse=True"):  # Keras's own refusal, at model building
        keras.Input(shape=(6,), sparse=True)
    with pytest.raises(BindingError, match=r"sparse=False.*densified.*KERAS_BACKEND=tensorflow or jax"):
        bind_inputs(fake_model(), VECTOR_SCHEMA)


@needs_sparse_backend
def test_array_column_into_a_sparse_input_is_a_binding_error():
    schema = T.StructType([T.StructField("x", T.ArrayType(T.FloatType()))])
    with pytest.raises(BindingError, match=r"column 'x' has type array<float>.*Spark ML vector column"):
        bind_inputs(fake_model(), schema)


@needs_sparse_backend
def test_sparse_input_of_rank_two_is_a_binding_error():
    with pytest.raises(BindingError, match=r"shape \(6, 2\)"):
        bind_inputs(fake_model(shape=(None, 6, 2)), VECTOR_SCHEMA)


# ---- on a local Spark ----------------------------------------------------------------------------
def vector_frame(spark, rows: int, seed: int = 0, bad_row: int | None = None):
    """id, partition_id, x (vectors, sparse and dense), y = x . weights; and x densified."""
    _, dense = random_vectors(rows, seed=seed, dense_every=0)
    weights = np.linspace(-1, 1, WIDTH).astype(np.float32)
    data = []
    for r in range(rows):
        idx = np.flatnonzero(dense[r])
        x = DenseVector(dense[r]) if r % 7 == 3 else SparseVector(WIDTH, idx, dense[r, idx])
        if r == bad_row:
            x = SparseVector(WIDTH, [1], [1.0])
            x.indices = np.array([WIDTH + 3], np.int32)  # past the size, which SparseVector itself would refuse
        data.append((r, r % 3, x, float(dense[r] @ weights)))
    schema = T.StructType([T.StructField("id", T.LongType()), T.StructField("partition_id", T.IntegerType()),
                           T.StructField("x", VectorUDT()), T.StructField("y", T.DoubleType())])
    return spark.createDataFrame(data, schema).repartition(2), dense


def sparse_linear_model() -> KerasSparkModel:
    x = keras.Input(shape=(WIDTH,), sparse=True, name="x")
    model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(x))
    model.compile(keras.optimizers.Adam(0.05), "mse")
    return model


@needs_sparse_backend
def test_fit_evaluate_and_predict_feed_sparse_batches(spark):
    keras.utils.set_random_seed(1)
    df, dense = vector_frame(spark, 240)
    model = sparse_linear_model()
    history = model.fit(df, batch_size=32, epochs=8, validation_data=df, verbose=0)
    assert history.history["loss"][-1] < 0.2 * history.history["loss"][0]
    assert history.history["val_loss"][-1] < 0.2 * history.history["val_loss"][0]
    kernel, bias = model.layers[-1].get_weights()
    y = dense @ np.linspace(-1, 1, WIDTH).astype(np.float32)
    expected = dense @ kernel[:, 0] + bias[0]
    loss = model.evaluate(df, batch_size=50, verbose=0)
    np.testing.assert_allclose(loss, np.mean((expected - y) ** 2), rtol=1e-4, atol=1e-6)
    scored = model.predict(df).select("id", "model_output.y").orderBy("id").toPandas()
    np.testing.assert_allclose(scored["y"].to_numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.session_independent
@needs_sparse_backend
def test_the_batches_keras_gets_are_the_backends_sparse_tensors(spark):
    from keras_spark.binding import bind_labels
    from keras_spark.feed import BatchFeed
    from keras_spark.spark.extract import extract

    df, dense = vector_frame(spark, 40)
    model = sparse_linear_model()
    cached = extract(df, bind_inputs(model, df.schema) + bind_labels(model, df.schema), "partition_id")
    try:
        feed = BatchFeed(model, cached, batch_size=40, shuffle=False, seed=0, num_parallel_calls=1)
        x, _ = next(iter(feed))
        feed.close()
    finally:
        cached.remove()
    if BACKEND == "tensorflow":
        import tensorflow as tf

        assert isinstance(x, tf.SparseTensor)
        got = tf.sparse.to_dense(tf.sparse.reorder(x)).numpy()
    else:
        from jax.experimental import sparse as jax_sparse

        assert isinstance(x, jax_sparse.BCOO)
        got = np.asarray(x.todense())
    # Rows come in partition order, not id order: compare as sets of rows.
    assert sorted(map(tuple, got)) == sorted(map(tuple, dense))


@needs_sparse_backend
def test_sparse_index_past_the_size_stops_fit_naming_column_and_row(spark):
    df, _ = vector_frame(spark, 30, bad_row=17)
    with pytest.raises(DataError, match=r"column 'x': sparse vector index 67 at row \d+ .*is outside the size 64"):
        sparse_linear_model().fit(df, batch_size=8, epochs=1, verbose=0)

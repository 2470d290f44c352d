"""Regressions: each defect the sanitizer build and the fuzz test found in the core, one test each.

Some of these only crash or read out of bounds visibly under `.ci/sanitize` (ASan/UBSan); in a
release build they may pass by luck before the fix, which is why the sanitizer run includes them.
"""

import numpy as np
import pyarrow as pa
import pytest

from keras_spark import _core

# the C++ core alone: no Keras backend is involved
pytestmark = pytest.mark.backend_independent

VECTOR = pa.struct([("type", pa.int8()), ("size", pa.int32()), ("indices", pa.list_(pa.int32())),
                    ("values", pa.list_(pa.float64()))])


def dense(array, dtype="float32", shape=(), name="col", **options):
    return _core.to_dense(*array.__arrow_c_array__(), name, dtype, list(shape), **options)


def _arrays_of_vectors():
    return pa.array([
        [{"type": 1, "size": None, "indices": None, "values": [1.0, 2.0, 3.0]},
         {"type": 0, "size": 3, "indices": [1], "values": [7.0]}],
        [{"type": 0, "size": 3, "indices": [0, 2], "values": [4.0, 5.0]},
         {"type": 1, "size": None, "indices": None, "values": [6.0, 6.5, 7.5]}],
    ], pa.list_(VECTOR))


EXPECTED_VECTORS = [[[1, 2, 3], [0, 7, 0]], [[4, 0, 5], [6, 6.5, 7.5]]]


def test_array_of_vectors_with_unknown_width_is_read_in_bounds():
    got, shape = dense(_arrays_of_vectors(), shape=[-1, -1])
    assert shape == [2, 3]
    np.testing.assert_array_equal(got, EXPECTED_VECTORS)


def test_array_of_vectors_takes_its_width_from_its_own_dimension():
    got, shape = dense(_arrays_of_vectors(), shape=[2, 3])
    assert shape == [2, 3]
    np.testing.assert_array_equal(got, EXPECTED_VECTORS)


def _exact_list(offsets, values, large=False):
    """A list array whose offsets live in a buffer of exactly their size (NumPy memory, which ASan
    guards; pyarrow's own buffers are padded, so a read one past their end goes unnoticed)."""
    offsets = np.asarray(offsets, np.int64 if large else np.int32)
    arrow_type = (pa.large_list if large else pa.list_)(values.type)
    return pa.Array.from_buffers(arrow_type, len(offsets) - 1, [None, pa.py_buffer(offsets)], children=[values])


NO_FLOATS = pa.Array.from_buffers(pa.float32(), 0, [None, None])  # an empty array with no value buffer at all


def test_empty_outer_lists_do_not_read_past_the_offsets():
    array = _exact_list([0, 0, 0], _exact_list([0], NO_FLOATS))
    got, shape = dense(array, shape=[0, 3])
    assert shape == [0, 3] and got.shape == (2, 0, 3)


def test_empty_inner_lists_do_not_read_past_the_offsets():
    array = _exact_list([0, 2, 4], _exact_list([0, 0, 0, 0, 0], NO_FLOATS, large=True))
    got, shape = dense(array, shape=[-1, -1])
    assert shape == [2, 0] and got.shape == (2, 2, 0)


def test_zero_width_column_converts_to_an_empty_row():
    got, shape = dense(_exact_list([0, 0, 0, 0], NO_FLOATS), shape=[-1])
    assert shape == [0] and got.shape == (3, 0)


def test_zero_width_column_goes_through_cache_and_pipeline(tmp_path):
    batch = pa.record_batch({"v": pa.array([[], []], pa.list_(pa.float32())), "pid": pa.array([0, 0], pa.int32())})
    writer = _core.CacheWriter(str(tmp_path / "z"), [("v", 0, "float32", [-1])], 1)
    writer.write(*batch.__arrow_c_array__())
    summary = writer.finish()
    assert summary["shapes"] == [[0]]
    pipeline = _core.Pipeline([summary["files"]], [("float32", [0])], [[(0, 0, 2)]], batch_size=2, shuffle=False,
                              seed=0, cycle_length=1, num_threads=1, prefetch=2)
    [values] = pipeline.next()
    assert values.shape == (2, 0)
    pipeline.close()


@pytest.mark.parametrize("rows", [0, 1])
def test_shape_past_64_bits_is_a_column_error_naming_the_column(rows):
    array = pa.array([[[1.0]]] * rows, pa.list_(pa.list_(pa.float32())))
    with pytest.raises(_core.ColumnError, match="column 'huge'"):
        dense(array, shape=[2**40, 2**40], name="huge")


def test_huge_declared_shape_in_the_cache_writer_names_the_column(tmp_path):
    batch = pa.record_batch({"v": pa.array([[1.0, 2.0]], pa.list_(pa.float32())), "pid": pa.array([0], pa.int32())})
    writer = _core.CacheWriter(str(tmp_path / "h"), [("v", 0, "float32", [2**62])], 1)
    with pytest.raises(_core.ColumnError, match="column 'v'"):
        writer.write(*batch.__arrow_c_array__())


def test_dictionary_encoded_numbers_are_decoded():
    array = pa.array([1.5, 2.5, 1.5, None, 2.5]).dictionary_encode().slice(0, 3)
    got, _ = dense(array)
    np.testing.assert_array_equal(got, [1.5, 2.5, 1.5])


def test_dictionary_encoded_lists_are_decoded():
    values = pa.array([[1, 2], [3, 4]], pa.list_(pa.int64()))
    array = pa.DictionaryArray.from_arrays(pa.array([1, 0, 1], pa.int8()), values)
    got, shape = dense(array, "int32", [-1])
    assert shape == [2]
    np.testing.assert_array_equal(got, [[3, 4], [1, 2], [3, 4]])


def test_cache_writer_field_index_past_the_schema_is_an_error(tmp_path):
    batch = pa.record_batch({"v": pa.array([1.0]), "pid": pa.array([0], pa.int32())})
    writer = _core.CacheWriter(str(tmp_path / "f"), [("v", 5, "float32", [])], 1)
    with pytest.raises(_core.ColumnError, match="field 5"):
        writer.write(*batch.__arrow_c_array__())


def test_cache_writer_schema_and_array_with_different_children_is_an_error(tmp_path):
    three = pa.record_batch({"v": pa.array([1.0]), "pid": pa.array([0], pa.int32()), "w": pa.array([2.0])})
    two = pa.record_batch({"v": pa.array([1.0]), "pid": pa.array([0], pa.int32())})
    writer = _core.CacheWriter(str(tmp_path / "c"), [("w", 2, "float32", [])], 1)
    schema, _ = three.__arrow_c_array__()
    _, array = two.__arrow_c_array__()
    with pytest.raises(_core.ColumnError, match="malformed"):
        writer.write(schema, array)


def test_list_schema_over_a_flat_array_is_an_error():
    schema, _ = pa.array([[1.0]], pa.list_(pa.float64())).__arrow_c_array__()
    _, array = pa.array([1.0]).__arrow_c_array__()
    with pytest.raises(_core.ColumnError, match="malformed"):
        _core.to_dense(schema, array, "col", "float32", [-1])


def test_pipeline_chunk_index_past_the_files_is_an_error(tmp_path):
    batch = pa.record_batch({"v": pa.array([1.0, 2.0]), "pid": pa.array([0, 0], pa.int32())})
    writer = _core.CacheWriter(str(tmp_path / "p"), [("v", 0, "float64", [])], 1)
    writer.write(*batch.__arrow_c_array__())
    files = writer.finish()["files"]
    for segment in [(3, 0, 2), (0, 1, 5)]:
        with pytest.raises(ValueError, match="chunk|past the end"):
            _core.Pipeline([files], [("float64", [])], [[segment]], batch_size=2, shuffle=False, seed=0,
                           cycle_length=1, num_threads=1, prefetch=2)


def test_pipeline_options_are_keyword_only(tmp_path):
    with pytest.raises(TypeError):
        _core.Pipeline([], [("float64", [])], [], 2, False, 0, 1, 1, 2)

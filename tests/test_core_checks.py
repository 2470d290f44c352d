"""No silent wrong answers from the core: NaN/infinite floats and casts the dtype cannot hold are errors."""

import re

import numpy as np
import pyarrow as pa
import pytest

from keras_spark import _core

# the C++ core alone: no Keras backend is involved
pytestmark = pytest.mark.backend_independent


def dense(array, dtype="float32", shape=(), name="col", **options):
    return _core.to_dense(*array.__arrow_c_array__(), name, dtype, list(shape), **options)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_float_is_an_error_naming_column_and_row(bad):
    pattern = r"column 'x' has a NaN or infinite value .* at row 2.*allow_non_finite"
    with pytest.raises(_core.ColumnError, match=pattern):
        dense(pa.array([1.0, 2.0, bad, 4.0]), name="x")


def test_non_finite_inside_arrays_names_the_row():
    array = pa.array([[1.0, 2.0], [3.0, float("nan")]], pa.list_(pa.float32()))
    with pytest.raises(_core.ColumnError, match=r"column 'x'.*NaN.*at row 1"):
        dense(array, shape=[2], name="x")


def test_allow_non_finite_keeps_nan_and_inf():
    got, _ = dense(pa.array([np.nan, np.inf, 1.0]), "float64", allow_non_finite=True)
    np.testing.assert_array_equal(got, [np.nan, np.inf, 1.0])


def test_non_finite_in_a_sparse_vector_is_an_error():
    vector = pa.struct([("type", pa.int8()), ("size", pa.int32()), ("indices", pa.list_(pa.int32())),
                        ("values", pa.list_(pa.float64()))])
    array = pa.array([{"type": 0, "size": 3, "indices": [1], "values": [float("inf")]}], vector)
    with pytest.raises(_core.ColumnError, match=r"column 'v'.*NaN or infinite.*row 0"):
        dense(array, shape=[3], name="v")


@pytest.mark.parametrize("values,arrow_type,dtype,shown", [
    ([1, 300], pa.int64(), "int8", "300"),
    ([5, -1], pa.int32(), "uint8", "-1"),
    ([0, 2**40], pa.int64(), "int32", str(2**40)),
    ([1, 2**63], pa.uint64(), "int64", str(2**63)),
    ([0.5, 1e10], pa.float64(), "int32", "10000000000"),
    ([1.0, 1e300], pa.float64(), "float32", "1.0000000000000001e+300"),
    ([1.0, -3.0], pa.float32(), "uint16", "-3"),
])
def test_value_the_dtype_cannot_hold_is_an_error_naming_column_row_and_value(values, arrow_type, dtype, shown):
    pattern = rf"column 'y' has the value {re.escape(shown)} at row 1, which {dtype} cannot"
    with pytest.raises(_core.ColumnError, match=pattern):
        dense(pa.array(values, arrow_type), dtype, name="y")


def test_nan_into_an_integer_dtype_is_an_error_even_when_non_finite_is_allowed():
    with pytest.raises(_core.ColumnError, match="int32 cannot represent"):
        dense(pa.array([1.0, np.nan]), "int32", allow_non_finite=True)


def test_values_inside_the_range_cast_like_numpy():
    got, _ = dense(pa.array([-128, 127, 0], pa.int64()), "int8")
    np.testing.assert_array_equal(got, np.array([-128, 127, 0], np.int8))
    got, _ = dense(pa.array([2.9, -2.9, 255.5]), "int16")
    np.testing.assert_array_equal(got, [2, -2, 255])  # truncation toward zero, as NumPy and C++ cast


def _batch(values):
    return pa.record_batch({"x": pa.array(values), "pid": pa.array([3] * len(values), pa.int32())})


def test_cache_writer_checks_finiteness_and_names_the_partition(tmp_path):
    writer = _core.CacheWriter(str(tmp_path / "c"), [("x", 0, "float32", [])], 1)
    with pytest.raises(_core.ColumnError, match=r"column 'x'.*NaN.*at row 1 of a batch, in partition id 3; "):
        writer.write(*_batch([1.0, np.nan]).__arrow_c_array__())


def test_cache_writer_allow_non_finite_writes_them(tmp_path):
    writer = _core.CacheWriter(str(tmp_path / "c"), [("x", 0, "float64", [])], 1, allow_non_finite=True)
    writer.write(*_batch([1.0, np.inf]).__arrow_c_array__())
    summary = writer.finish()
    np.testing.assert_array_equal(np.fromfile(summary["files"][0], np.float64), [1.0, np.inf])

"""The C++ core through Python: Arrow -> dense conversions, the cache writer, the batch pipeline."""

import os
import re

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_spark import _core

# the C++ core alone: no Keras backend is involved
pytestmark = pytest.mark.backend_independent

ARROW_NUMBERS = {
    "bool": pa.bool_(), "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "uint8": pa.uint8(), "uint16": pa.uint16(), "uint32": pa.uint32(), "uint64": pa.uint64(),
    "float32": pa.float32(), "float64": pa.float64(),
}
TARGETS = list(ARROW_NUMBERS)


def dense(array, dtype="float32", shape=(), name="col"):
    values, resolved = _core.to_dense(*array.__arrow_c_array__(), name, dtype, list(shape))
    return values, resolved


@settings(max_examples=60, deadline=None)
@given(source=st.sampled_from(TARGETS), target=st.sampled_from(TARGETS),
       values=st.lists(st.integers(0, 100), min_size=1, max_size=50))
def test_every_numeric_type_casts_like_numpy(source, target, values):
    array = pa.array(np.asarray(values).astype(source))
    got, shape = dense(array, target)
    assert shape == [] and got.dtype == np.dtype(target)
    np.testing.assert_array_equal(got, np.asarray(values).astype(source).astype(target))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 20), dims=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       large=st.booleans(), fixed=st.booleans())
def test_nested_lists_become_dense_dimensions(rows, dims, large, fixed):
    values = np.arange(rows * int(np.prod(dims)), dtype=np.float64).reshape([rows] + dims)
    arrow_type = pa.float64()
    for d in reversed(dims):
        variable = pa.large_list(arrow_type) if large else pa.list_(arrow_type)
        arrow_type = pa.list_(arrow_type, d) if fixed else variable
    array = pa.array(values.tolist(), arrow_type)
    got, shape = dense(array, "float32", [-1] * len(dims))
    assert shape == dims
    np.testing.assert_array_equal(got, values.astype(np.float32))


def test_sliced_arrays_respect_their_offset():
    array = pa.array([[1, 2], [3, 4], [5, 6], [7, 8]], pa.list_(pa.int32())).slice(1, 2)
    got, _ = dense(array, "int64", [2])
    np.testing.assert_array_equal(got, [[3, 4], [5, 6]])
    bools = pa.array([True, False, True, True, False, False, True, False, True]).slice(3, 5)
    np.testing.assert_array_equal(dense(bools, "uint8")[0], [1, 0, 0, 1, 0])


def test_scalar_column_feeds_shape_one_and_trailing_ones():
    np.testing.assert_array_equal(dense(pa.array([1.5, 2.5]), "float32", [1])[0], [[1.5], [2.5]])
    got, shape = dense(pa.array([[1, 2], [3, 4]], pa.list_(pa.float32())), "float32", [2, 1])
    assert shape == [2, 1] and got.shape == (2, 2, 1)


def _vectors():
    vector_type = pa.struct([("type", pa.int8()), ("size", pa.int32()), ("indices", pa.list_(pa.int32())),
                             ("values", pa.list_(pa.float64()))])
    return pa.array([
        {"type": 1, "size": None, "indices": None, "values": [1.0, 2.0, 3.0]},
        {"type": 0, "size": 3, "indices": [0, 2], "values": [4.0, 5.0]},
    ], vector_type)


def test_spark_ml_vectors_dense_and_sparse():
    got, shape = dense(_vectors(), "float32", [-1])
    assert shape == [3]
    np.testing.assert_array_equal(got, [[1, 2, 3], [4, 0, 5]])


@pytest.mark.parametrize("array,where", [
    (pa.array([1.0, None, 3.0]), "row 1"),
    (pa.array([[1.0, 2.0], None], pa.list_(pa.float32())), "row 1"),
    (pa.array([[1.0, 2.0], [3.0, None]], pa.list_(pa.float32())), "row 1"),
    (pa.array([[[1.0], [2.0]], [None, [3.0]]], pa.list_(pa.list_(pa.float32()))), "row 1"),
])
def test_nulls_anywhere_are_errors_naming_column_and_row(array, where):
    shape = [-1] * (str(array.type).count("list"))
    with pytest.raises(_core.ColumnError, match=rf"column 'pix'.*null.*{where}"):
        dense(array, "float32", shape, name="pix")


def test_wrong_and_varying_lengths_name_expected_and_found():
    with pytest.raises(_core.ColumnError, match=r"expected an array of length 3.*found length 2 at row 0"):
        dense(pa.array([[1, 2]], pa.list_(pa.float32())), "float32", [3])
    with pytest.raises(_core.ColumnError, match=r"length 2.*found length 3 at row 1"):
        dense(pa.array([[1, 2], [1, 2, 3]], pa.list_(pa.float32())), "float32", [-1])


def test_depth_mismatch_and_unsupported_types():
    with pytest.raises(_core.ColumnError, match=r"nesting depth 2.*\(4,\)"):
        dense(pa.array([[[1.0]]], pa.list_(pa.list_(pa.float32()))), "float32", [4])
    with pytest.raises(_core.ColumnError, match="string"):
        dense(pa.array(["a"]), "float32", [])
    with pytest.raises(_core.ColumnError, match="decimal"):
        dense(pa.array([1], pa.decimal128(5, 2)), "float32", [])


def _write_cache(tmp_path, ids, name="chunk", values=None):
    values = np.arange(len(ids), dtype=np.int64) if values is None else values
    batch = pa.record_batch({"v": pa.array(values), "pid": pa.array(ids, pa.int32())})
    writer = _core.CacheWriter(str(tmp_path / name), [("v", 0, "int64", [])], 1)
    writer.write(*batch.__arrow_c_array__())
    return writer.finish()


def test_cache_writer_records_runs_of_partition_ids_in_any_order(tmp_path):
    summary = _write_cache(tmp_path, [2, 2, 0, 1, 1, 2])
    assert summary["rows"] == 6
    assert summary["runs"] == [(2, 0, 2), (0, 2, 1), (1, 3, 2), (2, 5, 1)]
    assert np.fromfile(summary["files"][0], dtype=np.int64).tolist() == list(range(6))


def test_cache_writer_rejects_negative_and_null_ids(tmp_path):
    with pytest.raises(_core.ColumnError, match=r"partition column 'pid'.*negative.*-1"):
        _write_cache(tmp_path, [0, -1])
    batch = pa.record_batch({"v": pa.array([1, 2]), "pid": pa.array([0, None], pa.int32())})
    writer = _core.CacheWriter(str(tmp_path / "n"), [("v", 0, "int64", [])], 1)
    with pytest.raises(_core.ColumnError, match="null partition id"):
        writer.write(*batch.__arrow_c_array__())


def _pipeline(chunks, batch_size, shuffle=False, seed=0, cycle=2, threads=1):
    partitions = {}
    for k, summary in enumerate(chunks):
        for pid, start, count in summary["runs"]:
            partitions.setdefault(pid, []).append((k, start, count))
    return _core.Pipeline([c["files"] for c in chunks], [("int64", [])], [partitions[p] for p in sorted(partitions)],
                          batch_size=batch_size, shuffle=shuffle, seed=seed, cycle_length=cycle, num_threads=threads,
                          prefetch=4)


def _epochs(pipeline, epochs):
    return [[pipeline.next()[0].tolist() for _ in range(pipeline.steps_per_epoch)] for _ in range(epochs)]


def test_unshuffled_interleave_is_round_robin_with_more_partitions_than_cycle(tmp_path):
    # Partition p holds values 10p, 10p+1, ...: 5 partitions, 2 open at a time.
    ids = [p for p in range(5) for _ in range(3)]
    chunk = _write_cache(tmp_path, ids, values=np.array([10 * p + i for p in range(5) for i in range(3)]))
    [batches] = _epochs(_pipeline([chunk], batch_size=4), 1)
    flat = sum(batches, [])
    assert flat[:6] == [0, 10, 1, 11, 2, 12]  # partitions 0 and 1 alternate
    assert flat[6:] == [20, 30, 21, 31, 22, 32, 40, 41, 42]
    assert [len(b) for b in batches] == [4, 4, 4, 3]


def test_every_row_once_per_epoch_across_chunks_with_partial_last_batch(tmp_path):
    rng = np.random.default_rng(0)
    chunks = [_write_cache(tmp_path, np.sort(rng.integers(0, 7, 500)), f"c{k}", np.arange(500) + 500 * k)
              for k in range(3)]
    pipeline = _pipeline(chunks, batch_size=64, shuffle=True, seed=9, cycle=3, threads=2)
    assert pipeline.steps_per_epoch == 24
    epochs = _epochs(pipeline, 3)
    for batches in epochs:
        assert [len(b) for b in batches] == [64] * 23 + [1500 - 64 * 23]
        assert sorted(sum(batches, [])) == list(range(1500))
    assert sum(epochs[0], []) != sum(epochs[1], [])
    stats = pipeline.stats()
    assert stats["rows"] == 4500 and stats["batches"] == 72 and stats["bytes"] == 4500 * 8
    pipeline.close()


def test_shuffle_is_reproducible_and_thread_count_does_not_change_it(tmp_path):
    chunk = _write_cache(tmp_path, np.repeat(np.arange(10), 50))
    one = _epochs(_pipeline([chunk], 32, shuffle=True, seed=4, threads=1), 2)
    two = _epochs(_pipeline([chunk], 32, shuffle=True, seed=4, threads=2), 2)
    other = _epochs(_pipeline([chunk], 32, shuffle=True, seed=5, threads=1), 1)
    assert one == two
    assert one[0] != other[0]


def test_mapped_pages_are_dropped_as_partitions_finish(tmp_path):
    # 64 partitions of 1 MB; with 2 open at a time, resident mapping stays far below the
    # 64 MB file (the kernel may map a few MB around each fault).
    rows = 64 * 131072
    chunk = _write_cache(tmp_path, np.repeat(np.arange(64), 131072), values=np.arange(rows))
    pipeline = _pipeline([chunk], batch_size=4096, shuffle=True, seed=1, cycle=2)
    for _ in range(pipeline.steps_per_epoch):
        pipeline.next()
    smaps = open(f"/proc/{os.getpid()}/smaps").read()
    mapping = smaps[smaps.index(chunk["files"][0]):]
    resident_kb = int(re.search(r"\nRss:\s+(\d+) kB", mapping).group(1))
    assert resident_kb < 0.25 * rows * 8 / 1024
    pipeline.close()

"""Fuzzed Arrow arrays of every kind through `to_dense`, `CacheWriter` and `Pipeline`.

Each case is a column (numbers of every width; list, large_list and fixed_size_list nested to
any depth; Spark ML vectors dense and sparse, alone or inside lists; dictionary-encoded; sliced
with a non-zero offset; empty lists and empty arrays) with at most one defect (a null at any
level, a wrong length, a NaN or infinity, a value the target dtype cannot hold) and a declared
per-row shape (exact, unknown, with trailing ones, wrong, huge, of the wrong rank). The expected
result is computed here with NumPy, independently of the core: the values, or a ColumnError
naming the column (and the row, where there is one).

KERAS_SPARK_FUZZ_EXAMPLES sets the examples per property (the sanitizer run raises it);
`pytest --hypothesis-show-statistics` prints the kinds and outcomes seen.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keras_spark import _core

# the C++ core alone: no Keras backend is involved
pytestmark = pytest.mark.backend_independent

EXAMPLES = int(os.environ.get("KERAS_SPARK_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="KERAS_SPARK_FUZZ_SEED" not in os.environ,
                suppress_health_check=list(HealthCheck))

LEAVES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64"]
TARGETS = LEAVES
VECTOR = pa.struct([("type", pa.int8()), ("size", pa.int32()), ("indices", pa.list_(pa.int32())),
                    ("values", pa.list_(pa.float64()))])
HUGE = 2**40
COLUMN = "fuzzed"


@dataclass
class Case:
    levels: list[tuple[str, int]]  # (list | large | fixed, length), outermost first
    vector: str | None  # None, "dense" or "sparse": a Spark ML vector of width `dims[-1]` at the bottom
    leaf: str
    values: np.ndarray  # (pre + rows + post, *dims), the leaf values before any defect
    pre: int
    rows: int
    dictionary: bool
    target: str
    declared: list[int]
    allow_non_finite: bool
    defect: str  # none | null | length | nonfinite | range
    defect_row: int  # row within the window, where the defect has one

    @property
    def dims(self) -> list[int]:
        return list(self.values.shape[1:])

    def kind(self) -> str:
        parts = [name for name, _ in self.levels] + ([f"{self.vector}_vector"] if self.vector else [self.leaf])
        return ("dictionary<" if self.dictionary else "") + ">".join(parts) + (">" if self.dictionary else "")


# ---- the reference: what the core must return, computed with NumPy ---------------------------------
def _fits(value, target: str) -> bool:
    if target in ("bool", "float64"):
        return True
    if target == "float32":
        return bool(not np.isfinite(float(value)) or abs(float(value)) <= float(np.finfo(np.float32).max))
    info = np.iinfo(target)
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return False
        return info.min <= math.trunc(float(value)) <= info.max if info.min < 0 else -1 < float(value) < info.max + 1
    return info.min <= int(value) <= info.max


def _resolved_shape(case: Case) -> tuple[list[int] | None, str | None]:
    """The per-row shape the core must resolve, or why it must refuse (a regex for the message)."""
    dims, declared, rows = case.dims, case.declared, case.rows
    if len(declared) < len(dims) or any(d not in (1, -1) for d in declared[len(dims):]):
        return None, "nesting depth"
    shape = list(declared[:len(dims)]) + [1] * (len(declared) - len(dims))
    reached = rows > 0  # is level k reached by some element of the first row?
    for k, actual in enumerate(dims):
        if shape[k] == -1:
            if not reached:
                shape[k] = 0
                continue
            shape[k] = actual
        elif reached and shape[k] != actual:
            return None, "length"
        if reached and actual == 0 and -1 in declared[k + 1:len(dims)]:
            return None, "cannot be inferred"
        reached = reached and actual > 0
    itemsize = np.dtype(case.target).itemsize
    if math.prod(shape) * itemsize >= 2**63:
        return None, "64 bits"
    return shape, None


def _expected(case: Case):
    """(array, shape) or (None, regex) for the column error the core must raise."""
    shape, shape_error = _resolved_shape(case)
    if case.defect in ("null", "length"):  # a shape error may be found first
        if shape_error:
            return None, "."
        return None, rf"null .*at row {case.defect_row}\b" if case.defect == "null" else "length"
    if shape_error:
        return None, shape_error
    window = case.values[case.pre:case.pre + case.rows]
    if case.defect == "nonfinite" and not case.allow_non_finite:
        return None, rf"NaN or infinite .* at row {case.defect_row}\b"
    if not all(_fits(v, case.target) for v in window.reshape(-1)):
        return None, "cannot represent"
    with np.errstate(invalid="ignore", over="ignore"):
        return window.astype(case.target).reshape([case.rows] + shape), shape


# ---- building the Arrow array -------------------------------------------------------------------
def _vector_entry(values: list, kind: str) -> dict:
    if kind == "dense":
        return {"type": 1, "size": None, "indices": None, "values": values}
    nonzero = [i for i, v in enumerate(values) if v is None or v != 0]
    return {"type": 0, "size": len(values), "indices": nonzero, "values": [values[i] for i in nonzero]}


def _nest(case: Case, value: np.ndarray, level: int):
    """Python values for pa.array: lists down the levels, a vector dict or a number at the bottom."""
    if case.vector and level == len(case.levels):
        return _vector_entry([float(v) for v in value.tolist()], case.vector)
    if level == len(case.dims):
        return value.item()
    return [_nest(case, v, level + 1) for v in value]


def _arrow_type(case: Case):
    arrow = VECTOR if case.vector else pa.from_numpy_dtype(np.dtype(case.leaf))
    for name, length in reversed(case.levels):
        arrow = {"list": pa.list_, "large": pa.large_list}[name](arrow) if name != "fixed" else pa.list_(arrow, length)
    return arrow


def _entries_at(row, depth: int) -> list[tuple[list | None, int | None, object]]:
    """(container, index, item) of every item `depth` lists down from the row (depth 0: the row)."""
    found = [(None, None, row)]
    for _ in range(depth):
        found = [(item, i, child) for _, _, item in found if isinstance(item, list) for i, child in enumerate(item)]
    return found


def _put_null(case: Case, row: list, draw) -> list | None:
    """A null at a drawn depth of `row` (the row itself, a list, a number, a vector, a vector's value)."""
    depth = draw(st.integers(0, len(case.levels) + (1 if case.vector else 0)))
    if case.vector and depth == len(case.levels) + 1:
        vectors = [item for _, _, item in _entries_at(row, len(case.levels))]
        if vectors:
            vector = draw(st.sampled_from(vectors))
            if vector["values"]:
                vector["values"][draw(st.integers(0, len(vector["values"]) - 1))] = None
            else:
                vector["type"] = None
            return row
        depth = 0
    found = _entries_at(row, depth) if depth else []
    if not found:
        return None
    container, index, _ = draw(st.sampled_from(found))
    container[index] = None
    return row


def _vary_length(case: Case, row: list, draw) -> bool:
    """One variable-length entry (a list or a vector) of `row` one shorter or longer; False if none exists."""
    choices = [k for k, (name, _) in enumerate(case.levels) if name != "fixed" and _entries_at(row, k)]
    if case.vector and _entries_at(row, len(case.levels)):
        choices.append(len(case.levels))
    if not choices:
        return False
    level = draw(st.sampled_from(choices))
    _, _, entry = draw(st.sampled_from(_entries_at(row, level)))
    if case.vector and level == len(case.levels):
        if entry["type"] == 1:
            entry["values"] = entry["values"] + [1.0]
        else:
            entry["size"] += 1
    elif entry:
        entry.pop()
    else:
        entry.append(_nest(case, np.zeros(case.dims[level + 1:], case.leaf), level + 1))
    return True


def _arrow_array(case: Case, draw) -> pa.Array:
    rows = [_nest(case, row, 0) for row in case.values]
    r = case.pre + case.defect_row
    if case.defect == "null":
        rows[r] = _put_null(case, rows[r], draw)
    elif case.defect == "length" and not _vary_length(case, rows[r], draw):
        case.defect = "none"
    arrow_type = _arrow_type(case)
    if case.dictionary:
        order = draw(st.permutations(range(len(rows))))
        position = np.argsort(order)
        indices = pa.array([None if rows[i] is None else int(position[i]) for i in range(len(rows))], pa.int32())
        values = pa.array([rows[i] if rows[i] is not None else None for i in order], arrow_type)
        array = pa.DictionaryArray.from_arrays(indices, values)
    else:
        array = pa.array(rows, arrow_type)
    return array.slice(case.pre, case.rows)


# ---- the cases ------------------------------------------------------------------------------------
def _values(draw, leaf: str, shape: list[int], vector: str | None) -> np.ndarray:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = int(np.prod(shape))
    if leaf == "bool":
        return rng.integers(0, 2, size).astype(bool).reshape(shape)
    raw = rng.integers(0, 100, size)
    if leaf.startswith("float"):
        raw = raw * 0.5 * (rng.random(size) < 0.6 if vector == "sparse" else 1)
    return raw.astype(leaf).reshape(shape)


def _declared(draw, case_dims: list[int], defect: str) -> list[int]:
    mode = "exact" if defect == "length" else draw(st.sampled_from(
        ["exact", "unknown", "unknown", "trailing_one", "wrong_dim", "huge", "wrong_rank"]))
    event(f"declared shape: {mode}")
    declared = list(case_dims)
    if mode == "unknown":
        declared = [draw(st.sampled_from([d, -1])) for d in declared]
    elif mode == "trailing_one":
        declared += [draw(st.sampled_from([1, -1]))]
    elif mode == "wrong_dim" and declared:
        k = draw(st.integers(0, len(declared) - 1))
        declared[k] += 1
    elif mode == "huge":
        declared = [HUGE] * max(1, len(declared))
    elif mode == "wrong_rank":
        declared = declared[:-1] if declared and draw(st.booleans()) else declared + [2]
    return declared


def _put_value_defect(case: Case, draw) -> str:
    """Writes a NaN/inf or an out-of-range value into the window; the defect it became."""
    window = case.values[case.pre:case.pre + case.rows]
    if window.size == 0:
        return "none"
    flat_index = draw(st.integers(0, window.size - 1))
    position = np.unravel_index(flat_index, window.shape)
    if case.defect == "nonfinite":
        if not case.leaf.startswith("float"):
            return "none"
        value = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    else:
        value = _out_of_range_value(case.leaf, case.target)
        if value is None:
            return "none"
    window[position] = value
    case.defect_row = int(position[0])
    return case.defect


def _out_of_range_value(leaf: str, target: str):
    if target in ("bool", "float64") or leaf == "bool":
        return None
    if target == "float32":
        return 1e300 if leaf == "float64" else None
    info = np.iinfo(target)
    for candidate in ([info.max + 1, -1] if info.min == 0 else [info.max + 1, info.min - 1]):
        if leaf.startswith("float"):
            if float(np.dtype(leaf).type(candidate)) == candidate:
                return candidate
        elif np.iinfo(leaf).min <= candidate <= np.iinfo(leaf).max:
            return candidate
    return None


@st.composite
def cases(draw, vectors_only: bool = False):
    """A fuzzed case; `vectors_only`: a column of vectors, not in lists nor a dictionary (a sparse input's)."""
    depth = 0 if vectors_only else draw(st.integers(0, 3))
    levels = [(draw(st.sampled_from(["list", "large", "fixed"])), draw(st.integers(0, 3))) for _ in range(depth)]
    vector = draw(st.sampled_from(["dense", "sparse"] if vectors_only else [None, None, None, "dense", "sparse"]))
    leaf = "float64" if vector else draw(st.sampled_from(LEAVES))
    dims = [length for _, length in levels] + ([draw(st.integers(0, 4))] if vector else [])
    pre, rows, post = draw(st.integers(0, 3)), draw(st.integers(0, 6)), draw(st.integers(0, 3))
    values = _values(draw, leaf, [pre + rows + post] + dims, vector)
    defect = draw(st.sampled_from(["none", "none", "null", "length", "nonfinite", "range"]))
    can_vary = any(name != "fixed" for name, _ in levels) or vector
    if rows == 0 or (defect == "length" and not can_vary):
        defect = "none"
    dictionary = False if vectors_only else draw(st.booleans())
    case = Case(levels, vector, leaf, values, pre, rows, dictionary, draw(st.sampled_from(TARGETS)),
                [], draw(st.booleans()), defect, draw(st.integers(0, max(0, rows - 1))))
    if defect in ("nonfinite", "range"):
        case.defect = _put_value_defect(case, draw)
    case.declared = _declared(draw, dims, case.defect)
    if vectors_only and len(case.declared) != 1:  # a sparse input has shape (size,)
        case.declared = [draw(st.sampled_from([dims[0], -1]))]
    array = _arrow_array(case, draw)
    event(f"kind: {case.kind()}")
    event(f"defect: {case.defect}")
    return case, array


# ---- the properties -------------------------------------------------------------------------------
def _check_error(error: Exception, pattern: str) -> None:
    message = str(error)
    assert f"column '{COLUMN}'" in message, message
    assert re.search(pattern, message), (pattern, message)
    event(f"outcome: ColumnError ({pattern})")


def _check(case: Case, got: np.ndarray, shape: list[int]):
    expected, expected_shape = _expected(case)
    assert shape == expected_shape
    assert got.dtype == np.dtype(case.target) and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    event("outcome: values equal")


@FUZZ
@given(cases())
def test_to_dense_equals_numpy_or_names_the_column(fuzzed):
    case, array = fuzzed
    expected, why = _expected(case)
    call = lambda: _core.to_dense(*array.__arrow_c_array__(), COLUMN, case.target, case.declared,  # noqa: E731
                                  allow_non_finite=case.allow_non_finite)
    if expected is None:
        with pytest.raises(_core.ColumnError) as caught:
            call()
        _check_error(caught.value, why)
    else:
        _check(case, *call())


@FUZZ
@given(cases(), st.booleans())
def test_cache_writer_and_pipeline_equal_numpy_or_name_the_column(tmp_path_factory, fuzzed, slice_batch):
    case, array = fuzzed
    expected, why = _expected(case)
    ids = pa.array(np.zeros(len(array), np.int32))
    batch = pa.RecordBatch.from_arrays([ids, array], ["pid", COLUMN])
    if slice_batch and len(array) > 1:  # the batch's own offset, on top of the column's
        batch, case = batch.slice(1), _shifted(case, 1)
        expected, why = _expected(case)
    directory = tmp_path_factory.mktemp("cache")
    writer = _core.CacheWriter(str(directory / "chunk"), [(COLUMN, 1, case.target, case.declared)], 0,
                               allow_non_finite=case.allow_non_finite)
    if expected is None and case.rows > 0:
        with pytest.raises(_core.ColumnError) as caught:
            writer.write(*batch.__arrow_c_array__())
        _check_error(caught.value, why)
        return
    writer.write(*batch.__arrow_c_array__())
    summary = writer.finish()
    assert summary["rows"] == case.rows
    if case.rows == 0:
        return
    pipeline = _core.Pipeline([summary["files"]], [(case.target, summary["shapes"][0])], [[(0, 0, case.rows)]],
                              batch_size=case.rows, shuffle=False, seed=0, cycle_length=1, num_threads=1, prefetch=2)
    [got] = pipeline.next()
    pipeline.close()
    _check(case, got, summary["shapes"][0])


def _shifted(case: Case, by: int) -> Case:
    """The same case seen from `by` rows further in: a defect in the rows left behind is gone."""
    row = case.defect_row - by
    return Case(case.levels, case.vector, case.leaf, case.values, case.pre + by, case.rows - by, case.dictionary,
                case.target, case.declared, case.allow_non_finite, case.defect if row >= 0 else "none", max(row, 0))


def _densified(indices: np.ndarray, values: np.ndarray, shape, dtype: str) -> np.ndarray:
    out = np.zeros(shape, dtype)
    np.add.at(out, (indices[:, 0], indices[:, 1]), values)  # padding entries, (0, 0) = 0, add nothing
    return out


def _row_named(message: str) -> str | None:
    found = re.search(r"at row (\d+)", message)
    return found.group(1) if found else None


@FUZZ
@given(cases(vectors_only=True), st.booleans())
def test_sparse_kind_densifies_to_to_dense_or_names_the_same_column_and_row(tmp_path_factory, fuzzed, jax_layout):
    """A sparse input's batches (to_sparse, and CacheWriter + Pipeline of kind "sparse") against to_dense,
    itself checked against NumPy above: the same values, or a ColumnError naming the same column and row."""
    case, array = fuzzed
    layout = {"sparse_index_dtype": "int32", "sparse_pad": True} if jax_layout else {}
    convert = lambda fn, **more: fn(*array.__arrow_c_array__(), COLUMN, case.target, case.declared,  # noqa: E731
                                    allow_non_finite=case.allow_non_finite, **more)
    if case.declared[0] >= 2**31:  # no Spark ML vector is that wide: the declaration itself is refused
        with pytest.raises(_core.ColumnError, match=f"column '{COLUMN}': a sparse input's size .* is past int32"):
            convert(_core.to_sparse)
        return
    try:
        reference, shape = convert(_core.to_dense)
    except _core.ColumnError as dense_error:
        with pytest.raises(_core.ColumnError) as caught:
            convert(_core.to_sparse)
        assert f"column '{COLUMN}'" in str(caught.value)
        assert _row_named(str(caught.value)) == _row_named(str(dense_error)), (str(caught.value), str(dense_error))
        event("outcome: sparse ColumnError, same row")
        return
    indices, values, dense_shape = convert(_core.to_sparse, **layout)
    np.testing.assert_array_equal(_densified(indices, values, dense_shape, case.target), reference)
    if case.rows == 0:
        return
    directory = tmp_path_factory.mktemp("sparse")
    batch = pa.RecordBatch.from_arrays([pa.array(np.zeros(len(array), np.int32)), array], ["pid", COLUMN])
    writer = _core.CacheWriter(str(directory / "chunk"), [(COLUMN, 1, case.target, case.declared, "sparse")], 0,
                               allow_non_finite=case.allow_non_finite)
    writer.write(*batch.__arrow_c_array__())
    summary = writer.finish()
    pipeline = _core.Pipeline([summary["files"]], [(case.target, summary["shapes"][0], "sparse")],
                              [[(0, 0, case.rows)]], batch_size=case.rows, shuffle=False, seed=0, cycle_length=1,
                              num_threads=1, prefetch=2, **layout)
    [(indices, values, dense_shape)] = pipeline.next()
    pipeline.close()
    np.testing.assert_array_equal(_densified(indices, values, dense_shape, case.target), reference)
    event("outcome: sparse values equal")

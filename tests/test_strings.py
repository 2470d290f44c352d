"""String columns: with TensorFlow they feed keras.Input(dtype="string") raw; elsewhere a clear error."""

import keras
import numpy as np
import pyarrow as pa
import pytest

from keras_spark import _core
from keras_spark.errors import BindingError
from keras_spark.kinds.string import as_strings
from keras_spark.models import KerasSparkModel

TENSORFLOW = keras.backend.backend() == "tensorflow"
needs_string_tensors = pytest.mark.skipif(not TENSORFLOW, reason="only TensorFlow has string tensors")
COLORS = ["red", "green", "blue", "ünïcode ✓", ""]


def _strings(column):
    padded, lengths = _core.to_padded(*column.__arrow_c_array__(), "color", "uint8", [-1],
                                      (0, True, -1, False, False, 0.0))
    return as_strings(padded, (1,)), lengths


@pytest.mark.backend_independent
@pytest.mark.parametrize("arrow_type", [pa.string(), pa.large_string(), pa.binary()], ids=str)
def test_the_core_hands_strings_over_as_fixed_width_bytes(arrow_type):
    values = [c.encode() for c in COLORS] if arrow_type == pa.binary() else COLORS
    got, lengths = _strings(pa.array(values, arrow_type))
    assert got.shape == (5, 1) and got.dtype.kind == "S"
    assert [v.decode() for v in got[:, 0]] == COLORS
    assert lengths.tolist() == [len(c.encode()) for c in COLORS]


@pytest.mark.backend_independent
def test_a_sliced_string_array_respects_its_offset():
    got, _ = _strings(pa.array(COLORS).slice(1, 3))
    assert [v.decode() for v in got[:, 0]] == COLORS[1:4]


@pytest.mark.backend_independent
def test_a_null_string_names_column_and_row():
    with pytest.raises(_core.ColumnError, match=r"column 'color' has a null value at row 2"):
        _strings(pa.array(["a", "b", None]))


def _color_frame(spark, rows=200):
    data = [(i, i % 2, COLORS[i % 4], float(i % 4 == 1)) for i in range(rows)]
    return spark.createDataFrame(data, "id long, partition_id int, color string, label float")


def _color_model():
    color = keras.Input(shape=(1,), dtype="string", name="color")
    one_hot = keras.layers.StringLookup(vocabulary=COLORS[:4], output_mode="one_hot")(color)
    label = keras.layers.Dense(1, activation="sigmoid", name="label")(one_hot)
    model = KerasSparkModel(color, label)
    model.compile(keras.optimizers.Adam(0.1), "binary_crossentropy", metrics=["accuracy"])
    return model


@needs_string_tensors
def test_a_string_column_trains_evaluates_and_predicts_through_the_models_own_lookup(spark):
    keras.utils.set_random_seed(0)
    df = _color_frame(spark)
    model = _color_model()
    model.fit(df, batch_size=16, epochs=10, verbose=0)
    _, accuracy = model.evaluate(df, verbose=0)
    assert accuracy == 1.0
    scored = model.predict(df).select("color", "model_output.label").toPandas()
    by_color = scored.groupby("color")["label"].mean()
    assert by_color["green"] > 0.5 and max(by_color["red"], by_color["blue"], by_color["ünïcode ✓"]) < 0.5


@needs_string_tensors
@pytest.mark.session_independent
def test_string_columns_with_num_workers_are_refused_with_the_reason(spark):
    with pytest.raises(ValueError, match="num_workers=2 trains under JAX or PyTorch, which have no string tensors.*"
                                         r"\['color'\].*StringIndexer"):
        _color_model().fit(_color_frame(spark), batch_size=16, num_workers=2)


@pytest.mark.skipif(TENSORFLOW, reason="the TensorFlow backend has string tensors: the string input works there")
def test_a_string_input_without_tensorflow_is_a_binding_error_saying_what_to_do(spark):
    df = _color_frame(spark, rows=10)
    color = keras.Input(shape=(1,), dtype="string", name="color")
    label = keras.layers.Dense(1, name="label")(keras.layers.Hashing(8, output_mode="one_hot")(color))
    model = KerasSparkModel(color, label)
    model.compile("adam", "mse")
    with pytest.raises(BindingError, match=rf"{keras.backend.backend()} backend has no string tensors.*StringIndexer"
                                           r".*KERAS_BACKEND=tensorflow"):
        model.fit(df, batch_size=4, epochs=1, verbose=0)


def test_a_string_column_for_a_numeric_input_says_how_to_index_it(spark):
    df = _color_frame(spark, rows=10)
    color = keras.Input(shape=(1,), name="color")
    model = KerasSparkModel(color, keras.layers.Dense(1, name="label")(color))
    model.compile("adam", "mse")
    with pytest.raises(BindingError, match=r"column 'color' has type string.*StringIndexer.*dtype='string'"):
        model.fit(df, batch_size=4, epochs=1, verbose=0)


@pytest.mark.backend_independent
def test_as_strings_is_a_view_not_a_copy():
    padded = np.frombuffer(b"ab\0xyz", np.uint8).reshape(2, 3)
    view = as_strings(padded, (1,))
    assert view[:, 0].tolist() == [b"ab", b"xyz"] and np.shares_memory(view, padded)

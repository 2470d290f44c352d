"""Variable-length sequences: an input of shape (None, ...) takes an array column whose rows differ in length.

The core pads each batch as keras.utils.pad_sequences pads a list of rows; the tests hold it
to pad_sequences itself (cases, then randomized), then train, evaluate and predict on Spark.
"""

import keras
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_spark import _core, sequences
from keras_spark.errors import DataError
from keras_spark.kinds.sequence import ragged_output
from keras_spark.models import KerasSparkModel


def _padded(rows, length=None, padding="pre", truncating="pre", value=0.0, dtype="int32", inner=()):
    """The core's padding of `rows` (an Arrow list column) with pad_sequences' arguments."""
    arrow_type = pa.list_(pa.int64()) if not inner else pa.list_(pa.list_(pa.float32(), inner[0]))
    column = pa.array(rows, arrow_type)
    spec = (0, False, -1 if length is None else length, padding == "pre", truncating == "pre", value)
    padded, lengths = _core.to_padded(*column.__arrow_c_array__(), "tokens", dtype, [-1, *inner], spec,
                                      truncate=True)
    assert lengths.tolist() == [len(r) for r in rows]
    return padded


CASES = [
    dict(), dict(padding="post"), dict(length=3), dict(length=3, truncating="post"),
    dict(length=3, padding="post", truncating="post"), dict(length=8, padding="post"), dict(value=-1.0),
]


@pytest.mark.backend_independent
@pytest.mark.parametrize("options", CASES, ids=[str(c) for c in CASES])
def test_padding_matches_pad_sequences(options):
    rows = [[1, 2, 3, 4, 5], [6], [7, 8], [9, 10, 11]]
    keras_options = dict(maxlen=options.get("length"), padding=options.get("padding", "pre"),
                         truncating=options.get("truncating", "pre"), value=options.get("value", 0.0))
    np.testing.assert_array_equal(_padded(rows, **options), keras.utils.pad_sequences(rows, **keras_options))


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.lists(st.integers(-1000, 1000), min_size=1, max_size=12), min_size=1, max_size=20),
       length=st.one_of(st.none(), st.integers(1, 15)), padding=st.sampled_from(["pre", "post"]),
       truncating=st.sampled_from(["pre", "post"]), value=st.integers(-5, 5))
@pytest.mark.backend_independent
def test_padding_matches_pad_sequences_on_random_rows(rows, length, padding, truncating, value):
    expected = keras.utils.pad_sequences(rows, maxlen=length, padding=padding, truncating=truncating, value=value)
    got = _padded(rows, length, padding, truncating, float(value))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.backend_independent
def test_steps_of_a_fixed_shape_pad_with_whole_steps():
    rows = [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0]]]
    got = _padded(rows, padding="post", dtype="float32", inner=(2,))
    np.testing.assert_array_equal(got, [[[1, 2], [3, 4]], [[5, 6], [0, 0]]])


@pytest.mark.backend_independent
def test_a_row_past_a_fixed_length_without_truncating_names_column_and_row():
    column = pa.array([[1, 2], [1, 2, 3, 4]], pa.list_(pa.int64()))
    with pytest.raises(_core.ColumnError, match=r"column 'tokens'.*length 4 at row 1.*sequence_length 3.*truncating"):
        _core.to_padded(*column.__arrow_c_array__(), "tokens", "int32", [-1], (0, False, 3, False, False, 0.0))


@pytest.mark.backend_independent
def test_a_null_sequence_names_column_and_row():
    column = pa.array([[1], None], pa.list_(pa.int64()))
    with pytest.raises(_core.ColumnError, match=r"column 'tokens' has a null value at row 1"):
        _core.to_padded(*column.__arrow_c_array__(), "tokens", "int32", [-1], (0, False, -1, False, False, 0.0))


@pytest.mark.backend_independent
def test_a_bad_value_inside_a_sequence_names_its_row_and_step():
    column = pa.array([[1, 2], [3, 300]], pa.list_(pa.int64()))
    with pytest.raises(_core.ColumnError, match=r"value 300 at row 1 \(step 1\)"):
        _core.to_padded(*column.__arrow_c_array__(), "tokens", "int8", [-1], (0, False, -1, False, False, 0.0))


def test_per_step_outputs_are_cut_back_to_each_rows_own_steps():
    from pyspark.sql import types as T

    from keras_spark.spark.score import _to_arrow

    values = np.arange(2 * 4, dtype=np.float32).reshape(2, 4)  # two rows padded to 4 steps
    spark_type = T.ArrayType(T.FloatType())
    post = ragged_output(values, np.array([2, 4]), "post", _to_arrow, spark_type)
    pre = ragged_output(values, np.array([1, 3]), "pre", _to_arrow, spark_type)
    assert post.to_pylist() == [[0, 1], [4, 5, 6, 7]]
    assert pre.to_pylist() == [[3], [5, 6, 7]]


@pytest.mark.parametrize("options", [dict(padding="left"), dict(truncating="end"), dict(sequence_length=0),
                                     dict(bucket_by_length=[10, -1])], ids=str)
@pytest.mark.backend_independent
def test_bad_sequence_options_are_value_errors_naming_the_option(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        sequences.SequenceOptions(**options)


# -- the pipeline: padding per batch and bucketing -------------------------------------------
def _ragged_cache(tmp_path, lengths, partitions=3):
    """A cache chunk of rows 0..n-1: `tokens` row i holds `lengths[i]` copies of i + 1; `id` is i."""
    rows = [[i + 1] * n for i, n in enumerate(lengths)]
    pids = sorted(i % partitions for i in range(len(rows)))
    batch = pa.record_batch({"tokens": pa.array(rows, pa.list_(pa.int64())), "id": pa.array(range(len(rows))),
                             "pid": pa.array(pids, pa.int32())})
    writer = _core.CacheWriter(str(tmp_path / "chunk"), [("tokens", 0, "int32", [-1]), ("id", 1, "int64", [])], 2,
                               ragged=[(0, False, -1)])
    writer.write(*batch.__arrow_c_array__())
    summary = writer.finish()
    parts = {}
    for pid, start, count in summary["runs"]:
        parts.setdefault(pid, []).append((0, start, count))
    return summary, [parts[p] for p in sorted(parts)]


def _open(summary, parts, batch_size, **options):
    return _core.Pipeline([summary["files"]], [("int32", [-1]), ("int64", [])], parts, batch_size=batch_size,
                          shuffle=True, seed=3, cycle_length=3, num_threads=2, prefetch=4,
                          ragged=[(0, False, -1, False, False, 0.0)], **options)


@pytest.mark.backend_independent
def test_each_batch_is_padded_to_its_longest_row(tmp_path):
    lengths = np.random.default_rng(1).integers(0, 30, 200)
    summary, parts = _ragged_cache(tmp_path, lengths)
    pipeline = _open(summary, parts, 16)
    for _ in range(pipeline.steps_per_epoch):
        tokens, ids = pipeline.next()
        rows = [[int(i) + 1] * int(lengths[i]) for i in ids]
        expected = keras.utils.pad_sequences(rows, maxlen=max(1, max(map(len, rows))), padding="post")
        np.testing.assert_array_equal(tokens, expected)
    pipeline.close()


def test_bucketing_groups_similar_lengths_and_visits_every_row_once_an_epoch(tmp_path):
    lengths = np.random.default_rng(2).integers(1, 60, 500)
    summary, parts = _ragged_cache(tmp_path, lengths)
    boundaries = [10, 20, 40]
    pipeline = _open(summary, parts, 16, bucket_column=0, bucket_boundaries=boundaries)
    counts = np.bincount(np.searchsorted(boundaries, lengths, side="right"), minlength=4)
    assert pipeline.steps_per_epoch == sum(-(-c // 16) for c in counts)
    for _ in range(2):
        seen = []
        for _ in range(pipeline.steps_per_epoch):
            tokens, ids = pipeline.next()
            buckets = set(np.searchsorted(boundaries, lengths[ids], side="right"))
            assert len(buckets) == 1  # one bucket a batch
            assert tokens.shape[1] == lengths[ids].max()
            seen += ids.tolist()
        assert sorted(seen) == list(range(500))
    assert pipeline.stats()["real_steps"] == 2 * lengths.sum()
    pipeline.close()


@pytest.mark.backend_independent
def test_merged_bucket_tails_leave_one_part_filled_batch_an_epoch(tmp_path):
    lengths = np.random.default_rng(2).integers(1, 60, 500)
    summary, parts = _ragged_cache(tmp_path, lengths)
    boundaries = [10, 20, 40]
    pipeline = _open(summary, parts, 16, bucket_column=0, bucket_boundaries=boundaries, merge_bucket_tails=True)
    counts = np.bincount(np.searchsorted(boundaries, lengths, side="right"), minlength=4)
    assert pipeline.steps_per_epoch == sum(c // 16 for c in counts) + -(-sum(c % 16 for c in counts) // 16)
    for _ in range(2):
        seen, sizes = [], []
        for _ in range(pipeline.steps_per_epoch):
            tokens, ids = pipeline.next()
            assert tokens.shape[1] == lengths[ids].max()
            seen += ids.tolist()
            sizes.append(len(ids))
        assert sorted(seen) == list(range(500))
        assert sizes[:-1] == [16] * (len(sizes) - 1)  # only the epoch's last batch is part-filled
    pipeline.close()


@pytest.mark.backend_independent
def test_padding_fraction_falls_with_bucketing():
    lengths = np.random.default_rng(3).integers(1, 100, 4000)
    plain = sequences.padding_fraction(lengths, 32)
    bucketed = sequences.padding_fraction(lengths, 32, boundaries=sequences.auto_boundaries(lengths, 32))
    assert bucketed < plain / 2


# -- on Spark: train, evaluate and predict ---------------------------------------------------
def _token_frame(spark, rows=240, max_length=12, seed=0):
    """tokens (array<int>, lengths 1..max_length), label = whether token 7 occurs, tags = token parity."""
    rng = np.random.default_rng(seed)
    data = []
    for i in range(rows):
        tokens = rng.integers(1, 20, int(rng.integers(1, max_length + 1))).tolist()
        data.append((i, i % 3, tokens, float(7 in tokens), [t % 2 for t in tokens]))
    return spark.createDataFrame(data, "id long, partition_id int, tokens array<int>, label float, tags array<int>")


def _classifier():
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    embedded = keras.layers.Embedding(20, 8)(tokens)  # padding is token 0, never a real token
    label = keras.layers.Dense(1, activation="sigmoid", name="label")(keras.layers.GlobalMaxPooling1D()(embedded))
    model = KerasSparkModel(tokens, label)
    model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy", metrics=["accuracy"])
    return model


def test_a_sequence_classifier_trains_evaluates_and_predicts(spark):
    keras.utils.set_random_seed(0)
    df = _token_frame(spark)
    model = _classifier()
    model.fit(df, batch_size=16, epochs=8, verbose=0, bucket_by_length=True)
    assert model.data_stats["padding_fraction_bucketed"] < model.data_stats["padding_fraction_unbucketed"]
    assert 0 <= model.data_stats["padding_fraction"] < 1
    _, accuracy = model.evaluate(df, verbose=0)
    assert accuracy > 0.85
    scored = model.predict(df).select("id", "model_output.label").orderBy("id").toPandas()
    assert len(scored) == 240 and scored["label"].between(0, 1).all()


def test_a_sequence_past_a_fixed_length_with_truncating_unset_is_a_data_error(spark):
    df = _token_frame(spark, rows=30, max_length=12)
    with pytest.raises(DataError, match=r"column 'tokens' has a sequence of length \d+ at row \d+ of partition id "
                                        r"\d+, longer than the fixed sequence_length 4"):
        _classifier().fit(df, batch_size=8, epochs=1, verbose=0, sequence_length=4)


@pytest.mark.session_independent
def test_a_fixed_length_truncates_as_asked(spark):
    df = _token_frame(spark, rows=60, max_length=12)
    model = _classifier()
    model.fit(df, batch_size=8, epochs=1, verbose=0, sequence_length=4, truncating="post")
    assert model.data_stats["padding_fraction"] < 0.5


def test_sequence_tagging_labels_pad_like_their_inputs_and_predict_keeps_each_rows_length(spark):
    keras.utils.set_random_seed(0)
    df = _token_frame(spark, rows=120)
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    embedded = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    tags = keras.layers.Dense(2, activation="softmax", name="tags")(embedded)
    model = KerasSparkModel(tokens, tags)
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(df, batch_size=16, epochs=6, verbose=0)
    _, accuracy = model.evaluate(df, verbose=0)
    assert accuracy > 0.9
    rows = model.predict(df).select("tokens", "model_output.tags").collect()
    assert all(len(r.tags) == len(r.tokens) and len(r.tags[0]) == 2 for r in rows)
    parity = [int(np.argmax(step)) == t % 2 for r in rows for step, t in zip(r.tags, r.tokens, strict=True)]
    assert np.mean(parity) > 0.9


# -- every row once an epoch, buckets or not ----------------------------------------------------
class RowsSeen(keras.metrics.Sum):
    """Counts the rows Keras was fed: a sum of ones, one a row, with no sample_weight."""

    def __init__(self, name="rows_seen", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        super().update_state(keras.ops.ones_like(y_pred[:, 0]))


def _lengths_frame(spark, rows):
    """`rows` rows of lengths 1..50, three partition ids (issue 19's example)."""
    data = [(i, i % 3, [1 + i % 19] * (1 + i % 50), float(i % 2)) for i in range(rows)]
    return spark.createDataFrame(data, "id long, partition_id int, tokens array<int>, label float")


@pytest.mark.session_independent
@pytest.mark.parametrize("bucket_by_length", [False, True], ids=["unbucketed", "bucketed"])
def test_fit_and_evaluate_feed_every_row_once_an_epoch_in_few_shapes_under_jax(spark, bucket_by_length):
    df = _lengths_frame(spark, 600)
    model = _classifier()
    model.compile("adam", "binary_crossentropy", metrics=[RowsSeen()])
    history = model.fit(df, batch_size=32, epochs=2, verbose=0, bucket_by_length=bucket_by_length)
    assert history.history["rows_seen"] == [600, 600]
    stats = model.data_stats
    assert stats["rows"] == 2 * 600
    assert 0 < stats["padding_fraction"] < 1
    if keras.backend.backend() == "jax":  # few shapes: each bucket's longest (or 8, 16, 32, 50), the last batch
        assert stats["distinct_shapes"] <= (len(stats["bucket_boundaries"]) + 2 if bucket_by_length else 5)
    else:  # the other backends keep each batch padded to its own longest row
        assert stats["distinct_shapes"] >= 1
    _, rows = model.evaluate(df, batch_size=32, verbose=0, bucket_by_length=bucket_by_length)
    assert rows == 600


# -- few batch shapes for JAX, which compiles a step per shape (counted in the test above) ---------------
def _masked_lstm():
    keras.utils.set_random_seed(0)
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    hidden = keras.layers.LSTM(4)(keras.layers.Embedding(20, 4, mask_zero=True)(tokens))
    model = KerasSparkModel(tokens, keras.layers.Dense(1, activation="sigmoid", name="label")(hidden))
    model.compile("adam", "binary_crossentropy")
    return model


@pytest.mark.session_independent
def test_steps_padded_for_few_shapes_are_masked_as_the_cores(spark, monkeypatch):
    df = _lengths_frame(spark, 300)
    model = _masked_lstm()
    laddered = model.evaluate(df, batch_size=32, verbose=0, bucket_by_length=True)
    monkeypatch.setattr(sequences, "compiles_per_shape", lambda: False)
    each_batch_its_longest = model.evaluate(df, batch_size=32, verbose=0, bucket_by_length=True)
    assert laddered == pytest.approx(each_batch_its_longest, rel=1e-5)


@pytest.mark.backend_independent
@pytest.mark.parametrize("padding", ["pre", "post"])
def test_the_step_ladder_pads_with_pad_value_to_the_next_length(padding):
    from types import SimpleNamespace

    options = sequences.SequenceOptions(padding=padding, pad_value=-1)
    bindings = [SimpleNamespace(kind=sequences.SEQUENCE, sequence=options),
                SimpleNamespace(kind="dense", sequence=None)]
    ladder = sequences.StepLadder(bindings, np.array([4, 8]), batch_size=2)
    tokens, label = np.array([[1, 2, 3], [4, 5, -1]], np.int32), np.zeros((2, 1), np.float32)
    padded, same = ladder([tokens.copy(), label])
    expected = [[1, 2, 3, -1], [4, 5, -1, -1]] if padding == "post" else [[-1, 1, 2, 3], [-1, 4, 5, -1]]
    np.testing.assert_array_equal(padded, expected)
    assert same is label and ladder.extra_steps == 2
    assert ladder([np.ones((1, 8), np.int32), label[:1]])[0].shape == (1, 8)  # the longest: as it comes
    assert ladder.shapes == {(2, ((4,), (1,))), (1, ((8,), (1,)))}

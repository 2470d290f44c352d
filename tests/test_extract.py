"""The one Spark pass: where the cache lives, the path through the driver, and cleanup."""

import os

import numpy as np
import pytest
from builders import numeric_frame, regression_model

from keras_spark.binding import bind_inputs, bind_labels
from keras_spark.feed import BatchFeed
from keras_spark.spark import extract as extract_module
from keras_spark.spark import session
from keras_spark.spark.extract import extract, id_ranges

# the Spark pass into the cache happens before any Keras backend is involved
pytestmark = pytest.mark.backend_independent


def _all_batches(model, cached):
    feed = BatchFeed(model, cached, batch_size=100, shuffle=False, seed=0, num_parallel_calls=2)
    batches = [next(iter(feed)) for _ in range(feed.steps_per_epoch)]
    feed.close()
    return batches


def _client_path_matches_executor_path(spark):
    df = numeric_frame(spark, rows=3000, partitions=5)
    model = regression_model()
    bindings = bind_inputs(model, df.schema) + bind_labels(model, df.schema)
    direct = extract(df, bindings, "partition_id")
    through_client = extract(df, bindings, "partition_id", stream=True)
    try:
        assert through_client.rows == direct.rows == 3000
        assert through_client.partition_ids == direct.partition_ids == [0, 1, 2, 3, 4]
        for (x1, y1), (x2, y2) in zip(_all_batches(model, direct), _all_batches(model, through_client), strict=True):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)
    finally:
        direct.remove()
        through_client.remove()


def test_rows_through_the_client_give_the_same_batches(spark):
    _client_path_matches_executor_path(spark)


def test_a_connect_client_reads_the_servers_arrow_stream_not_chunks(spark, monkeypatch):
    if not session.is_connect(spark):
        pytest.skip("a classic session has no Connect result stream: its client path reads chunks")

    def chunked(*args):
        raise AssertionError("a Connect client read in chunks")

    monkeypatch.setattr(extract_module, "_chunked_reads", chunked)
    _client_path_matches_executor_path(spark)


def test_client_reads_in_small_chunks_give_the_same_batches(spark, monkeypatch):
    monkeypatch.setattr(extract_module, "_server_stream", lambda df: None)  # Connect too: no stream, chunks
    monkeypatch.setattr(extract_module, "CHUNK_BYTES", 4096)  # a few dozen rows a chunk: many persisted reads
    _client_path_matches_executor_path(spark)


def test_id_ranges_cover_every_row_once_in_order():
    partition_rows = {0: 5, 1: 0, 2: 7, 5: 3}
    ids = [(p << 33) + i for p in sorted(partition_rows) for i in range(partition_rows[p])]
    for per_chunk in (1, 2, 4, 5, 15, 100):
        ranges = id_ranges(partition_rows, per_chunk)
        chunks = [[i for i in ids if i >= lo and (hi is None or i < hi)] for lo, hi in ranges]
        assert [i for chunk in chunks for i in chunk] == ids
        assert all(0 < len(chunk) <= per_chunk for chunk in chunks)
        assert ranges[-1][1] is None
    assert id_ranges({}, 10) == []


def test_fit_uses_cache_dir_and_leaves_nothing_behind(spark, tmp_path):
    df = numeric_frame(spark, rows=500, partitions=2)
    model = regression_model()
    model.fit(df, batch_size=50, epochs=1, verbose=0, cache_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []
    assert model.data_stats["rows"] >= 500 and model.data_stats["spark_pass_s"] > 0


def test_fit_reads_only_the_bound_columns(spark):
    from pyspark.sql import functions as F

    # An extra column that would fail if Spark computed it: never read.
    df = numeric_frame(spark, rows=200, partitions=2).withColumn(
        "poison", F.raise_error(F.lit("the extra column was read")))
    regression_model().fit(df, batch_size=50, epochs=1, verbose=0)


def test_fit_runs_one_spark_job_however_many_partition_ids(classic_spark):
    df = numeric_frame(classic_spark, rows=2000, partitions=40)
    sc = classic_spark.sparkContext
    sc.setJobGroup("keras-spark-one-pass", "fit reads the DataFrame once")
    try:
        regression_model().fit(df, batch_size=100, epochs=3, verbose=0)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    assert len(sc.statusTracker().getJobIdsForGroup("keras-spark-one-pass")) == 1

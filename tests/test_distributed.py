"""fit(num_workers=N): data-parallel training in a Spark barrier stage.

The training scenarios run in one subprocess of the pass's backend, JAX or PyTorch
(distributed_run.py; the backend is fixed per process); the routing and refusal checks run here.
"""

import os

import numpy as np
import pytest
from builders import in_the_data_parallel_passes, numeric_frame, regression_model, run_scenarios
from pyspark.sql import functions as F

from keras_spark.feed import LockstepFeed, lockstep_weights
from keras_spark.spark.distributed import assign_partitions, routing_keys, spark_hash_int


@pytest.fixture(scope="module")
def scenarios():
    if in_the_data_parallel_passes.args[0]:
        pytest.skip(in_the_data_parallel_passes.kwargs["reason"])
    return run_scenarios("distributed_run.py", dict(os.environ), timeout=1200)


def test_two_workers_end_with_the_weights_of_one(scenarios):
    """Dense, sequence, image and vector columns (and a sparse=True one under JAX), a weight column and
    validation in one model: pads repeat real rows at weight 0, the mask hides sequence padding."""
    result = scenarios["every_kind"]
    assert result["max_weight_diff"] < 1e-5
    one, two = result["history1"], result["history2"]
    assert sorted(two) == sorted(one) == ["loss", "mae", "val_loss", "val_mae"]
    # mae: rows of weight 0 count in metrics, as on one; validation is unweighted on both (whole steps, no pads)
    for key in ("mae", "val_loss", "val_mae"):
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5)
    assert result["epochs"] == [0, 1]
    assert result["rows"] == 2 * 640
    assert result["optimizer_iterations"] == 2 * 20  # 640 / 32 steps an epoch, state copied back


def test_uneven_partitions_and_buckets_serve_every_row_once_an_epoch(scenarios):
    result = scenarios["uneven"]
    stats = result["stats"]
    assert sum(stats["rows_per_worker"]) == result["total"]
    assert stats["rows_served_per_worker"] == [3 * rows for rows in stats["rows_per_worker"]]
    assert stats["rows_per_worker"] == [1500, 1037]  # the largest id alone, the rest together
    # The busier worker's bucketed plan sets the pace: at least ceil(1500 / 32) steps.
    assert stats["steps_per_epoch"] >= 47
    assert result["history_keys"] == ["loss", "mae", "val_loss", "val_mae"]
    assert result["loss"][2] < result["loss"][1] < result["loss"][0]  # it trains, epoch after epoch
    assert result["loss"][2] < 0.5 * result["loss"][0]


def test_a_failing_worker_fails_fit_with_its_own_error(scenarios):
    result = scenarios["worker_raises"]
    assert result["raised"] == "TrainingError"
    assert "worker 1 failed: ValueError: this worker failed on purpose at epoch 1" in result["message"]
    assert result["seconds_after_failure"] < 120  # no hang: the stage fails, the peer is stopped


@pytest.mark.parametrize("scenario", ["worker_raises", "worker_raises_cache_dir"])
def test_a_failing_run_leaves_no_directory_or_training_process_on_any_executor(scenarios, scenario):
    result = scenarios[scenario]
    assert result["raised"] == "TrainingError"
    assert result["dirs_left"] == []
    assert result["processes_left"] == []


def test_data_stats_rows_count_every_workers_rows_trained(scenarios):  # pads excluded
    result = scenarios["uneven"]
    assert result["stats"]["rows"] == 3 * result["total"]  # three epochs of all rows, pads excluded


def test_backup_and_restore_resumes_after_spark_reruns_the_stage(scenarios):
    result = scenarios["resume_after_failure"]
    assert result["epochs_seen"] == [0, 1, 2, 3]  # epochs 0-1, crash, then 2-3 after the rerun
    assert result["history_epochs"] == [2, 3]


@pytest.mark.session_independent
@pytest.mark.backend_independent
def test_spark_hash_matches_spark(spark):
    values = [0, 1, 2, 7, 42, -5, 123456, 2**31 - 1, -(2**31)]
    df = spark.createDataFrame([(v,) for v in values], "v int")
    got = [row[0] for row in df.select(F.hash("v")).collect()]
    assert got == [spark_hash_int(v) for v in values]


@pytest.mark.session_independent
@pytest.mark.backend_independent
def test_routing_keys_send_each_worker_to_its_own_shuffle_partition(spark):
    for workers in (2, 3, 5):
        keys = routing_keys(workers)
        df = spark.createDataFrame([(k, w) for w, k in enumerate(keys)], "key int, worker int")
        routed = df.repartition(workers, "key").withColumn("spark_partition", F.spark_partition_id())
        assert sorted((r.worker, r.spark_partition) for r in routed.collect()) == [(w, w) for w in range(workers)]


@pytest.mark.backend_independent
def test_partition_ids_are_dealt_largest_first():
    owner = assign_partitions({0: 100, 1: 10, 2: 60, 3: 50}, 2)
    assert owner == {0: 0, 2: 1, 3: 1, 1: 0}
    loads = [sum(n for p, n in {0: 100, 1: 10, 2: 60, 3: 50}.items() if owner[p] == w) for w in (0, 1)]
    assert loads == [110, 110]


@pytest.mark.backend_independent
def test_lockstep_weights_make_the_loss_a_mean_over_real_rows():
    # Workers with 70 and 40 rows, 32 a step: step 2 has 6 + 0 real rows of 64 fed.
    plans = [[32, 32, 6], [32, 8]]
    assert lockstep_weights(plans, 32, 0) == (64, 1.0)
    real, weight = lockstep_weights(plans, 32, 2)
    assert real == 6 and weight == pytest.approx(64 / 6)
    assert lockstep_weights(plans, 32, 1) == (32 + 8, 64 / 40)
    # Buckets: a worker's part-filled steps come at its pass's end, as its feed plans them.
    assert lockstep_weights([[32, 32, 5, 9], [32, 20]], 32, 3) == (9, 64 / 9)


@pytest.mark.backend_independent
def test_pad_rows_repeat_real_rows_at_weight_zero():
    class Feed:  # what LockstepFeed reads of a BatchFeed
        batch_size = 4
        columns = [("int32", [-1])]
        batches = iter([[np.array([[1, 2, 0], [3, 0, 0], [4, 5, 6], [7, 0, 0]])], [np.array([[8, 9]])]])

        def next_arrays(self):
            return next(self.batches)

        def row_count(self, arrays):
            return len(arrays[0])

        def rows_at(self, arrays, index):
            return [a[index] for a in arrays]

        def pack(self, arrays):
            return arrays[0], arrays[0][:, :1]

    lockstep = LockstepFeed(Feed(), rank=0, plans=[[4, 1], [4, 4, 4]])
    steps = iter(lockstep)
    next(steps)
    x, _, weights = next(steps)
    np.testing.assert_array_equal(x, [[8, 9]] * 4)  # the short batch repeats its one row
    np.testing.assert_allclose(weights, [8 / 5, 0, 0, 0])  # 5 real rows of the 8 fed
    assert np.signbit(weights).tolist() == [False, True, True, True]  # pads weigh -0.0: metrics skip them
    x, _, weights = next(steps)  # a step of pads only: the last batch's first row, weight 0
    np.testing.assert_array_equal(x, [[8, 9]] * 4)
    assert not weights.any() and np.signbit(weights).all()


@pytest.mark.backend_independent
def test_a_sparse_batch_laid_out_by_row_is_padded_by_row():
    from keras_spark.kinds.sparse import SparseKind

    indices = np.array([[[1], [4]], [[2], [0]]], np.int32)  # row 0: columns 1, 4; row 1: column 2
    values = np.array([[1.0, 2.0], [3.0, 0.0]], np.float32)
    kind = SparseKind()
    batch = (indices, values, (2, 6))
    assert kind.row_count(batch) == 2
    got_indices, got_values, shape = kind.rows_at(batch, np.arange(5) % 2)
    assert shape == (5, 6)
    np.testing.assert_array_equal(got_indices[:, :, 0], [[1, 4], [2, 0], [1, 4], [2, 0], [1, 4]])
    np.testing.assert_array_equal(got_values[4], [1.0, 2.0])
    coo = (np.array([[0, 1], [1, 2]]), np.array([1.0, 3.0]), (2, 6))
    with pytest.raises(RuntimeError, match="laid out by row"):
        kind.rows_at(coo, np.arange(3))


def _expect_refusal(spark, match, **fit_kwargs):
    model = regression_model()
    with pytest.raises((ValueError, TypeError), match=match):
        model.fit(numeric_frame(spark, 64, 4), **fit_kwargs)


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
                    reason="needs a process whose Keras backend is TensorFlow: runs in the tensorflow pass")
def test_tensorflow_is_refused_with_why_and_what_to_do(spark):
    _expect_refusal(spark, "JAX and PyTorch backends.*no dependable multi-worker engine on TensorFlow.*"
                    "keras-team/keras#20585.*KERAS_BACKEND=jax or KERAS_BACKEND=torch.*no TensorFlow-only layers",
                    num_workers=2, batch_size=32)


def test_bad_num_workers_are_refused(spark):
    _expect_refusal(spark, "num_workers must be a positive integer", num_workers=0)
    _expect_refusal(spark, "num_workers must be a positive integer", num_workers=1.5)


def test_what_cannot_run_is_refused_before_training(scenarios):
    messages = scenarios["refusals"]["messages"]
    assert messages["odd_batch"].startswith("ValueError: batch_size=33 is the global batch")
    assert "try batch_size=34" in messages["odd_batch"]
    assert messages["too_many_workers"].startswith("ValueError: num_workers=3 needs 3 task slots")
    assert messages["validation_batch"].startswith("ValueError: validation_batch_size=15 is the global batch")
    assert messages["empty_validation"] == "DataError: validation_data has no rows"
    assert messages["too_few_ids"].startswith("DataError: num_workers=2 but the DataFrame has 1 partition id")
    # A bad row is named as without workers: its position among its partition id's rows, in DataFrame order
    assert messages["bad_row"].startswith("DataError: column 'x' has a NaN or infinite value")
    assert "at row 5 of partition id 1" in messages["bad_row"]
    assert messages["bad_validation_row"].startswith("DataError: validation_data: column 'x' has a NaN")
    assert "at row 7 of partition id 2" in messages["bad_validation_row"]

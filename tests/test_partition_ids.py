"""fit and evaluate make partition ids when no `partition_col` is named and the DataFrame has no `partition_id`;
one that exists is used; one that is named is never made in its place."""

import contextlib

import numpy as np
import pytest
from builders import numeric_frame, regression_model

from keras_spark.errors import BindingError
from keras_spark.ml import KerasEstimator
from keras_spark.spark.training import MADE_PARTITION_IDS

pytestmark = [pytest.mark.backend_independent, pytest.mark.session_independent]


def test_fit_without_a_partition_column_makes_ids_and_trains_every_row(spark):
    df = numeric_frame(spark, rows=400, partitions=3).drop("partition_id")
    model = regression_model()
    model.fit(df, batch_size=50, epochs=2, verbose=0)
    assert model.data_stats["partition_ids_made"] is True
    assert model.data_stats["partitions"] == MADE_PARTITION_IDS
    assert model.data_stats["rows"] == 800


def test_fit_uses_a_partition_column_that_exists(spark):
    df = numeric_frame(spark, rows=400, partitions=3)
    model = regression_model()
    model.fit(df, batch_size=50, epochs=1, verbose=0)
    assert model.data_stats["partition_ids_made"] is False
    assert model.data_stats["partitions"] == 3
    assert "partition_id" in df.columns


def test_fit_makes_ids_for_validation_data_too(spark):
    train, validation = numeric_frame(spark, rows=200, partitions=2).drop("partition_id").randomSplit([0.8, 0.2], 1)
    model = regression_model()
    history = model.fit(train, validation_data=validation, batch_size=50, epochs=1, verbose=0)
    assert model.data_stats["partition_ids_made"] is True
    assert "val_loss" in history.history


def test_evaluate_without_a_partition_column_scores_every_row_as_with_one(spark):
    df = numeric_frame(spark, rows=300, partitions=3)
    model = regression_model()
    with_ids = model.evaluate(df, batch_size=300, verbose=0)
    made = model.evaluate(df.drop("partition_id"), batch_size=300, verbose=0)
    np.testing.assert_allclose(made, with_ids, rtol=1e-5)


# -- a named partition column is never made ------------------------------------------------
@contextlib.contextmanager
def _no_spark_job(spark, group: str):
    """Fails the test when a Spark job starts inside the block (counted through the SparkContext)."""
    spark.sparkContext.setJobGroup(group, "no job may start")
    try:
        yield
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
        assert spark.sparkContext.statusTracker().getJobIdsForGroup(group) == []


def _refusal(keyword: str, column: str, frame: str = "the DataFrame", listed: str = "partition_id") -> str:
    return (rf"{keyword}='{column}' names a partition id column that {frame} does not have; columns are "
            rf"\[.*'{listed}'.*\]")


@pytest.mark.parametrize("named", ["partiton_id", "shard"])
def test_fit_and_evaluate_refuse_a_named_partition_column_that_is_absent_before_any_job(classic_spark, named):
    df = numeric_frame(classic_spark, rows=100, partitions=2)
    model = regression_model()
    with _no_spark_job(classic_spark, "named-partition-col"):
        with pytest.raises(BindingError, match=_refusal("partition_col", named)):
            model.fit(df, partition_col=named, verbose=0)
        with pytest.raises(BindingError, match=_refusal("partition_col", named)):
            model.evaluate(df, partition_col=named, verbose=0)


def test_the_default_column_named_explicitly_is_not_made_either(classic_spark):
    df = numeric_frame(classic_spark, rows=100, partitions=2).drop("partition_id")
    with _no_spark_job(classic_spark, "named-default-partition-col"):
        with pytest.raises(BindingError, match=r"partition_col='partition_id' names a partition id column"):
            regression_model().fit(df, partition_col="partition_id", verbose=0)


def test_validation_data_without_the_named_partition_column_is_refused_before_any_job(classic_spark):
    df = numeric_frame(classic_spark, rows=100, partitions=2).withColumnRenamed("partition_id", "shard")
    validation = numeric_frame(classic_spark, rows=40, partitions=2)
    with _no_spark_job(classic_spark, "named-partition-col-validation"):
        with pytest.raises(BindingError, match=_refusal("partition_col", "shard", "validation_data")):
            regression_model().fit(df, partition_col="shard", validation_data=validation, verbose=0)


def test_a_set_partition_col_param_must_name_a_column_before_any_job(classic_spark):
    df = numeric_frame(classic_spark, rows=100, partitions=2)
    estimator = KerasEstimator(model=regression_model(), partitionCol="partiton_id")
    with _no_spark_job(classic_spark, "named-partition-col-param"):
        with pytest.raises(BindingError, match=_refusal("partitionCol", "partiton_id")):
            estimator.fit(df)
        estimator.setPartitionCol("partition_id").setValidationData(df.drop("partition_id").withColumn("z", df.id))
        with pytest.raises(BindingError, match=_refusal("partitionCol", "partition_id", "the validation data", "z")):
            estimator.fit(df)


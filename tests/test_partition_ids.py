"""fit and evaluate make partition ids when the DataFrame has no `partition_col` column; one that exists is used."""

import numpy as np
import pytest
from builders import numeric_frame, regression_model

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


def test_fit_makes_ids_under_another_partition_col_name_for_validation_data_too(spark):
    train, validation = numeric_frame(spark, rows=200, partitions=2).drop("partition_id").randomSplit([0.8, 0.2], 1)
    model = regression_model()
    history = model.fit(train, validation_data=validation, batch_size=50, epochs=1, verbose=0, partition_col="shard")
    assert model.data_stats["partition_ids_made"] is True
    assert "val_loss" in history.history


def test_evaluate_without_a_partition_column_scores_every_row_as_with_one(spark):
    df = numeric_frame(spark, rows=300, partitions=3)
    model = regression_model()
    with_ids = model.evaluate(df, batch_size=300, verbose=0)
    made = model.evaluate(df.drop("partition_id"), batch_size=300, verbose=0)
    np.testing.assert_allclose(made, with_ids, rtol=1e-5)

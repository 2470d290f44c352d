"""predict on a streaming DataFrame: a query restarted from its checkpoint loses and duplicates nothing."""

import numpy as np
import pytest
from builders import numeric_frame, regression_model, to_numpy
from pyspark.sql import functions as F

from keras_spark.spark.session import is_connect

# checkpointed streaming restarts are Spark's; scoring under each backend is test_predict's
pytestmark = pytest.mark.backend_independent


def _add_files(spark, directory, first_id: int, rows: int, files: int) -> None:
    frame = numeric_frame(spark, rows=first_id + rows, partitions=2, spark_partitions=files)
    frame.where(F.col("id") >= first_id).repartition(files).write.mode("append").parquet(directory)


def _run_until_caught_up(scored, out: str, checkpoint: str) -> None:
    query = (scored.writeStream.format("parquet").option("checkpointLocation", checkpoint)
             .trigger(availableNow=True).start(out))
    query.awaitTermination(300)
    assert query.exception() is None, query.exception()


def test_a_streaming_predict_restarted_from_its_checkpoint_loses_and_duplicates_nothing(spark, tmp_path):
    if is_connect(spark):
        pytest.skip("the Connect test server has a private /tmp (a remote cluster's view), so it cannot read "
                    "source files this client writes to its own tmp_path")
    source, out, checkpoint = (str(tmp_path / name) for name in ("in", "out", "checkpoint"))
    model = regression_model()
    _add_files(spark, source, 0, 300, files=3)
    schema = spark.read.parquet(source).schema

    def scored():  # a new query each run, as after a restart
        stream = spark.readStream.schema(schema).option("maxFilesPerTrigger", 1).parquet(source)
        return model.predict(stream).select("id", "x", F.col("model_output.y").alias("y_hat"))

    _run_until_caught_up(scored(), out, checkpoint)
    _add_files(spark, source, 300, 300, files=3)  # new data while the query was down
    _run_until_caught_up(scored(), out, checkpoint)
    _run_until_caught_up(scored(), out, checkpoint)  # nothing new: nothing written again

    result = spark.read.parquet(out)
    assert result.count() == 600
    assert result.select("id").distinct().count() == 600
    ids, x, y_hat = to_numpy(result, "id", "x", "y_hat")
    np.testing.assert_array_equal(ids, np.arange(600))
    np.testing.assert_allclose(y_hat, model.predict(x, verbose=0).reshape(-1), rtol=1e-5, atol=1e-5)

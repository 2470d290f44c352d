"""The user's quickstart (../shared/seed/spark-keras-integration.md), verbatim."""

import pytest


@pytest.mark.session_independent
def test_seed_quickstart_runs_as_written(spark):
    import pandas as pd
    import tensorflow as tf
    from pyspark.sql import SparkSession

    # Initialize a Spark session
    spark = SparkSession.builder.appName("spark_keras").getOrCreate()

    # Create a PySpark DataFrame
    spark_df = spark.createDataFrame(
        pd.DataFrame({
            "feature1": tf.random.normal([100]).numpy().tolist(),
            "label1": tf.random.normal([100]).numpy().tolist(),
            "partition_id": [0 for _ in range(100)]
        })
    )

    import tensorflow as tf

    from keras_spark.models import KerasSparkModel as Model

    # Define the Keras model
    input_layer = tf.keras.Input(shape=[1], name="feature1")
    output_layer = tf.keras.layers.Dense(1, name="label1")(input_layer)
    model = Model(input_layer, output_layer)
    model.compile("adam","mean_squared_error")

    # Train the model using the PySpark DataFrame
    model.fit(spark_df, batch_size=10, epochs=100,partition_col="partition_id")

    # Use Spark for distributed scoring on the PySpark DataFrame
    predictions = model.predict(spark_df).select("model_output.label1")

    # What the quickstart promises: 100 epochs of 10 steps, one prediction per row.
    assert len(model.history.history["loss"]) == 100
    rows = predictions.collect()
    assert len(rows) == 100
    assert all(isinstance(r["label1"], float) for r in rows)

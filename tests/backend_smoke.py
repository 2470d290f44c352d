"""Quickstart-sized fit + predict under the backend named by KERAS_BACKEND (run by test_backends)."""

import os
import sys

# A classic session, even when the test run started this process during its Connect tests.
for _name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):
    os.environ.pop(_name, None)

os.environ["PYSPARK_PYTHON"] = sys.executable

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402

from keras_spark.models import KerasSparkModel  # noqa: E402

spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
rng = np.random.default_rng(0)
feature = rng.normal(size=200)
df = spark.createDataFrame(pd.DataFrame({
    "feature1": feature, "label1": 2 * feature + 1, "partition_id": np.arange(200) % 4,
}))
inp = keras.Input(shape=(1,), name="feature1")
model = KerasSparkModel(inp, keras.layers.Dense(1, name="label1")(inp))
model.compile(keras.optimizers.Adam(0.1), "mse")
history = model.fit(df, batch_size=10, epochs=20, verbose=0)
rows = model.predict(df).select("feature1", "model_output.label1").toPandas()
expected = model.predict(rows[["feature1"]].to_numpy(), verbose=0).reshape(-1)
assert np.allclose(rows["label1"].to_numpy(), expected, rtol=1e-5, atol=1e-5)
print(f"backend={keras.backend.backend()} loss={history.history['loss'][-1]:.4f} rows={len(rows)}")
assert history.history["loss"][-1] < 0.1 * history.history["loss"][0]
spark.stop()

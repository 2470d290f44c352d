"""fit(num_workers=2) under JAX with the custom objects of test_custom_objects and a weight column.

Run by test_custom_objects in its own process; prints `RESULT {...}`. The custom
layer, loss and metric live in test_custom_objects, a module the executors cannot
import (their PYTHONPATH has no tests/ folder), so they must travel by value.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ["PYSPARK_PYTHON"] = sys.executable
# A classic session, even when the test run started this process during its Connect tests.
for _name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):
    os.environ.pop(_name, None)
sys.path.insert(0, os.path.dirname(__file__))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

spark = (SparkSession.builder.master("local-cluster[2,1,1024]").config("spark.ui.enabled", "false")
         .config("spark.sql.shuffle.partitions", "4").getOrCreate())
spark.sparkContext.setLogLevel("OFF")

from builders import numeric_frame, to_numpy  # noqa: E402
from test_custom_objects import custom_model  # noqa: E402

df = numeric_frame(spark, 800, 4).withColumn("w", (F.col("id") % 2 + 1).cast("double"))
keras.utils.set_random_seed(5)
model = custom_model()
history = model.fit(df, batch_size=64, epochs=3, verbose=0, num_workers=2, sample_weight="w")
(x,) = to_numpy(df, "x")
scored = model.predict(df).orderBy("id").select("model_output.y").collect()
diff = float(np.abs(np.array([r[0] for r in scored]) - model.predict(x, verbose=0).reshape(-1)).max())
# Weighted rows with workers end as on one worker: distributed_run's every_kind (both engines).
print("RESULT " + json.dumps({"history_keys": sorted(history.history), "loss": history.history["loss"],
                              "max_score_diff": diff}), flush=True)
spark.stop()

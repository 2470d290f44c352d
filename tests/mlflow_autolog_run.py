"""fit(df) under mlflow.keras.autolog() (run by test_custom_objects in its own process).

Autolog hashes every element of a tf.data.Dataset before Keras's loop starts; an
endless feed made that hang forever. Prints `RESULT {...}` once fit has returned.
"""

import json
import os
import sys

os.environ["PYSPARK_PYTHON"] = sys.executable
# A classic session, even when the test run started this process during its Connect tests.
for _name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):
    os.environ.pop(_name, None)

import mlflow  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from builders import numeric_frame, regression_model  # noqa: E402

folder = sys.argv[1]
mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")  # MLflow refuses a bare file store
mlflow.set_experiment("keras-spark-autolog")
mlflow.keras.autolog(log_models=False)
spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
spark.sparkContext.setLogLevel("ERROR")
with mlflow.start_run() as run:
    history = regression_model().fit(numeric_frame(spark, 400, 3), batch_size=32, epochs=2, verbose=0)
finished = mlflow.get_run(run.info.run_id)
losses = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
print("RESULT " + json.dumps({"epochs": history.epoch, "run_status": finished.info.status,
                              "logged_loss_steps": len(losses)}), flush=True)
spark.stop()

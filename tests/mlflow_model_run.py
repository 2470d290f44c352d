"""What MLflow records for fit(spark_df), and a logged model read back (run by test_mlflow in its own process).

argv: a scratch folder, then the scenarios, comma-separated, run one after another in this one process
(one Spark session): "autolog" (mlflow.keras.autolog, fit on the driver) or
"callback" (keras_spark.mlflow.MlflowLogger, fit with num_workers=2: JAX workers on the executors) or
"log_model" (fit on the driver, keras_spark.mlflow.log_model: no signature written by hand).
Each scenario has its own experiment; autolog is turned off again after its scenario.
Prints one `RESULT {"name": scenario, ...}` a scenario: the runs made, the params and per-epoch metrics
logged, and the largest difference between model.predict(df) and the logged model scored by mlflow.pyfunc.spark_udf.
"""

import json
import os
import sys

os.environ["PYSPARK_PYTHON"] = sys.executable
for _name in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED"):  # a classic session, whatever started us
    os.environ.pop(_name, None)

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from builders import numeric_frame, regression_model  # noqa: E402

folder, scenarios = sys.argv[1], sys.argv[2].split(",")
mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")  # MLflow refuses a bare file store
spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
spark.sparkContext.setLogLevel("ERROR")
df = numeric_frame(spark, 256, 4)


def train_and_log(scenario: str):
    """Fit as the scenario says, inside an MLflow run; the run."""
    model = regression_model()
    if scenario == "autolog":
        mlflow.keras.autolog()
        try:
            with mlflow.start_run() as run:
                model.fit(df, batch_size=32, epochs=2, verbose=0)
        finally:
            mlflow.keras.autolog(disable=True)  # Keras is patched process-wide: not for the next scenario
    elif scenario == "log_model":
        from keras_spark.mlflow import log_model

        with mlflow.start_run() as run:
            model.fit(df, batch_size=32, epochs=2, verbose=0)
            log_model(model, "model")
    else:
        from keras_spark.mlflow import MlflowLogger

        with mlflow.start_run() as run:
            model.fit(df, batch_size=32, epochs=2, verbose=0, num_workers=2, callbacks=[MlflowLogger()])
            # A signature of named tensors (autolog infers one from the first batch): pyfunc then hands
            # the model {"x": array} instead of a DataFrame of object cells.
            signature = mlflow.models.infer_signature({"x": np.zeros((1, 4), "float32")})
            mlflow.keras.log_model(model, name="model", signature=signature)
    return model, run


def what_was_logged(scenario: str) -> dict:
    experiment = mlflow.set_experiment(f"keras-spark-{scenario}")
    model, run = train_and_log(scenario)
    client = mlflow.MlflowClient()
    logged = client.get_run(run.info.run_id)
    models = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list")
    model_uri = models[0].model_uri if models else None
    result = {
        "name": scenario,
        "runs": len(client.search_runs([experiment.experiment_id])),
        "params": logged.data.params,
        "metric_steps": {k: [m.step for m in client.get_metric_history(run.info.run_id, k)]
                         for k in logged.data.metrics},
        "models": len(models),
    }
    if model_uri:
        loaded = mlflow.keras.load_model(model_uri)
        result["loaded_class"] = type(loaded).__name__
        signature = mlflow.models.get_model_info(model_uri).signature
        result["signature"] = signature.to_dict() if signature else None
        expected = np.asarray([r["y"] for r in model.predict(df).orderBy("id").select("model_output.y").collect()])
        udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type="float", env_manager="local")
        column = F.col("x") if scenario == "log_model" else F.struct("x")  # the column itself, as users type it
        served = df.withColumn("served", udf(column)).orderBy("id").select("served").collect()
        result["max_served_diff"] = float(np.max(np.abs(np.asarray([r[0] for r in served]) - expected)))
    return result


for name in scenarios:
    print("RESULT " + json.dumps(what_was_logged(name)), flush=True)
spark.stop()

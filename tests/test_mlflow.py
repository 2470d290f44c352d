"""MLflow: what autolog records for fit(spark_df), the shipped MlflowLogger for num_workers, and a logged
model served back (each scenario in its own process, tests/mlflow_model_run.py: MLflow's autolog patches Keras
process-wide)."""

import json
import os

import keras
import pytest
from builders import only_in_the_jax_pass, run_scenario_in

pytest.importorskip("mlflow", reason="MLflow is not installed (pip install '.[mlflow]')")


def test_autolog_records_one_run_per_epoch_metrics_and_a_model_that_serves_the_same(tmp_path):
    result = run_scenario_in("mlflow_model_run.py", tmp_path, "autolog", dict(os.environ))
    assert result["runs"] == 1 and result["models"] == 1
    assert result["metric_steps"]["loss"] == [0, 1]
    assert result["params"]["epochs"] == "2" and result["params"]["optimizer_name"] == "adam"
    # autolog sees the fit keras-spark hands Keras: a tf.data.Dataset (TensorFlow), whose batch size it does
    # not read, or a generator (JAX, PyTorch), whose batch size it reads off the first batch
    assert result["params"]["batch_size"] == ("None" if keras.backend.backend() == "tensorflow" else "32")
    # mlflow.keras.load_model where keras_spark is imported; without it, a functional model (test_custom_objects)
    assert result["loaded_class"] == "KerasSparkModel"
    # mlflow.pyfunc.spark_udf == model.predict(df), up to float32 rounding: the two score in batches of
    # different sizes, and a backend's kernels may sum in another order for another batch size
    assert result["max_served_diff"] < 1e-5


@only_in_the_jax_pass
def test_mlflow_logger_with_two_workers_logs_once_into_one_run(tmp_path):
    result = run_scenario_in("mlflow_model_run.py", tmp_path, "callback", dict(os.environ, KERAS_BACKEND="jax"))
    assert result["runs"] == 1 and result["models"] == 1
    assert result["metric_steps"]["loss"] == [0, 1]  # rank 0 only: each epoch once, not once per worker
    assert result["params"]["epochs"] == "2" and result["params"]["steps_per_epoch"] == "8"
    assert result["max_served_diff"] < 1e-5


@pytest.mark.backend_independent  # the signature comes from the model's inputs; serving per backend: autolog's test
def test_log_model_writes_a_signature_that_spark_udf_serves_from_the_column(tmp_path):
    result = run_scenario_in("mlflow_model_run.py", tmp_path, "log_model", dict(os.environ))
    assert result["models"] == 1 and result["loaded_class"] == "KerasSparkModel"  # keras_spark is imported there
    inputs = json.loads(result["signature"]["inputs"])
    assert inputs == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}, "name": "x"}]
    assert result["max_served_diff"] < 1e-5  # udf("x"): no "Invalid dtype: object" on the executors

"""MLflow: what autolog records for fit(spark_df), the shipped MlflowLogger for num_workers, and a logged
model served back (the pass's scenarios in one process of their own, tests/mlflow_model_run.py: MLflow's
autolog patches Keras process-wide, so it is turned off again after its scenario)."""

import json
import os

import keras
import pytest
from builders import only_in_the_jax_pass, run_scenarios

pytest.importorskip("mlflow", reason="MLflow is not installed (pip install '.[mlflow]')")


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """Every scenario this pass runs, in one process: autolog always, log_model in the pass of
    backend_independent tests, the num_workers callback in the JAX pass."""
    from conftest import PRIMARY_BACKEND

    backend = os.environ["KERAS_BACKEND"]
    # autolog first: Keras names a process's later optimizers adam_1, ..., and autolog logs that name
    scenarios = ["autolog"] + (["log_model"] if backend == PRIMARY_BACKEND else [])
    scenarios += ["callback"] if backend == "jax" else []
    folder = tmp_path_factory.mktemp("mlflow")
    return run_scenarios("mlflow_model_run.py", dict(os.environ), timeout=900,
                         args=[str(folder), ",".join(scenarios)], cwd=folder)


def test_autolog_records_one_run_per_epoch_metrics_and_a_model_that_serves_the_same(logged):
    result = logged["autolog"]
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
def test_mlflow_logger_with_two_workers_logs_once_into_one_run(logged):
    result = logged["callback"]
    assert result["runs"] == 1 and result["models"] == 1
    assert result["metric_steps"]["loss"] == [0, 1]  # rank 0 only: each epoch once, not once per worker
    assert result["params"]["epochs"] == "2" and result["params"]["steps_per_epoch"] == "8"
    assert result["max_served_diff"] < 1e-5


@pytest.mark.backend_independent  # the signature comes from the model's inputs; serving per backend: autolog's test
def test_log_model_writes_a_signature_that_spark_udf_serves_from_the_column(logged):
    result = logged["log_model"]
    assert result["models"] == 1 and result["loaded_class"] == "KerasSparkModel"  # keras_spark is imported there
    inputs = json.loads(result["signature"]["inputs"])
    assert inputs == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}, "name": "x"}]
    assert result["max_served_diff"] < 1e-5  # udf("x"): no "Invalid dtype: object" on the executors

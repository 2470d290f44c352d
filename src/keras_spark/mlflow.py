"""MLflow: logging fits that mlflow.keras.autolog() cannot see (`num_workers > 1`), and logging a model
that `mlflow.pyfunc.spark_udf` can serve.

    import mlflow
    from keras_spark.mlflow import MlflowLogger, log_model

    with mlflow.start_run():
        model.fit(df, epochs=5, batch_size=64, num_workers=2, callbacks=[MlflowLogger(batch_size=64)])
        log_model(model, name="model")   # the trained weights came back to the driver

`log_model` is `mlflow.keras.log_model` with a signature of named tensors written from the model's
inputs and outputs: without one, `spark_udf` hands Keras an array column as an object array
("Invalid dtype: object"); with it, Keras gets {"x": float32 array}.

With `num_workers > 1` Keras's loop runs in training processes on the executors, where
autolog's patch of `keras.Model.fit` does not reach. This callback travels with the fit
(as every callback does), and only rank 0 logs: params at the start, every epoch's metrics
with the epoch as step, into the run that was active on the driver, so there is one run
however many workers train. On the driver (`num_workers=1`) it logs the same way.
"""

from __future__ import annotations

import time

import keras
import numpy as np


def _is_rank_zero() -> bool:
    from keras_spark import worker_rank

    return worker_rank() == 0  # 0 on the driver too


class MlflowLogger(keras.callbacks.Callback):
    """Logs params and per-epoch metrics to one MLflow run, from rank 0 only.

    `run_id` defaults to the run active when the callback is made (on the driver); `params`
    are logged beside what Keras knows (epochs, steps per epoch, optimizer and learning rate),
    e.g. the batch size and partition column the DataFrame fit used.
    """

    def __init__(self, run_id: str | None = None, tracking_uri: str | None = None, **params) -> None:
        super().__init__()
        import mlflow

        active = mlflow.active_run()
        if run_id is None and active is None:
            raise ValueError("MlflowLogger needs a run: make it inside `with mlflow.start_run():` or pass run_id=")
        self.run_id = run_id or active.info.run_id
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()  # the workers have no fluent state
        self.extra_params = {k: str(v) for k, v in params.items()}

    def _client(self):
        import mlflow

        return mlflow.MlflowClient(self.tracking_uri)

    def on_train_begin(self, logs=None):
        if not _is_rank_zero():
            return
        from mlflow.entities import Param

        optimizer = self.model.optimizer
        params = {"epochs": self.params.get("epochs"), "steps_per_epoch": self.params.get("steps"),
                  "optimizer_name": type(optimizer).__name__,
                  "optimizer_learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
                  **self.extra_params}
        self._client().log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def on_epoch_end(self, epoch, logs=None):
        if not _is_rank_zero() or not logs:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, epoch) for k, v in logs.items() if _is_number(v)]
        self._client().log_batch(self.run_id, metrics=metrics)


def _is_number(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _tensor_specs(names, tensors):
    from mlflow.types.schema import Schema, TensorSpec

    def dtype(t):  # a string input has no NumPy dtype but object
        return np.dtype("O") if str(t.dtype) == "string" else np.dtype(str(t.dtype))

    return Schema([TensorSpec(dtype(t), (-1, *(-1 if d is None else d for d in t.shape[1:])), name)
                   for name, t in zip(names, tensors, strict=True)])


def signature_of(model: keras.Model):
    """The model's inputs and outputs as an `mlflow.models.ModelSignature` of named tensors (each input by
    its name, dtype and per-row shape; batch dimension -1), as `mlflow.pyfunc.spark_udf` needs them."""
    from mlflow.models import ModelSignature

    return ModelSignature(inputs=_tensor_specs([t.name for t in model.inputs], model.inputs),
                          outputs=_tensor_specs(model.output_names, model.outputs))


def log_model(model: keras.Model, name: str, **kwargs):
    """`mlflow.keras.log_model(model, name=name, **kwargs)` with `signature=signature_of(model)` unless one
    is given; returns its `mlflow.models.model.ModelInfo`.

        info = keras_spark.mlflow.log_model(model, "model")
        udf = mlflow.pyfunc.spark_udf(spark, info.model_uri, result_type="float")
        scored = df.withColumn("served", udf("x"))
    """
    import mlflow

    kwargs.setdefault("signature", signature_of(model))
    return mlflow.keras.log_model(model, name=name, **kwargs)

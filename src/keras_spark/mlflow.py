"""MLflow logging for fits that mlflow.keras.autolog() cannot see: `num_workers > 1`.

    import mlflow
    from keras_spark.mlflow import MlflowLogger

    with mlflow.start_run():
        model.fit(df, epochs=5, batch_size=64, num_workers=2, callbacks=[MlflowLogger(batch_size=64)])
        mlflow.keras.log_model(model, name="model")   # the trained weights came back to the driver

With `num_workers > 1` Keras's loop runs in training processes on the executors, where
autolog's patch of `keras.Model.fit` does not reach. This callback travels with the fit
(as every callback does), and only rank 0 logs: params at the start, every epoch's metrics
with the epoch as step, into the run that was active on the driver, so there is one run
however many workers train. On the driver (`num_workers=1`) it logs the same way.
"""

from __future__ import annotations

import time

import keras


def _is_rank_zero() -> bool:
    if keras.backend.backend() != "jax":
        return True  # TensorFlow and PyTorch train on the driver only
    import jax

    return jax.process_index() == 0


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

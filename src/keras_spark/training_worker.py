"""One data-parallel training process: `python -m keras_spark.training_worker JOB_FILE`.

Started by a Spark barrier task (see spark/distributed.py) with its rows already in a
local cache. It joins JAX's distributed runtime through `keras.distribution`, trains
with `DataParallel` (every step's gradients are all-reduced, so all ranks hold the same
weights), and writes a result file: rank 0's weights, optimizer state and History.
A separate process, not the Spark Python worker itself, because JAX's distributed
runtime can be initialized once per process and Spark reuses its Python workers.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
import traceback

from keras_spark.worker_job import WorkerJob


def _exit_with_parent() -> None:
    # If Spark kills the task (a failed barrier stage), its Python worker dies; this
    # process must not live on, blocked in an all-reduce for a peer that is gone.
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def _host_value(variable):
    import numpy as np

    value = getattr(variable, "value", variable)
    shards = getattr(value, "addressable_shards", None)
    return np.asarray(shards[0].data if shards else value)  # replicated: any local copy is the whole


def _weighted_metrics_config(config: dict) -> dict:
    """Metrics must skip the pad rows of the last steps; weighted metrics do (pads weigh 0)."""
    if config.get("metrics") is not None and config.get("weighted_metrics") is None:
        config = dict(config, weighted_metrics=config["metrics"], metrics=None)
    return config


def _metrics_on_real_rows(model) -> None:
    """Metrics see weight 1 for real rows and 0 for pads; only the loss needs the scaled weights."""
    from keras import ops

    compute_metrics = model.compute_metrics

    def on_real_rows(x, y, y_pred, sample_weight=None):
        if sample_weight is not None:
            sample_weight = ops.cast(ops.greater(sample_weight, 0), sample_weight.dtype)
        return compute_metrics(x, y, y_pred, sample_weight)

    model.compute_metrics = on_real_rows


def _callbacks_for(rank: int, callbacks: list, scratch: str) -> list:
    """Every rank runs every callback; only rank 0's write where the user asked.

    All ranks must run the same callbacks: saving weights or reading metrics is a
    collective in multi-process JAX, so a callback on rank 0 alone would leave the
    other ranks waiting in a different collective. The other ranks' built-in file
    writers are pointed at a scratch directory, except BackupAndRestore, which each
    rank needs to find again after a restart: it goes beside the user's directory.
    """
    import keras

    if rank == 0:
        return list(callbacks)
    kept = []
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            callback = keras.callbacks.BackupAndRestore(
                f"{callback.backup_dir.rstrip(os.sep)}.worker{rank}", save_freq=callback.save_freq,
                double_checkpoint=callback.double_checkpoint, delete_checkpoint=callback.delete_checkpoint)
        elif isinstance(callback, keras.callbacks.ModelCheckpoint):
            callback.filepath = os.path.join(scratch, "checkpoints", os.path.basename(str(callback.filepath)))
        elif isinstance(callback, keras.callbacks.CSVLogger):
            callback.filename = os.path.join(scratch, "log.csv")
        elif isinstance(callback, keras.callbacks.TensorBoard):
            callback.log_dir = os.path.join(scratch, "tensorboard")
        kept.append(callback)
    return kept


def _stop_together():
    """Every rank stops when any rank's callbacks asked to (else the others would hang)."""
    import keras
    import numpy as np
    from jax.experimental import multihost_utils

    class StopTogether(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            flags = multihost_utils.process_allgather(np.array([int(bool(self.model.stop_training))]))
            self.model.stop_training = bool(np.asarray(flags).any())

    return StopTogether()


class StepTimer:
    """Wall time of each training step (the all-reduce included), for the closing figures."""

    def __init__(self):
        import keras

        timer = self

        class _Callback(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                timer._started = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                timer.seconds.append(time.perf_counter() - timer._started)

        self.seconds: list[float] = []
        self.callback = _Callback()


def train(job: WorkerJob) -> dict:
    from keras_spark.devices import training_record
    from keras_spark.spark.score import limit_threads

    os.environ["KERAS_BACKEND"] = "jax"
    if not job.gpu_addresses:
        # The workers of one executor share its cores: each takes the task's share (spark.task.cpus).
        limit_threads(job.threads)
    placement = training_record(job.gpu_addresses, job.rank)  # CUDA_VISIBLE_DEVICES came with the environment
    from keras_spark.quiet import import_backend

    import_backend()
    import keras

    from keras_spark.feed import BatchFeed, LockstepFeed, lockstep_weights
    from keras_spark.model_package import open_model
    from keras_spark.progress import RowsTrained

    rank, num_workers = job.rank, job.num_workers
    keras.distribution.initialize(job.coordinator, num_workers, rank)
    devices = keras.distribution.list_devices()
    # Each worker feeds its own rows: Keras must not shard them again.
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))

    model = open_model(job.package)
    compile_config = keras.saving.deserialize_keras_object(model.get_compile_config())
    model.compile(**dict(_weighted_metrics_config(compile_config), optimizer=model.optimizer))
    _metrics_on_real_rows(model)

    cached = job.cached
    feed = BatchFeed(model, cached, batch_size=job.local_batch, shuffle=job.shuffle,
                     seed=job.seed + rank, num_parallel_calls=job.num_parallel_calls,
                     first_epoch=job.initial_epoch, class_weight=job.class_weight)
    lockstep = LockstepFeed(feed, rank=rank, worker_rows=job.worker_rows)
    validation = {}
    if job.validation is not None:
        val_feed = BatchFeed(model, job.validation, batch_size=job.validation_local_batch, shuffle=False,
                             seed=0, num_parallel_calls=job.num_parallel_calls)
        val_lockstep = LockstepFeed(val_feed, rank=rank, worker_rows=job.validation_rows)
        validation = {"validation_data": iter(val_lockstep), "validation_steps": val_lockstep.steps_per_epoch}
    timer = StepTimer()
    # Real rows of all workers in each lockstep step (pads excluded), from the shared plan.
    trained = RowsTrained(lambda k: lockstep_weights(job.worker_rows, job.local_batch, k)[0],
                          lockstep.steps_per_epoch)
    callbacks = _callbacks_for(rank, pickle.loads(job.callbacks), job.scratch) + [
        timer.callback, _stop_together(), trained]
    started = time.perf_counter()
    try:
        history = model.fit(
            iter(lockstep), steps_per_epoch=lockstep.steps_per_epoch, epochs=job.epochs,
            initial_epoch=job.initial_epoch, callbacks=callbacks, shuffle=False,
            verbose=job.verbose if rank == 0 else 0, **validation, **job.fit_kwargs,
        )
    finally:
        feed.close()
        if validation:
            val_feed.close()
    result = {
        "rank": rank,
        "rows_served": lockstep.real_rows_served,
        "rows_trained": trained.rows,
        "rows": lockstep.rows,
        "train_s": time.perf_counter() - started,
        "step_s": timer.seconds,
        "steps_per_epoch": lockstep.steps_per_epoch,
        "devices": dict(addresses=job.gpu_addresses, visible_devices=placement.visible_devices,
                        jax_devices=[str(d) for d in devices]),
    }
    if rank == 0:
        result.update(
            weights=[_host_value(v) for v in model.weights],
            optimizer=[_host_value(v) for v in model.optimizer.variables],
            history=history.history, epoch=history.epoch, params=history.params,
        )
    return result


def main(job_path: str) -> int:
    _exit_with_parent()
    with open(job_path, "rb") as f:
        job = pickle.load(f)
    try:
        result = train(job)
    except BaseException:
        with open(job.error_path, "w") as f:
            f.write(traceback.format_exc())
        # Exit now: a normal exit would wait in JAX's shutdown barrier for peers that are
        # blocked in an all-reduce with this rank; Spark then fails the stage and stops them.
        os._exit(1)
    with open(job.result_path, "wb") as f:
        pickle.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

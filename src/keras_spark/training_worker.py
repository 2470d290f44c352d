"""One data-parallel training process: `python -m keras_spark.training_worker JOB_FILE`.

Started by a Spark barrier task (see spark/distributed.py) with its rows already in a
local cache. It joins its backend's distributed runtime through an engine
(worker_engines.py: JAX's `keras.distribution`, or a `torch.distributed` process group),
trains with Keras's own `fit` (every step's gradients are all-reduced, so all ranks hold
the same weights), and writes a result file: rank 0's weights, optimizer state and History.
A separate process, not the Spark Python worker itself, because a distributed runtime
can be initialized once per process and Spark reuses its Python workers.
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


def _weighted_metrics_config(config: dict) -> dict:
    """Metrics must skip the pad rows of the last steps; weighted metrics do (pads weigh 0)."""
    if config.get("metrics") is not None and config.get("weighted_metrics") is None:
        config = dict(config, weighted_metrics=config["metrics"], metrics=None)
    return config


def _metrics_on_real_rows(model) -> None:
    """Metrics see weight 1 for real rows and 0 for pads; only the loss needs the scaled weights.

    Pads weigh -0.0 (LockstepFeed), so a real row whose own weight is 0 still counts, as on the driver.
    """
    from keras import ops

    compute_metrics = model.compute_metrics

    def on_real_rows(x, y, y_pred, sample_weight=None):
        if sample_weight is not None:
            sample_weight = ops.cast(ops.logical_not(ops.signbit(sample_weight)), sample_weight.dtype)
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


def _stop_together(engine):
    """Every rank stops when any rank's callbacks asked to (else the others would hang)."""
    import keras

    class StopTogether(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = engine.any_rank(bool(self.model.stop_training))

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


def _lockstep(engine, feed, rank: int, fallback=None):
    """The feed in lockstep with its peers: every rank's step plan (buckets included) comes by the engine."""
    from keras_spark.feed import LockstepFeed

    plan = [feed.rows_at_step(k) for k in range(feed.steps_per_epoch)] if feed.rows else []
    return LockstepFeed(feed, rank=rank, plans=engine.gather(plan), fallback=fallback)


def train(job: WorkerJob, engine) -> dict:
    from keras_spark.devices import training_record
    from keras_spark.spark.score import limit_threads

    os.environ["KERAS_BACKEND"] = engine.backend
    os.environ["KERAS_SPARK_RANK"] = str(job.rank)  # keras_spark.worker_rank() in the user's callbacks
    if not job.gpu_addresses:
        # The workers of one executor share its cores: each takes the task's share (spark.task.cpus).
        limit_threads(job.threads)
    # CUDA_VISIBLE_DEVICES came with the environment
    placement = training_record(engine.backend, job.gpu_addresses, job.rank)
    from keras_spark.quiet import import_backend

    import_backend()
    import keras

    from keras_spark.feed import BatchFeed
    from keras_spark.model_package import open_model
    from keras_spark.progress import RowsTrained

    rank = job.rank
    devices = engine.start(job)

    model = open_model(job.package)
    compile_config = keras.saving.deserialize_keras_object(model.get_compile_config())
    model.compile(**dict(_weighted_metrics_config(compile_config), optimizer=model.optimizer))
    _metrics_on_real_rows(model)

    # Ranks that must feed one shape pad every sequence batch to the longest row of all ranks.
    fixed_steps = job.sequence_steps if engine.same_shapes else None
    feed = BatchFeed(model, job.cached, batch_size=job.local_batch, shuffle=job.shuffle,
                     seed=job.seed + rank, num_parallel_calls=job.num_parallel_calls,
                     first_epoch=job.initial_epoch, class_weight=job.class_weight, fixed_steps=fixed_steps,
                     sparse_row_entries=job.sparse_row_entries)
    lockstep = _lockstep(engine, feed, rank)
    validation = {}
    if job.validation is not None:
        val_feed = BatchFeed(model, job.validation, batch_size=job.validation_local_batch, shuffle=False,
                             seed=0, num_parallel_calls=job.num_parallel_calls, fixed_steps=fixed_steps,
                             sparse_row_entries=job.sparse_row_entries)
        val_lockstep = _lockstep(engine, val_feed, rank, fallback=lockstep)
        validation = {"validation_data": iter(val_lockstep), "validation_steps": val_lockstep.steps_per_epoch}
    timer = StepTimer()
    # Real rows of all workers in each lockstep step (pads excluded), from the shared plans.
    trained = RowsTrained(lockstep.real_rows_at, lockstep.steps_per_epoch)
    engine_callbacks = engine.prepare(model, lockstep.steps_per_epoch, validation.get("validation_steps"))
    callbacks = _callbacks_for(rank, pickle.loads(job.callbacks), job.scratch) + [
        *engine_callbacks, timer.callback, _stop_together(engine), trained]
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
                        backend_devices=devices),
    }
    if rank == 0:
        result.update(
            weights=[engine.host_value(v) for v in model.weights],
            optimizer=[engine.host_value(v) for v in model.optimizer.variables],
            history=history.history, epoch=history.epoch, params=history.params,
        )
    return result


def main(job_path: str) -> int:
    _exit_with_parent()
    with open(job_path, "rb") as f:
        job = pickle.load(f)
    from keras_spark.worker_engines import PEER_LOST_EXIT, engine_for

    engine = engine_for(job.backend)
    try:
        result = train(job, engine)
    except BaseException as error:
        with open(job.error_path, "w") as f:
            f.write(traceback.format_exc())
        # Exit now: a normal exit would wait in the runtime's shutdown barrier for peers that
        # are blocked in an all-reduce with this rank; Spark then fails the stage and stops them.
        os._exit(PEER_LOST_EXIT if engine.peer_lost(error) else 1)
    with open(job.result_path, "wb") as f:
        pickle.dump(result, f)
    engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

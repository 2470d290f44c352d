"""How the training processes of one barrier stage train as one: one engine per Keras backend.

Each engine joins the backend's own distributed runtime and makes Keras's ordinary
`fit` data-parallel; keras-spark writes no collective of its own:
- JAX: `keras.distribution.DataParallel` over JAX's distributed runtime. Each step's
  batch is one global array, so gradients, metrics and batch statistics are global.
- PyTorch: one `torch.distributed` process group (gloo on CPU, NCCL on GPU) from rank
  0's address, as torch's own launchers and Spark's TorchDistributor make it. Keras's
  torch trainer computes local gradients; torch's all-reduce averages them before the
  optimizer applies them, as `DistributedDataParallel` does, so every rank applies the
  same update. Where the installed Keras wraps the model in `DistributedDataParallel`
  itself (Keras 3.16's torch data parallelism), the engine leaves gradients to it.
  Metric states (sums and counts in every built-in Keras metric) are summed across
  ranks when an epoch's or a validation pass's figures are read, so History holds the
  figures of all rows, as under JAX.
"""

from __future__ import annotations

import datetime
import inspect

# A rank's training ended because a peer's did: the peer's own error must reach the user first.
PEER_LOST_EXIT = 4
_PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)  # a peer still importing the backend is not lost


class JaxEngine:
    """Data parallelism through `keras.distribution` on JAX's distributed runtime."""

    backend = "jax"
    # A step's local batches form one global array: every rank feeds the same shapes.
    same_shapes = True

    def start(self, job) -> list[str]:
        import keras

        keras.distribution.initialize(job.coordinator, job.num_workers, job.rank)
        devices = keras.distribution.list_devices()
        # Each worker feeds its own rows: Keras must not shard them again.
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
        return [str(d) for d in devices]

    def prepare(self, model, steps_per_epoch: int, validation_steps: int | None) -> list:
        return []  # the global arrays make gradients and metrics global already

    def any_rank(self, flag: bool) -> bool:
        import numpy as np
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array([int(flag)]))
        return bool(np.asarray(flags).any())

    def gather(self, values: list[int]) -> list[list[int]]:
        """Every rank's list of ints, by rank."""
        import numpy as np
        from jax.experimental import multihost_utils

        counts = np.asarray(multihost_utils.process_allgather(np.array([len(values)], np.int64))).reshape(-1)
        padded = np.full(int(counts.max()), -1, np.int64)
        padded[:len(values)] = values
        rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(counts), -1)
        return [[int(v) for v in row[:n]] for row, n in zip(rows, counts, strict=True)]

    @staticmethod
    def host_value(variable):
        import numpy as np

        value = getattr(variable, "value", variable)
        shards = getattr(value, "addressable_shards", None)
        return np.asarray(shards[0].data if shards else value)  # replicated: any local copy is the whole

    @staticmethod
    def peer_lost(error: BaseException) -> bool:
        return False  # JAX aborts a rank whose peer died (a signal, seen by the task)

    def stop(self) -> None:
        pass


class TorchEngine:
    """Data parallelism through a `torch.distributed` process group and torch's all-reduce."""

    backend = "torch"
    same_shapes = False  # gradients have the weights' shapes whatever each rank's batch

    def start(self, job) -> list[str]:
        import torch
        import torch.distributed as dist

        on_gpu = torch.cuda.is_available()
        if on_gpu:
            torch.cuda.set_device(0)  # the process sees only its task's GPU (CUDA_VISIBLE_DEVICES)
        dist.init_process_group("nccl" if on_gpu else "gloo", init_method=f"tcp://{job.coordinator}",
                                rank=job.rank, world_size=job.num_workers, timeout=_PROCESS_GROUP_TIMEOUT)
        self._world = job.num_workers
        return [f"cuda:{torch.cuda.current_device()}" if on_gpu else "cpu"]

    def prepare(self, model, steps_per_epoch: int, validation_steps: int | None) -> list:
        """Averages each step's gradients across ranks; returns the callbacks that sum metrics at pass ends."""
        if not keras_wraps_ddp():
            _average_gradients(model.optimizer, self._world)
        return [_sum_metrics_at_pass_ends(model, steps_per_epoch, validation_steps)]

    def any_rank(self, flag: bool) -> bool:
        import torch
        import torch.distributed as dist

        value = torch.tensor([int(flag)], device=_collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, values: list[int]) -> list[list[int]]:
        """Every rank's list of ints, by rank."""
        import torch.distributed as dist

        gathered: list = [None] * self._world
        dist.all_gather_object(gathered, [int(v) for v in values])
        return gathered

    @staticmethod
    def host_value(variable):
        from keras import ops

        return ops.convert_to_numpy(getattr(variable, "value", variable))

    @staticmethod
    def peer_lost(error: BaseException) -> bool:
        import torch.distributed as dist

        text = str(error)
        return isinstance(error, dist.DistError) or any(
            mark in text for mark in ("Connection closed by peer", "Connection reset by peer", "Gloo", "NCCL"))

    def stop(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


ENGINES = {"jax": JaxEngine, "torch": TorchEngine}


def engine_for(backend: str):
    return ENGINES[backend]()


def keras_wraps_ddp() -> bool:
    """Whether this Keras's torch trainer wraps the model in DistributedDataParallel itself."""
    from keras.src.backend.torch import trainer

    return "DistributedDataParallel" in inspect.getsource(trainer)


def _collective_device():
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _average_gradients(optimizer, world: int) -> None:
    """Every `optimizer.apply` first averages its gradients across ranks: one all-reduce per dtype."""
    import torch
    import torch.distributed as dist

    apply = optimizer.apply

    def averaged_apply(grads, trainable_variables=None):
        by_dtype: dict = {}
        for grad in grads:
            if grad is not None:
                by_dtype.setdefault(grad.dtype, []).append(grad)
        for same in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in same])
            dist.all_reduce(flat)
            flat /= world
            for grad, part in zip(same, torch.split(flat, [g.numel() for g in same]), strict=True):
                grad.copy_(part.view_as(grad))
        return apply(grads, trainable_variables)

    optimizer.apply = averaged_apply


def _sum_metrics_at_pass_ends(model, steps_per_epoch: int, validation_steps: int | None):
    """A callback that makes the figures read at the end of an epoch (or validation pass) those of all ranks.

    Keras reads an epoch's figures with `get_metrics_result()` right after the last step;
    that one read sees every rank's metric states summed. The states themselves stay local.
    """
    import keras
    import torch
    import torch.distributed as dist

    local_result = model.get_metrics_result
    pending = {"sum": False}

    def get_metrics_result():
        if not pending["sum"]:
            return local_result()
        pending["sum"] = False
        variables = [v for metric in model.metrics for v in metric.variables]
        if not variables:
            return local_result()
        own = [torch.clone(v.value) for v in variables]
        flat = torch.cat([o.reshape(-1).to(torch.float64) for o in own]).to(_collective_device())
        dist.all_reduce(flat)
        for variable, part in zip(variables, torch.split(flat.cpu(), [o.numel() for o in own]), strict=True):
            variable.assign(part.view_as(variable.value).to(variable.value.dtype))
        try:
            return local_result()
        finally:
            for variable, value in zip(variables, own, strict=True):
                variable.assign(value)

    model.get_metrics_result = get_metrics_result

    class SumAtPassEnd(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            pending["sum"] = batch + 1 == steps_per_epoch

        def on_test_batch_end(self, batch, logs=None):
            pending["sum"] = validation_steps is not None and batch + 1 == validation_steps

    return SumAtPassEnd()


"""Batches staged on the accelerator a few steps ahead, so the host-to-device copy overlaps compute.

`stage_on_device(keras_x, wait)` takes what `feed.keras_input` built for the active backend and,
only when that backend runs on an accelerator, returns the same stream with each batch copied
to the device `PREFETCH_BATCHES` steps before Keras asks for it:

- JAX: `jax.device_put` of the next batches (asynchronous: the copy runs while the step computes);
- PyTorch (CUDA): each array copied into pinned host memory, then `.to(device, non_blocking=True)`
  on a side stream; the step's stream waits on the copy's event, never the host;
- TensorFlow: `tf.data.experimental.copy_to_device` + `prefetch` on the GPU, the last
  transformations of the dataset (what `prefetch_to_device` does).

On CPU it returns `keras_x` itself: not one extra call per batch.

`wait.seconds` is how long the training loop waited for a batch to be on the device (JAX,
PyTorch: from asking for the batch to its copy being complete). Where keras-spark cannot see
that wait (CPU, and TensorFlow, whose copies run inside tf.data), `BatchFeed.stats` reports the
host wait instead: the time the consumer waited for the C++ core.
"""

from __future__ import annotations

import collections
import threading
import time

import keras
import numpy as np

PREFETCH_BATCHES = 2  # batches on the device ahead of the step: one in copy, one ready


class DeviceWait:
    """Seconds the step waited for data on the device; `on_device` once a stream was staged."""

    def __init__(self):
        self.seconds = 0.0
        self.on_device = False
        self.device: str | None = None
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self.seconds += seconds


def accelerator(backend: str | None = None) -> str | None:
    """The active backend's accelerator ("gpu:0", "cuda:0", ...), or None when it computes on CPU."""
    backend = backend or keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return None if device.platform == "cpu" else f"{device.platform}:{device.id}"
    if backend == "torch":
        import torch

        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else None
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return gpus[0].name if gpus else None
    return None


def stage_on_device(keras_x, wait: DeviceWait, depth: int = PREFETCH_BATCHES):
    """`keras_x` with its batches copied to the accelerator `depth` steps ahead; itself on CPU."""
    backend = keras.backend.backend()
    device = accelerator(backend)
    if device is None or keras.distribution.distribution() is not None:
        return keras_x  # CPU; or a keras.distribution that lays batches out over several devices itself
    wait.on_device, wait.device = True, device
    if backend == "tensorflow":
        return _tf_on_device(keras_x, device, depth)
    if backend == "jax":
        return _jax_ahead(keras_x, depth, wait)
    return _torch_ahead(keras_x, device, depth, wait)


def _ahead(batches, stage, ready, depth: int, wait: DeviceWait):
    """Keeps `depth` staged batches in flight; yields each once `ready` says its copy is done."""
    source = iter(batches)
    in_flight: collections.deque = collections.deque()
    while True:
        asked = time.perf_counter()
        while len(in_flight) < depth:
            try:
                in_flight.append(stage(next(source)))
            except StopIteration:
                break
        if not in_flight:
            return
        batch = ready(in_flight.popleft())
        wait.add(time.perf_counter() - asked)
        yield batch


def _jax_ahead(batches, depth: int, wait: DeviceWait):
    import jax

    def ready(batch):
        return jax.block_until_ready(batch)  # only the copy: the batch was put `depth` steps ago

    return _ahead(batches, jax.device_put, ready, depth, wait)


def _torch_ahead(batches, device: str, depth: int, wait: DeviceWait):
    import torch

    target = torch.device(device)
    copies = torch.cuda.Stream(device=target)

    def to_pinned(array):
        array = np.asarray(array)
        pinned = torch.empty(array.shape, dtype=torch.from_numpy(np.empty(0, array.dtype)).dtype, pin_memory=True)
        pinned.numpy()[...] = array  # one host copy, into page-locked memory the GPU can read directly
        return pinned

    def stage(batch):
        pinned = keras.tree.map_structure(to_pinned, batch)
        with torch.cuda.stream(copies):
            on_device = keras.tree.map_structure(lambda t: t.to(target, non_blocking=True), pinned)
            copied = torch.cuda.Event()
            copied.record(copies)
        return on_device, copied, pinned  # the pinned buffers live until their copy is done

    def ready(staged):
        on_device, copied, _ = staged
        copied.synchronize()
        step_stream = torch.cuda.current_stream(target)
        # Made on the copy stream, used on the step's: the allocator must not reuse them early.
        keras.tree.map_structure(lambda t: t.record_stream(step_stream), on_device)
        return on_device

    return _ahead(batches, stage, ready, depth, wait)


def _tf_on_device(dataset, device: str, depth: int):
    import tensorflow as tf

    cardinality = dataset.cardinality()
    staged = dataset.apply(tf.data.experimental.copy_to_device(device)).prefetch(depth)
    if int(cardinality) >= 0:  # a finite epoch keeps its known length for Keras
        staged = staged.apply(tf.data.experimental.assert_cardinality(int(cardinality)))
    return staged

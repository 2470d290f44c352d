"""A model as .keras bytes and back: how models travel to Spark executors and training workers."""

from __future__ import annotations

import os
import tempfile


def model_to_bytes(model) -> bytes:
    """The model as .keras bytes: architecture, weights, compile config and optimizer state."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as f:
            return f.read()


def model_from_bytes(model_bytes: bytes, **load_kwargs):
    """Inverse of `model_to_bytes` (imports Keras: set KERAS_BACKEND first)."""
    import keras

    import keras_spark.models  # noqa: F401  registers KerasSparkModel for load_model

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as f:
            f.write(model_bytes)
        return keras.models.load_model(path, **load_kwargs)

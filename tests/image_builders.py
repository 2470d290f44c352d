"""Test images: encoded with Pillow (the test extra), decoded by the core and by Pillow for reference."""

import io

import numpy as np
import pyarrow as pa
import pytest

from keras_spark import _core

Image = pytest.importorskip("PIL.Image", reason="Pillow (the test extra) encodes the test images")


def encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    """(h, w, c) uint8 pixels as PNG or JPEG bytes."""
    out = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(out, format=fmt, **options)
    return out.getvalue()


def pillow_decode(data: bytes, mode: str = "RGB") -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert(mode))


def core_decode(blobs, shape, dtype="uint8", fit="exact") -> np.ndarray:
    """The core's decode of a binary column of `blobs` into per-row `shape`."""
    array = pa.array(blobs, pa.binary())
    dense, _ = _core.to_dense(*array.__arrow_c_array__(), "img", f"{dtype};image={fit}", list(shape))
    return dense


def pattern_image(label: int, rng, size=(16, 16)) -> np.ndarray:
    """Class 0 bright on the left, class 1 bright on the right, with noise."""
    h, w = size
    pixels = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    half = slice(0, w // 2) if label == 0 else slice(w // 2, w)
    pixels[:, half] += 150
    return pixels

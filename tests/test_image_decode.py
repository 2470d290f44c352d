"""The core's image decoder: pixels against Pillow, channels, Spark's image struct, bad files.

Core only (no Spark, no backend): .ci/sanitize runs this file under ASan + UBSan, with
KERAS_SPARK_FUZZ_EXAMPLES corrupted files per format.
"""

import os

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from image_builders import core_decode, encode, pattern_image, pillow_decode

from keras_spark import _core

# the C++ core alone: no Keras backend is involved
pytestmark = pytest.mark.backend_independent

FUZZ = settings(max_examples=int(os.environ.get("KERAS_SPARK_FUZZ_EXAMPLES", "150")), deadline=None,
                derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("channels,mode", [(1, "L"), (3, "RGB"), (4, "RGBA")])
def test_png_decodes_pixel_equal_to_pillow(channels, mode):
    rng = np.random.default_rng(channels)
    images = [rng.integers(0, 256, (12, 20, channels), dtype=np.uint8) for _ in range(5)]
    got = core_decode([encode(p, "PNG") for p in images], (12, 20, channels))
    np.testing.assert_array_equal(got, np.stack(images))


def test_jpeg_decodes_close_to_pillow():
    rng = np.random.default_rng(0)
    blobs = [encode(pattern_image(i % 2, rng, (48, 64)), "JPEG", quality=90) for i in range(6)]
    got = core_decode(blobs, (48, 64, 3), dtype="float32")
    reference = np.stack([pillow_decode(b) for b in blobs]).astype(np.float32)
    assert np.abs(got - reference).mean() < 1.0  # decoders differ by IDCT and upsampling rounding
    assert np.abs(got - reference).max() <= 16


def test_png_channels_convert_to_the_inputs():
    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    got = core_decode([encode(rgb, "PNG")], (8, 8, 4))
    np.testing.assert_array_equal(got[0, ..., :3], rgb)
    assert (got[0, ..., 3] == 255).all()


def test_corrupt_image_names_the_column_and_the_row():
    good = encode(np.zeros((8, 8, 3), np.uint8), "PNG")
    with pytest.raises(_core.ColumnError, match=r"column 'img' has an image at row 2 that cannot be decoded"):
        core_decode([good, good, good[:40], good], (8, 8, 3))


def test_first_bad_row_is_reported_whatever_thread_decodes_it(monkeypatch):
    monkeypatch.setenv("KERAS_SPARK_DECODE_THREADS", "4")
    good = encode(np.zeros((8, 8, 3), np.uint8), "PNG")
    blobs = [good] * 200
    blobs[150], blobs[37] = b"not an image", b"\x89PNG broken"
    with pytest.raises(_core.ColumnError, match="at row 37 "):
        core_decode(blobs, (8, 8, 3))


def test_image_struct_bgr_becomes_rgb():
    rgb = np.random.default_rng(4).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    struct = pa.array([{"origin": "x.png", "height": 5, "width": 7, "nChannels": 3, "mode": 16,
                        "data": rgb[..., ::-1].tobytes()}],
                      pa.struct([("origin", pa.string()), ("height", pa.int32()), ("width", pa.int32()),
                                 ("nChannels", pa.int32()), ("mode", pa.int32()), ("data", pa.binary())]))
    got, _ = _core.to_dense(*struct.__arrow_c_array__(), "image", "uint8;image=exact", [5, 7, 3])
    np.testing.assert_array_equal(got[0], rgb)




def test_null_image_is_an_error_naming_the_row():
    good = encode(np.zeros((8, 8, 3), np.uint8), "PNG")
    with pytest.raises(_core.ColumnError, match="'img' has a null image at row 1"):
        core_decode([good, None], (8, 8, 3))


def test_image_struct_of_another_mode_is_refused():
    struct = pa.array([{"origin": "", "height": 2, "width": 2, "nChannels": 3, "mode": 16, "data": b"\0" * 11}],
                      pa.struct([("origin", pa.string()), ("height", pa.int32()), ("width", pa.int32()),
                                 ("nChannels", pa.int32()), ("mode", pa.int32()), ("data", pa.binary())]))
    with pytest.raises(_core.ColumnError, match="image struct at row 0 that Spark's image source would not write"):
        _core.to_dense(*struct.__arrow_c_array__(), "image", "uint8;image=exact", [2, 2, 3])


def test_a_string_column_is_not_an_image_column():
    with pytest.raises(_core.ColumnError, match="has Arrow type string; an image input takes a binary column"):
        _core.to_dense(*pa.array(["x"]).__arrow_c_array__(), "img", "uint8;image=exact", [2, 2, 3])


VALID = {fmt: encode(pattern_image(1, np.random.default_rng(9), (24, 20)), fmt) for fmt in ("PNG", "JPEG")}


@FUZZ
@given(fmt=st.sampled_from(sorted(VALID)), cut=st.integers(0, 10_000),
       flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=8),
       fit=st.sampled_from(["exact", "resize", "center_crop"]))
def test_corrupted_files_decode_or_fail_cleanly(fmt, cut, flips, fit):
    data = bytearray(VALID[fmt])
    for at, mask in flips:
        data[at % len(data)] ^= mask
    data = bytes(data[: max(1, len(data) - cut % len(data))])
    try:
        got = core_decode([VALID[fmt], data], (24, 20, 3), fit=fit)
    except _core.ColumnError as error:
        assert "column 'img'" in str(error) and "at row 1" in str(error)
    else:
        assert got.shape == (2, 24, 20, 3)


def test_jpeg_huffman_table_past_256_symbols_is_refused():
    data = bytearray(VALID["JPEG"])
    dht = data.index(b"\xff\xc4")  # marker, length (2), class/id (1), then 16 code-length counts
    data[dht + 5: dht + 21] = bytes([255] * 16)
    with pytest.raises(_core.ColumnError, match="at row 0 that cannot be decoded .*bad DHT header"):
        core_decode([bytes(data)], (24, 20, 3))


def test_decoder_messages_are_printable_whatever_the_file_holds():
    png = VALID["PNG"]
    chunk = (0).to_bytes(4, "big") + b"\x91QAT" + b"\0\0\0\0"  # an unknown critical chunk, a non-ASCII name
    with pytest.raises(_core.ColumnError, match=r"decoder: \?QAT PNG chunk not known"):
        core_decode([png[:33] + chunk + png[33:]], (24, 20, 3))

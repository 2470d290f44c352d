"""Image columns (binary JPEG/PNG, Spark's image struct) feed image inputs, decoded by the core."""

import io
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from keras_spark import _core
from keras_spark.errors import BindingError, DataError
from keras_spark.models import KerasSparkModel

Image = pytest.importorskip("PIL.Image", reason="Pillow (the test extra) encodes the test images")

SIZE = 16


def encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(out, format=fmt, **options)
    return out.getvalue()


def pillow_decode(data: bytes, mode: str = "RGB") -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert(mode))


def core_decode(blobs, shape, dtype="uint8", fit="exact") -> np.ndarray:
    array = pa.array(blobs, pa.binary())
    dense, _ = _core.to_dense(*array.__arrow_c_array__(), "img", f"{dtype};image={fit}", list(shape))
    return dense


def pattern_image(label: int, rng, size=(SIZE, SIZE)) -> np.ndarray:
    """Class 0 bright on the left, class 1 bright on the right, with noise."""
    h, w = size
    pixels = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    half = slice(0, w // 2) if label == 0 else slice(w // 2, w)
    pixels[:, half] += 150
    return pixels


# -- decoding in the core ------------------------------------------------------------------
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


def test_resize_matches_tf_image_resize_bilinear():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(3)]
    got = core_decode([encode(p, "PNG") for p in images], (17, 23, 3), dtype="float32", fit="resize")
    expected = tf.image.resize(np.stack(images).astype(np.float32), (17, 23), method="bilinear").numpy()
    np.testing.assert_allclose(got, expected, atol=1e-3)


@pytest.mark.parametrize("source", [(30, 40), (10, 12)], ids=["larger", "smaller"])
def test_center_crop_matches_keras_center_crop(source):
    tf = pytest.importorskip("tensorflow")
    pixels = np.random.default_rng(3).integers(0, 256, (*source, 3), dtype=np.uint8)
    got = core_decode([encode(pixels, "PNG")], (16, 16, 3), dtype="float32", fit="center_crop")
    crop = keras.layers.CenterCrop(16, 16, dtype="float32")
    expected = keras.ops.convert_to_numpy(crop(pixels[None].astype(np.float32)))
    np.testing.assert_allclose(got, expected, atol=1e-3)
    del tf


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


# -- on Spark --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_folder():
    """40 PNG and JPEG files named label<k>_<i>, where a Connect server's executors read too (not /tmp)."""
    checkout = Path(__file__).resolve().parent.parent
    under_tmp = checkout.is_relative_to(Path(tempfile.gettempdir()).resolve())
    folder = Path(tempfile.mkdtemp(prefix="keras_spark_images_", dir=Path.home() if under_tmp else checkout))
    rng = np.random.default_rng(5)
    for i in range(40):
        label = i % 2
        fmt = "PNG" if i % 4 < 2 else "JPEG"
        (folder / f"label{label}_{i}.{fmt.lower()}").write_bytes(encode(pattern_image(label, rng), fmt))
    yield folder
    shutil.rmtree(folder)


def image_model(name="content", shape=(SIZE, SIZE, 3), dtype="uint8") -> KerasSparkModel:
    inp = keras.Input(shape=shape, dtype=dtype, name=name)
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = KerasSparkModel(inp, keras.layers.Dense(2, activation="softmax", name="label")(x))
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    return model


def binary_files(spark, folder):
    return (spark.read.format("binaryFile").load(str(folder))
            .withColumn("label", F.regexp_extract(F.col("path"), r"label(\d)_", 1).cast("int"))
            .withColumn("partition_id", (F.crc32(F.col("path")) % 3).cast("int")))


def decoded_in_numpy(df, column="content"):
    rows = df.orderBy("path").select("path", column, "label").collect()
    pixels = np.stack([pillow_decode(r[column]) for r in rows])
    return [r["path"] for r in rows], pixels, np.array([r["label"] for r in rows])


def test_binary_files_train_evaluate_and_predict(spark, image_folder):
    df = binary_files(spark, image_folder)
    model = image_model()
    history = model.fit(df, batch_size=8, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    _, pixels, labels = decoded_in_numpy(df)
    loss = model.evaluate(df, batch_size=8, verbose=0)
    expected_loss = model.evaluate(pixels, labels, batch_size=8, verbose=0)
    assert loss == pytest.approx(expected_loss, abs=0.02)  # JPEG rows decode within a few levels of Pillow
    scored = model.predict(df).orderBy("path").select("path", "model_output.label").collect()
    expected = model.predict(pixels, verbose=0)
    got = np.array([r["label"] for r in scored])
    np.testing.assert_allclose(got, expected, atol=0.02)


def test_spark_image_source_feeds_rgb_pixels(spark, image_folder):
    df = (spark.read.format("image").load(str(image_folder / "*.png"))
          .withColumn("partition_id", F.lit(0)))
    inp = keras.Input(shape=(SIZE, SIZE, 3), dtype="float32", name="image")
    model = KerasSparkModel(inp, keras.layers.Identity(name="pixels")(inp))
    rows = model.predict(df).select("image.origin", "model_output.pixels").collect()
    assert len(rows) == 20
    for row in rows:
        path = row["origin"].removeprefix("file:")
        expected = pillow_decode(Path(path).read_bytes()).astype(np.float32)
        np.testing.assert_array_equal(np.array(row["pixels"], dtype=np.float32), expected)


def in_memory_images(spark, blobs, labels):
    """One Spark partition, partition id = row number: an error's row in its batch is its row in `blobs`."""
    schema = T.StructType([T.StructField("content", T.BinaryType()), T.StructField("label", T.IntegerType()),
                           T.StructField("partition_id", T.IntegerType())])
    rows = [(b, int(y), i) for i, (b, y) in enumerate(zip(blobs, labels, strict=True))]
    return spark.createDataFrame(rows, schema).coalesce(1)


def test_corrupt_image_is_a_data_error_naming_the_column_and_row(spark):
    rng = np.random.default_rng(6)
    blobs = [encode(pattern_image(i % 2, rng), "PNG") for i in range(6)]
    blobs[4] = blobs[4][:50]
    where = r"column 'content' has an image at row 4 of a batch, in partition id 4 that cannot be decoded"
    with pytest.raises(DataError, match=where):
        image_model().fit(in_memory_images(spark, blobs, [0, 1] * 3), batch_size=2, epochs=1, verbose=0)


def test_size_mismatch_without_image_resize_is_a_data_error(spark):
    rng = np.random.default_rng(7)
    blobs = [encode(pattern_image(0, rng, (24, 20)), "PNG") for _ in range(4)]
    with pytest.raises(DataError, match=r"'content' has an image of 24x20 .* takes 16x16 .*image_resize"):
        image_model().fit(in_memory_images(spark, blobs, [0] * 4), batch_size=2, epochs=1, verbose=0)


@pytest.mark.parametrize("image_resize", ["resize", "center_crop"])
def test_image_resize_fits_other_sizes(spark, image_resize):
    rng = np.random.default_rng(8)
    blobs = [encode(pattern_image(i % 2, rng, (24 + i, 20)), "PNG") for i in range(6)]
    df = in_memory_images(spark, blobs, [0, 1] * 3)
    model = image_model()
    model.fit(df, batch_size=3, epochs=1, verbose=0, image_resize=image_resize)
    assert model.data_stats["rows"] == 6
    expected = core_decode(blobs, (SIZE, SIZE, 3), fit=image_resize)
    scored = model.predict(df, image_resize=image_resize).select("model_output.label").collect()
    np.testing.assert_allclose([r["label"] for r in scored], model.predict(expected, verbose=0), atol=1e-5)


def test_image_column_needs_a_known_image_shape(spark):
    df = in_memory_images(spark, [encode(np.zeros((4, 4, 3), np.uint8), "PNG")], [0])
    with pytest.raises(BindingError, match=r"'content' holds images .* \(None, None, 3\)"):
        image_model(shape=(None, None, 3)).fit(df, epochs=1, verbose=0)


def test_unknown_image_resize_is_refused(spark):
    df = in_memory_images(spark, [encode(np.zeros((4, 4, 3), np.uint8), "PNG")], [0])
    with pytest.raises(ValueError, match="image_resize must be one of"):
        image_model().fit(df, epochs=1, verbose=0, image_resize="stretch")

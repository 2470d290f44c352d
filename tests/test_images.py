"""Image columns (binary JPEG/PNG, Spark's image struct) feed image inputs on Spark, decoded by the core.

Decoding itself (pixels against Pillow, corrupt files, fuzzing) is tested in test_image_decode.py.
"""

import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from image_builders import core_decode, encode, pattern_image, pillow_decode
from pyspark.sql import functions as F
from pyspark.sql import types as T

from keras_spark.errors import BindingError, DataError
from keras_spark.models import KerasSparkModel

SIZE = 16


# -- fitting sizes: the core beside TensorFlow's and Keras's references -----------------
@pytest.mark.backend_independent
def test_resize_matches_tf_image_resize_bilinear():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(3)]
    got = core_decode([encode(p, "PNG") for p in images], (17, 23, 3), dtype="float32", fit="resize")
    expected = tf.image.resize(np.stack(images).astype(np.float32), (17, 23), method="bilinear").numpy()
    np.testing.assert_allclose(got, expected, atol=1e-3)


@pytest.mark.backend_independent
@pytest.mark.parametrize("source", [(30, 40), (10, 12)], ids=["larger", "smaller"])
def test_center_crop_matches_keras_center_crop(source):
    pixels = np.random.default_rng(3).integers(0, 256, (*source, 3), dtype=np.uint8)
    got = core_decode([encode(pixels, "PNG")], (16, 16, 3), dtype="float32", fit="center_crop")
    crop = keras.layers.CenterCrop(16, 16, dtype="float32")
    expected = keras.ops.convert_to_numpy(crop(pixels[None].astype(np.float32)))
    np.testing.assert_allclose(got, expected, atol=1e-3)


# -- on Spark --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_folder():
    """40 PNG and JPEG files named label<k>_<i>, where a Connect server's executors read too (not /tmp)."""
    from connect_server import shared_scratch

    folder = Path(shared_scratch("keras_spark_images_"))
    rng = np.random.default_rng(5)
    for i in range(40):
        label = i % 2
        fmt = "PNG" if i % 4 < 2 else "JPEG"
        (folder / f"label{label}_{i}.{fmt.lower()}").write_bytes(encode(pattern_image(label, rng), fmt))
    yield folder
    shutil.rmtree(folder)


def image_model(name="content", shape=(SIZE, SIZE, 3), dtype="uint8") -> KerasSparkModel:
    keras.utils.set_random_seed(4)
    inp = keras.Input(shape=shape, dtype=dtype, name=name)
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    # Flatten keeps where the bright half is, which is the label (pooling would average it away);
    # an image of unknown size can only be pooled.
    known_size = None not in shape
    x = keras.layers.Flatten()(x) if known_size else keras.layers.GlobalAveragePooling2D()(x)
    model = KerasSparkModel(inp, keras.layers.Dense(2, activation="softmax", name="label")(x))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
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
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
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
    where = r"column 'content' has an image at row 0 of partition id 4 that cannot be decoded"
    with pytest.raises(DataError, match=where):
        image_model().fit(in_memory_images(spark, blobs, [0, 1] * 3), batch_size=2, epochs=1, verbose=0)


def test_a_corrupt_file_of_a_binary_file_frame_is_named_by_its_path(spark, image_folder):
    corrupt = image_folder / "label1_corrupt.png"
    corrupt.write_bytes(encode(pattern_image(1, np.random.default_rng(9)), "PNG")[:50])
    try:
        with pytest.raises(DataError, match=rf"column 'content' has an image at row \d+ of partition id \d+ "
                                            rf"\(path='file:{corrupt}'\) that cannot be decoded"):
            image_model().fit(binary_files(spark, image_folder), batch_size=8, epochs=1, verbose=0)
    finally:
        corrupt.unlink()


def test_size_mismatch_without_image_resize_is_a_data_error(spark):
    rng = np.random.default_rng(7)
    blobs = [encode(pattern_image(0, rng, (24, 20)), "PNG") for _ in range(4)]
    with pytest.raises(DataError, match=r"'content' has an image of 24x20 .* takes 16x16 .*image_resize"):
        image_model().fit(in_memory_images(spark, blobs, [0] * 4), batch_size=2, epochs=1, verbose=0)


@pytest.mark.session_independent
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


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_image_column_needs_a_known_image_shape(spark):
    df = in_memory_images(spark, [encode(np.zeros((4, 4, 3), np.uint8), "PNG")], [0])
    with pytest.raises(BindingError, match=r"'content' holds images .* \(None, None, 3\)"):
        image_model(shape=(None, None, 3)).fit(df, epochs=1, verbose=0)


@pytest.mark.backend_independent
@pytest.mark.session_independent
def test_unknown_image_resize_is_refused(spark):
    df = in_memory_images(spark, [encode(np.zeros((4, 4, 3), np.uint8), "PNG")], [0])
    with pytest.raises(ValueError, match="image_resize must be one of"):
        image_model().fit(df, epochs=1, verbose=0, image_resize="stretch")

"""An image classifier trained from a folder of image files, read with Spark's binaryFile source.

    pip install ".[demo]" && python examples/image_classifier.py [--folder DIR] [--epochs 10] [--images N]

Writes scikit-learn's bundled digits as PNG and JPEG files, one folder per class
(<folder>/<digit>/<n>.png), upscaled to sizes between 28 and 40 pixels. Spark reads them
with `spark.read.format("binaryFile")` (path, modificationTime, length, content); the
`content` column of encoded bytes feeds `keras.Input(shape=(32, 32, 1), dtype="uint8")`
directly: keras-spark's core decodes each file on its own threads and resizes it to 32x32
(`image_resize="resize"`). The model trains with `fit`, scores the held-out files on the
executors with `predict`, and the script prints the held-out accuracy. Without `--folder` the
files go to a temporary directory that is removed at the end.
"""

import argparse
import os
import sys
import tempfile

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

import keras_spark.models  # noqa: E402, F401, I001  (first: Keras imported without the backend's start-up lines)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from keras_spark.models import KerasSparkModel  # noqa: E402

SIDE = 32
PARTITIONS = 8


def write_digit_files(folder: str, limit: int | None = None) -> int:
    """Each digit (the first `limit`) as a PNG or JPEG file of 28..40 pixels a side in <folder>/<digit>/."""
    digits = load_digits()
    images, targets = digits.images[:limit], digits.target[:limit]
    rng = np.random.default_rng(0)
    for i, (image, digit) in enumerate(zip(images, targets, strict=True)):
        side = int(rng.integers(28, 41))
        pixels = tf.image.resize(image[..., None] * (255 / 16), (side, side))
        pixels = tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)
        encoded = tf.io.encode_png(pixels) if i % 2 else tf.io.encode_jpeg(pixels, quality=95)
        os.makedirs(os.path.join(folder, str(digit)), exist_ok=True)
        with open(os.path.join(folder, str(digit), f"{i:05d}.{'png' if i % 2 else 'jpg'}"), "wb") as f:
            f.write(encoded.numpy())
    return len(images)


def image_files(spark, folder: str):
    """binaryFile rows with the class from the folder name, a partition id and a held-out flag."""
    return (
        spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(folder)
        .withColumn("digit", F.regexp_extract("path", r"/(\d)/[^/]+$", 1).cast("int"))
        .withColumn("partition_id", (F.crc32("path") % PARTITIONS).cast("int"))
        .withColumn("held_out", F.crc32(F.concat(F.lit("split"), "path")) % 5 == 0)
    )


def small_convnet():
    content = keras.Input(shape=(SIDE, SIDE, 1), dtype="uint8", name="content")
    h = keras.layers.Rescaling(1 / 255)(content)
    h = keras.layers.Conv2D(16, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    digit = keras.layers.Dense(10, activation="softmax", name="digit")(h)
    model = KerasSparkModel(content, digit)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main(folder: str | None = None, epochs: int = 10, images: int | None = None, spark=None) -> float:
    """Write the image files, train and score; `spark`: a session to use (kept open), else a local one."""
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="digit_images_") as scratch:
            return main(scratch, epochs, images, spark)
    keras.utils.set_random_seed(0)
    print(f"wrote {write_digit_files(folder, images)} image files under {folder}")
    own_session = spark is None
    if own_session:
        spark = SparkSession.builder.master("local[2]").appName("keras-spark-images") \
            .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
    files = image_files(spark, folder)
    train, held_out = files.filter(~F.col("held_out")), files.filter(F.col("held_out"))

    model = small_convnet()
    model.fit(train, batch_size=64, epochs=epochs, verbose=2, image_resize="resize")
    scored = model.predict(held_out, image_resize="resize").select("path", "digit", "model_output.digit")
    rows = scored.toPandas()
    predicted = np.stack(rows.iloc[:, 2].to_numpy()).argmax(axis=1)
    accuracy = float((predicted == rows.iloc[:, 1].to_numpy()).mean())
    print(f"held-out accuracy on {len(rows)} image files: {accuracy:.3f}")
    if own_session:
        spark.stop()
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", help="where to write the image files (kept); default a temporary directory")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--images", type=int, default=None, help="use only the first N digits (default all 1,797)")
    args = parser.parse_args()
    main(args.folder, args.epochs, args.images)

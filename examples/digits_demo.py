"""The demo: scikit-learn's bundled digits, trained and scored through Spark with KerasSparkModel.

    pip install ".[demo]" && python examples/digits_demo.py [--epochs 8]

Starts a local Spark, makes a DataFrame of 8x8 digit images (pixels as an
array<array<float>> column, a partition_id column), trains a small network from it
with `fit`, scores the held-out rows on the executors with `predict`, and prints
the held-out accuracy and a few predictions beside their labels.
"""

import argparse
import os
import sys

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

import keras_spark.models  # noqa: E402, F401, I001  (first: Keras imported without the backend's start-up lines)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from keras_spark.models import KerasSparkModel  # noqa: E402

PARTITIONS = 8


def digits_frame(spark):
    digits = load_digits()
    rng = np.random.default_rng(0)
    images = (digits.images / 16.0).astype("float32")
    frame = pd.DataFrame({
        "pixels": [img.tolist() for img in images],
        "digit": digits.target.astype("int64"),
        "partition_id": rng.integers(0, PARTITIONS, len(images)),
        "held_out": rng.random(len(images)) < 0.2,
    })
    return spark.createDataFrame(frame)


def small_convnet():
    pixels = keras.Input(shape=(8, 8, 1), name="pixels")
    h = keras.layers.Conv2D(16, 3, activation="relu", padding="same")(pixels)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(64, activation="relu")(h)
    digit = keras.layers.Dense(10, activation="softmax", name="digit")(h)
    model = KerasSparkModel(pixels, digit)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main(epochs: int = 8, spark=None):
    """Train and score the digits; `spark`: a session to use (kept open), else a local one made and stopped here."""
    keras.utils.set_random_seed(0)
    own_session = spark is None
    if own_session:
        spark = SparkSession.builder.master("local[2]").appName("keras-spark-demo") \
            .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false").getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
    df = digits_frame(spark).cache()
    train, held_out = df.filter(~F.col("held_out")), df.filter(F.col("held_out"))
    print(f"digits: {train.count()} training rows, {held_out.count()} held out, {PARTITIONS} partition ids")

    model = small_convnet()
    model.fit(train, batch_size=32, epochs=epochs, partition_col="partition_id", num_parallel_calls=4)

    scored = model.predict(held_out).withColumn(
        "predicted", F.array_position("model_output.digit", F.array_max("model_output.digit")) - 1
    )
    accuracy = scored.select(F.avg((F.col("predicted") == F.col("digit")).cast("double"))).first()[0]
    print(f"\nheld-out accuracy (scored on the Spark executors): {accuracy:.3f}")
    print("a few held-out rows:")
    for row in scored.select("digit", "predicted").limit(10).collect():
        print(f"  label {row['digit']}  predicted {row['predicted']}")
    df.unpersist()
    if own_session:
        spark.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    main(parser.parse_args().epochs)

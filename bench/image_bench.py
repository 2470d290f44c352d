"""Images: the core's JPEG decoder beside Pillow and tf.data, and fit on image files beside NumPy.

    python bench/image_bench.py [--images 512] [--epochs 5]

Same 224x224x3 JPEG files (digits from scikit-learn, upscaled and coloured, ~quality 90) for
every contender:
- decode: images/s of keras-spark's core (_core.to_dense on an Arrow binary column, all cores;
  and one thread), Pillow (one thread; and a thread pool of all cores: Pillow releases the GIL),
  tf.io.decode_jpeg in a tf.data map with AUTOTUNE.
- cache: bytes per image of the encoded JPEG (an encoded-bytes cache, decoded every epoch) and
  of the decoded uint8 pixels (keras-spark's cache, decoded once at write time); rows/s of reading
  the decoded cache back (one epoch of the batch pipeline) beside decoding every epoch.
- fit: a small CNN on spark.read.format("binaryFile"), steady epoch (median after the first)
  beside model.fit on the same images already decoded in NumPy (target <= 1.1x).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import EpochTimer, emit, median, spark_session, timed

SIDE = 224
BATCH = 32


def make_jpegs(folder: Path, count: int) -> list[bytes]:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    blobs = []
    for i in range(count):
        grey = Image.fromarray((digits.images[i % len(digits.images)] * 15).astype(np.uint8)).resize(
            (SIDE, SIDE), Image.BILINEAR)
        tint = rng.uniform(0.4, 1.0, 3)
        pixels = (np.asarray(grey, np.float32)[..., None] * tint + rng.normal(0, 6, (SIDE, SIDE, 3))).clip(0, 255)
        out = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(out, format="JPEG", quality=90)
        blobs.append(out.getvalue())
        (folder / f"label{digits.target[i % len(digits.target)] % 2}_{i:05d}.jpg").write_bytes(blobs[-1])
    return blobs


def decode_rates(blobs: list[bytes]) -> dict:
    import numpy as np
    import pyarrow as pa
    import tensorflow as tf
    from PIL import Image

    from keras_spark import _core

    array = pa.array(blobs, pa.binary())
    n, cores = len(blobs), os.cpu_count() or 1

    def core_decode():
        return _core.to_dense(*array.__arrow_c_array__(), "content", "uint8;image=exact", [SIDE, SIDE, 3])[0]

    def core_one_thread():
        os.environ["KERAS_SPARK_DECODE_THREADS"] = "1"
        try:
            return core_decode()
        finally:
            del os.environ["KERAS_SPARK_DECODE_THREADS"]

    def pillow_one(b):
        return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))

    def pillow():
        return [pillow_one(b) for b in blobs]

    pool = ThreadPoolExecutor(cores)

    def pillow_threads():
        return list(pool.map(pillow_one, blobs))

    dataset = (tf.data.Dataset.from_tensor_slices(blobs)
               .map(lambda b: tf.io.decode_jpeg(b, channels=3), num_parallel_calls=tf.data.AUTOTUNE)
               .batch(64).prefetch(tf.data.AUTOTUNE))

    def tf_data():
        return [b for b in dataset]

    rates = {}
    for name, fn in [("core_all_cores", core_decode), ("core_one_thread", core_one_thread),
                     ("pillow_one_thread", pillow), ("pillow_thread_pool", pillow_threads),
                     ("tf_data_decode_jpeg_autotune", tf_data)]:
        seconds, _ = timed(fn, repeat=3, warmup=1)
        rates[name] = round(n / seconds, 1)
    pool.shutdown()
    ours, theirs = core_decode(), np.stack(pillow())
    return {"images_per_s": rates, "cores": cores,
            "core_vs_pillow_thread_pool": round(rates["core_all_cores"] / rates["pillow_thread_pool"], 2),
            "core_vs_tf_data": round(rates["core_all_cores"] / rates["tf_data_decode_jpeg_autotune"], 2),
            "mean_abs_diff_vs_pillow": round(float(np.abs(ours.astype(np.float32) - theirs).mean()), 3)}


def image_model():
    import keras

    from keras_spark.models import KerasSparkModel

    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(SIDE, SIDE, 3), dtype="uint8", name="content")
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(8, 5, strides=4, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = KerasSparkModel(inp, keras.layers.Dense(2, activation="softmax", name="label")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def fit_figures(spark, folder: Path, epochs: int) -> dict:
    import numpy as np
    from PIL import Image
    from pyspark.sql import functions as F

    from keras_spark.feed import BatchFeed
    from keras_spark.spark.extract import extract
    from keras_spark.spark.training import _bind

    df = (spark.read.format("binaryFile").load(str(folder))
          .withColumn("label", F.regexp_extract("path", r"label(\d)_", 1).cast("int"))
          .withColumn("partition_id", (F.crc32("path") % 16).cast("int")))
    ours, timer = image_model(), EpochTimer()
    ours.fit(df, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[timer])
    spark_pass_s = ours.data_stats["spark_pass_s"]

    rows = df.select("content", "label").collect()
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(r["content"])).convert("RGB")) for r in rows])
    labels = np.array([r["label"] for r in rows])
    baseline, base_timer = image_model(), EpochTimer()
    baseline.fit(pixels, labels, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[base_timer], shuffle=True)

    # Reading the decoded cache back: one epoch of the batch pipeline, no training.
    cached = extract(df, _bind(ours, df, "partition_id", with_labels=True), "partition_id")
    try:
        feed = BatchFeed(ours, cached, batch_size=BATCH, shuffle=True, seed=0, num_parallel_calls=None)
        started, it = time.perf_counter(), iter(feed)
        for _ in range(feed.steps_per_epoch):
            next(it)
        read_rows_per_s = feed.rows / (time.perf_counter() - started)
        feed.close()
        cache_bytes = next(math.prod(s) * np.dtype(b.dtype).itemsize
                           for b, s in zip(cached.bindings, cached.shapes, strict=True) if b.column == "content")
    finally:
        cached.remove()
    ours_s, numpy_s = median(timer.times[1:]), median(base_timer.times[1:])
    return {"images": len(rows), "batch_size": BATCH, "epochs": epochs,
            "steady_epoch_s": {"keras_spark": round(ours_s, 3), "numpy_decoded": round(numpy_s, 3)},
            "ratio_to_numpy": round(ours_s / numpy_s, 3), "target_ratio": 1.1,
            "spark_pass_s_incl_decode": round(spark_pass_s, 2),
            "decoded_cache_read_images_per_s": round(read_rows_per_s, 1),
            "cache_bytes_per_image_decoded_uint8": cache_bytes,
            "cache_bytes_per_image_encoded_jpeg_mean": int(np.mean([len(r["content"]) for r in rows]))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="keras_spark_image_bench_"))
    try:
        blobs = make_jpegs(folder, args.images)
        figures = {"side": SIDE, "decode": decode_rates(blobs)}
        spark = spark_session("image-bench")
        try:
            figures["fit"] = fit_figures(spark, folder, args.epochs)
        finally:
            spark.stop()
    finally:
        shutil.rmtree(folder)
    decode, fit = figures["decode"], figures["fit"]
    # An encoded-bytes cache decodes every epoch at the core's rate; the decoded cache reads at this rate.
    figures["cache_choice"] = {
        "decoded_pixels": {"bytes_per_image": fit["cache_bytes_per_image_decoded_uint8"],
                           "epoch_images_per_s": fit["decoded_cache_read_images_per_s"]},
        "encoded_bytes": {"bytes_per_image": fit["cache_bytes_per_image_encoded_jpeg_mean"],
                          "epoch_images_per_s": decode["images_per_s"]["core_all_cores"]},
    }
    emit("images", figures)


if __name__ == "__main__":
    main()

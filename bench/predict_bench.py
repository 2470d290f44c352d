"""predict (W3): keras-spark on the executors beside Spark's predict_batch_udf and the NumPy limit.

    python bench/predict_bench.py [--rows 300000]

rows x 32 float32 features scored by an MLP with a 128-wide hidden layer; the
scored DataFrame is written to Spark's `noop` sink so nothing is collected.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from common import emit, float_features, spark_session, timed, to_numpy

BATCH = 512


def mlp():
    import keras

    from keras_spark.models import KerasSparkModel

    keras.utils.set_random_seed(0)
    x = keras.Input(shape=(32,), name="x")
    h = keras.layers.Dense(128, activation="relu")(x)
    return KerasSparkModel(x, keras.layers.Dense(1, name="y")(h))


def noop(df):
    df.write.format("noop").mode("overwrite").save()


def predict_batch_udf_column(model_path: str):
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import types as T

    def make_predict_fn():
        import keras

        import keras_spark.models  # noqa: F401

        model = keras.models.load_model(model_path, compile=False)

        def predict(x):
            return model.predict_on_batch(x).reshape(-1)

        return predict

    return predict_batch_udf(make_predict_fn, return_type=T.FloatType(), batch_size=BATCH,
                             input_tensor_shapes=[[32]])


def measure(contender: str, rows: int, repeat: int) -> float:
    """Median seconds of one contender, in this process's own SparkSession (fresh Python workers)."""
    spark = spark_session(f"bench-predict-{contender}")
    df = float_features(spark, rows, 32, 16).select("id", "partition_id", "x").cache()
    df.count()
    model = mlp()
    if contender == "limit_numpy":
        (x,) = to_numpy(df, "x")
        seconds, _ = timed(lambda: model.predict(x, batch_size=BATCH, verbose=0), repeat=repeat)
    elif contender.startswith("keras_spark"):
        # keras_spark: batch 512; keras_spark_default: no batch_size (sized by bytes); keras_spark_32: Keras's 32
        batch = {"keras_spark": BATCH, "keras_spark_default": None, "keras_spark_32": 32}[contender]
        seconds, _ = timed(lambda: noop(model.predict(df, batch_size=batch)), repeat=repeat)
    else:
        path = os.path.join(tempfile.mkdtemp(), "model.keras")
        model.save(path)
        udf = predict_batch_udf_column(path)
        seconds, _ = timed(lambda: noop(df.withColumn("pred", udf("x"))), repeat=repeat)
    return seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default=None, help="measure one contender and print its seconds")
    args = parser.parse_args()
    if args.only:
        print(json.dumps({"seconds": measure(args.only, args.rows, args.repeat)}))
        return
    # Each contender runs in its own process: Spark reuses Python workers across jobs, and
    # what one contender leaves in them (imports, a frozen collector) must not help another.
    seconds = {}
    for contender in ("keras_spark", "keras_spark_default", "keras_spark_32", "predict_batch_udf", "limit_numpy"):
        done = subprocess.run([sys.executable, __file__, "--only", contender, "--rows", str(args.rows),
                               "--repeat", str(args.repeat)], capture_output=True, text=True, check=True)
        seconds[contender] = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    rows = args.rows
    emit("predict_w3", {
        "workload": "w3", "rows": rows, "batch_size": BATCH,
        "rows_per_s": {name: rows / s for name, s in seconds.items()},
        "seconds": seconds,
        "ratios": {"keras_spark_vs_predict_batch_udf": seconds["predict_batch_udf"] / seconds["keras_spark"],
                   "keras_spark_vs_limit": seconds["limit_numpy"] / seconds["keras_spark"],
                   "default_batch_vs_batch_32": seconds["keras_spark_32"] / seconds["keras_spark_default"]},
    })


if __name__ == "__main__":
    main()

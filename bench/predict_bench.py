"""predict (W3): keras-spark on the executors beside Spark's predict_batch_udf and the NumPy limit.

    python bench/predict_bench.py [--rows 300000]

rows x 32 float32 features scored by an MLP with a 128-wide hidden layer; the
scored DataFrame is written to Spark's `noop` sink so nothing is collected.
"""

from __future__ import annotations

import argparse
import os
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    spark = spark_session("bench-predict")
    df = float_features(spark, args.rows, 32, 16).select("id", "partition_id", "x").cache()
    df.count()
    model = mlp()
    (x,) = to_numpy(df, "x")

    limit_s, _ = timed(lambda: model.predict(x, batch_size=BATCH, verbose=0), repeat=args.repeat)
    ours_s, _ = timed(lambda: noop(model.predict(df, batch_size=BATCH)), repeat=args.repeat)
    path = os.path.join(tempfile.mkdtemp(), "model.keras")
    model.save(path)
    udf = predict_batch_udf_column(path)
    udf_s, _ = timed(lambda: noop(df.withColumn("pred", udf("x"))), repeat=args.repeat)
    rows = args.rows
    emit("predict_w3", {
        "workload": "w3", "rows": rows, "batch_size": BATCH,
        "rows_per_s": {"keras_spark": rows / ours_s, "predict_batch_udf": rows / udf_s, "limit_numpy": rows / limit_s},
        "seconds": {"keras_spark": ours_s, "predict_batch_udf": udf_s, "limit_numpy": limit_s},
        "ratios": {"keras_spark_vs_predict_batch_udf": udf_s / ours_s, "keras_spark_vs_limit": limit_s / ours_s},
    })


if __name__ == "__main__":
    main()

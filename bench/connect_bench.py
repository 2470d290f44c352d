"""Spark Connect: keras-spark through a remote (isolated) Connect server, beside the obvious alternatives.

    python bench/connect_bench.py [--rows N] [--cap-mb M] [--big-model-mb B]

The server is PySpark's start-connect-server.sh with --master local[2], in its own mount
namespace with a private /tmp where the machine allows it (tests/connect_server.py):
the client's cache directory is invisible to the executors, as on a remote cluster.
Figures (one JSON document):
- fit: first epoch (Spark pass included) vs toPandas() + Keras fit on the same session and
  rows; later epochs vs Keras on NumPy in memory.
- memory: the client's RSS growth while fitting a DataFrame 3x a cap.
- predict: rows/s through Connect vs a classic local[2] session (in a child process).
- big model: a model of B MB, time to the first scored row, and uploads of the model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import EpochTimer, emit, float_features, median  # noqa: E402

BATCH = 512


def mlp(features: int, hidden: int = 64, depth: int = 1):
    import keras

    from keras_spark.models import KerasSparkModel

    keras.utils.set_random_seed(0)
    x = keras.Input(shape=(features,), name="x")
    h = x
    for _ in range(depth):
        h = keras.layers.Dense(hidden, activation="relu")(h)
    model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(h))
    model.compile("adam", "mse")
    return model


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory: VmRSS (all), RssAnon (its own), RssFile (mapped files: page cache)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1e3
    return float("nan")


class PeakRss:
    """Samples this process's RSS, and its anonymous part, every 50 ms while open."""

    def __enter__(self):
        self.start, self.start_anon = rss_mb(), rss_mb("RssAnon")
        self.peak, self.peak_anon, self._done = self.start, self.start_anon, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(0.05):
            self.peak, self.peak_anon = max(self.peak, rss_mb()), max(self.peak_anon, rss_mb("RssAnon"))

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()


def fit_figures(spark, rows: int, epochs: int = 3, repeats: int = 3) -> dict:
    # The session's first Python task starts the server's Python workers (imports included);
    # toPandas never starts them. Measured once; then the two contenders take turns, a fresh
    # model each time, so neither pays alone for the server's first query of a plan shape.
    import numpy as np

    start = time.perf_counter()
    mlp(32).fit(float_features(spark, 2000, 32, partitions=2), batch_size=BATCH, epochs=1, verbose=0)
    cold_fit = time.perf_counter() - start
    df = float_features(spark, rows, 32, partitions=16)
    ours_first, ours_later, passes, pandas_first, numpy_later, topandas = [], [], [], [], [], []
    for _ in range(repeats):
        model, timer = mlp(32), EpochTimer()
        start = time.perf_counter()
        model.fit(df, batch_size=BATCH, epochs=epochs, callbacks=[timer], verbose=0)
        ours_first.append(timer.ended_at[0] - start)
        ours_later.append(median(timer.times[1:]))
        passes.append(model.data_stats["spark_pass_s"])

        baseline, timer = mlp(32), EpochTimer()
        start = time.perf_counter()
        pdf = df.select("x", "y").toPandas()
        topandas.append(time.perf_counter() - start)
        x, y = np.stack(pdf["x"].to_numpy()).astype("float32"), pdf["y"].to_numpy().astype("float32")
        baseline.fit(x, y, batch_size=BATCH, epochs=epochs, callbacks=[timer], verbose=0, shuffle=True)
        pandas_first.append(timer.ended_at[0] - start)
        numpy_later.append(median(timer.times[1:]))
    return {
        "rows": rows, "repeats": repeats, "cache_path": model.data_stats["cache_path"],
        "cold_first_fit_2000_rows_s": cold_fit,
        "ours_spark_pass_s": median(passes), "topandas_s": median(topandas),
        "ours_first_epoch_s": median(ours_first), "topandas_fit_first_epoch_s": median(pandas_first),
        "first_epoch_ratio": median(ours_first) / median(pandas_first),
        "first_epoch_ratios_each_turn": [a / b for a, b in zip(ours_first, pandas_first, strict=True)],
        "ours_later_epoch_s": median(ours_later), "numpy_later_epoch_s": median(numpy_later),
        "later_epoch_ratio": median(ours_later) / median(numpy_later),
    }


def memory_figures(spark, cap_mb: int, times_cap: int = 3) -> dict:
    from pyspark.sql import functions as F

    features = 256  # 1 KiB of float32 a row

    def frame(rows):
        return (spark.range(rows, numPartitions=8)
                .select((F.col("id") % 16).cast("int").alias("partition_id"),
                        F.array_repeat(F.rand(1).cast("float"), features).alias("x"))
                .withColumn("y", F.col("x")[0]))

    # A small fit first: what the backend and Keras allocate once (graphs, kernels) is not data held.
    mlp(features, hidden=8).fit(frame(4 * BATCH), batch_size=BATCH, epochs=1, verbose=0)
    rows = times_cap * cap_mb * 1024
    df = frame(rows)
    model = mlp(features, hidden=8)
    with PeakRss() as rss:
        model.fit(df, batch_size=BATCH, epochs=1, verbose=0)
    # The cache is memory-mapped: reading it in the epoch maps its pages (RssFile, page cache the
    # kernel reclaims under a cap); RssAnon is the memory the client itself holds.
    return {"cap_mb": cap_mb, "data_mb": rows * (features + 1) * 4 / 1e6, "cache_path": model.data_stats["cache_path"],
            "client_rss_growth_mb": rss.peak - rss.start, "client_anon_rss_growth_mb": rss.peak_anon - rss.start_anon,
            "anon_under_cap": rss.peak_anon - rss.start_anon < cap_mb}


def predict_rows_per_s(spark, rows: int) -> float:
    from pyspark.sql import functions as F

    df = float_features(spark, rows, 32, partitions=16, spark_partitions=2)
    model = mlp(32)
    model.predict(df.limit(1000)).agg(F.sum("model_output.y")).collect()  # workers load the model
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model.predict(df).agg(F.sum("model_output.y")).collect()
        times.append(time.perf_counter() - start)
    return rows / median(times)


def big_model_figures(spark, megabytes: int) -> dict:
    from keras_spark.spark import session

    hidden = int((megabytes * 1e6 / 4 / 2) ** 0.5)  # two hidden x hidden float32 layers
    model = mlp(32, hidden=hidden, depth=3)
    df = float_features(spark, 1000, 32, partitions=4, spark_partitions=2)
    uploads = session.upload_count
    start = time.perf_counter()
    first = next(iter(model.predict(df).select("model_output.y").toLocalIterator()))
    to_first_row = time.perf_counter() - start
    start = time.perf_counter()
    model.predict(df).select("model_output.y").collect()
    second_query = time.perf_counter() - start
    return {"model_mb": model.count_params() * 4 / 1e6, "to_first_scored_row_s": to_first_row,
            "second_query_all_rows_s": second_query, "model_uploads_for_two_queries": session.upload_count - uploads,
            "first_row_finite": bool(first[0] == first[0])}


def memory_child(url: str, cap_mb: int, times_cap: int) -> None:
    """memory_figures in a fresh client process (its allocator settings come from its environment)."""
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    from pyspark.sql.connect.session import SparkSession

    spark = SparkSession.builder.remote(url).getOrCreate()
    print("MEMORY " + json.dumps(memory_figures(spark, cap_mb, times_cap)), flush=True)


def memory_in_children(url: str, cap_mb: int) -> dict:
    """The client's memory fitting 3x the cap, with glibc's default malloc arenas and with MALLOC_ARENA_MAX=2;
    and fitting 1x the cap (default arenas), to show that the growth does not follow the data.

    gRPC's threads receive the results in their own malloc arenas, which keep what they
    free; the second figure shows how much of the growth is that, not data held.
    """
    figures = {}
    for name, arenas, times_cap in (("default_malloc", None, 3), ("malloc_arena_max_2", "2", 3),
                                    ("default_malloc_1x_cap", None, 1)):
        env = dict(os.environ, **({"MALLOC_ARENA_MAX": arenas} if arenas else {}))
        done = subprocess.run([sys.executable, __file__, "--memory-child", url, "--cap-mb", str(cap_mb),
                               "--times-cap", str(times_cap)], env=env, capture_output=True, text=True)
        lines = [line[7:] for line in done.stdout.splitlines() if line.startswith("MEMORY ")]
        figures[name] = json.loads(lines[0]) if lines else {"failed": done.stderr[-2000:]}
    return figures


def classic_predict(rows: int) -> None:
    from common import spark_session

    spark = spark_session("connect-bench-classic")
    print("CLASSIC " + json.dumps({"predict_rows_per_s": predict_rows_per_s(spark, rows)}), flush=True)
    spark.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--cap-mb", type=int, default=100)
    parser.add_argument("--big-model-mb", type=int, default=300)
    parser.add_argument("--classic-predict", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--times-cap", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["memory", "fit"], help="measure only these figures")
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child, args.cap_mb, args.times_cap)
    if args.classic_predict:
        return classic_predict(args.rows)
    from connect_server import start_connect_server

    server = start_connect_server(conf={"spark.driver.memory": "4g", "spark.sql.shuffle.partitions": "4",
                                        "spark.connect.grpc.maxInboundMessageSize": str(128 << 20)})
    figures = {"server_isolated": server.isolated, "master": "local[2]"}
    try:
        os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
        from pyspark.sql.connect.session import SparkSession

        if args.only == "memory":
            figures["memory"] = memory_in_children(server.url, args.cap_mb)
            emit("connect_memory", figures)
            return
        spark = SparkSession.builder.remote(server.url).getOrCreate()
        figures["fit"] = fit_figures(spark, args.rows)
        if args.only == "fit":
            emit("connect_fit", figures)
            return
        print(json.dumps(figures["fit"]), flush=True)
        figures["predict"] = {"connect_rows_per_s": predict_rows_per_s(spark, args.rows)}
        figures["big_model"] = big_model_figures(spark, args.big_model_mb)
        print(json.dumps(figures["big_model"]), flush=True)
        spark.stop()
        figures["memory"] = memory_in_children(server.url, args.cap_mb)
    finally:
        server.stop()
    env = {k: v for k, v in os.environ.items() if k != "SPARK_CONNECT_MODE_ENABLED"}
    done = subprocess.run([sys.executable, __file__, "--classic-predict", "--rows", str(args.rows)], env=env,
                          capture_output=True, text=True)
    classic = next(json.loads(line[8:]) for line in done.stdout.splitlines() if line.startswith("CLASSIC "))
    figures["predict"]["classic_rows_per_s"] = classic["predict_rows_per_s"]
    figures["predict"]["ratio"] = figures["predict"]["connect_rows_per_s"] / classic["predict_rows_per_s"]
    emit("connect", figures)


if __name__ == "__main__":
    main()

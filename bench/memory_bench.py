"""W4 (memory and scaling): fit on data larger than the driver may hold; cost per row as rows and ids grow.

    python bench/memory_bench.py [--cap-gb 1.0] [--row-floats 256]

The driver's Python process is watched (resident memory sampled every 50 ms): its heap
(RssAnon) growth above the baseline after Spark, Keras and the model are loaded must stay
under the cap while the data set is ~3x the cap. Mapped cache pages (RssFile) are reported
too; the core drops the mapping of each partition once its rows are planned. Then the epoch
time per row is measured at N and 2N rows and
at 16 and 1,024 partition ids (ratios near 1 mean flat cost).
"""

from __future__ import annotations

import argparse
import threading
import time

from common import EpochTimer, emit, median, spark_session


def resident() -> dict:
    """This process's resident memory by kind: RssAnon is the heap (what a cap must bound);
    RssFile is mapped page cache (the cache files), which the kernel can always reclaim."""
    fields = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS", "RssAnon", "RssFile")):
                key, value = line.split(":")
                fields[key] = int(value.split()[0]) * 1024
    return fields


class RssWatch:
    def __init__(self):
        self.peak, self._stop = {}, threading.Event()

    def __enter__(self):
        self.baseline = resident()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            for key, value in resident().items():
                self.peak[key] = max(self.peak.get(key, 0), value)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def wide_frame(spark, rows: int, width: int, partitions: int):
    from pyspark.sql import functions as F

    return spark.range(rows, numPartitions=8).select(
        (F.col("id") % partitions).cast("int").alias("partition_id"),
        F.array_repeat(F.rand(1).cast("float"), width).alias("x"),
        F.rand(2).cast("float").alias("y"),
    )


def model(width: int):
    import keras

    from keras_spark.models import KerasSparkModel

    x = keras.Input(shape=(width,), name="x")
    m = KerasSparkModel(x, keras.layers.Dense(1, name="y")(x))
    m.compile("sgd", "mse")
    return m


def fit_once(spark, rows, width, partitions, epochs=2):
    m, timer = model(width), EpochTimer()
    df = wide_frame(spark, rows, width, partitions)
    start = time.perf_counter()
    m.fit(df, batch_size=512, epochs=epochs, callbacks=[timer], verbose=0, num_parallel_calls=4)
    return {"fit_s": time.perf_counter() - start, "later_epoch_s": median(timer.times[1:]),
            "per_row_us": 1e6 * median(timer.times[1:]) / rows}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cap-gb", type=float, default=1.0)
    parser.add_argument("--row-floats", type=int, default=256)
    parser.add_argument("--scaling-rows", type=int, default=400_000)
    args = parser.parse_args()
    spark = spark_session("bench-memory", driver_memory="1g")
    row_bytes = 4 * (args.row_floats + 1)
    rows = int(3 * args.cap_gb * 2**30 / row_bytes)
    fit_once(spark, 10_000, args.row_floats, 16)  # warm-up: imports, tracing, Spark's Python workers
    with RssWatch() as watch:
        big = fit_once(spark, rows, args.row_floats, 64)
    growth_gb = (watch.peak["RssAnon"] - watch.baseline["RssAnon"]) / 2**30
    n = args.scaling_rows
    at_n = fit_once(spark, n, 32, 16)
    at_2n = fit_once(spark, 2 * n, 32, 16)
    ids_16 = at_n
    ids_1024 = fit_once(spark, n, 32, 1024)
    emit("memory_w4", {
        "data_gb": rows * row_bytes / 2**30, "rows": rows, "cap_gb": args.cap_gb,
        "driver_rss_baseline_gb": {k: v / 2**30 for k, v in watch.baseline.items()},
        "driver_rss_peak_gb": {k: v / 2**30 for k, v in watch.peak.items()},
        "driver_rss_growth_gb": growth_gb, "under_cap": growth_gb < args.cap_gb, "big_fit": big,
        "scaling": {"rows_N": n, "N": at_n, "2N": at_2n, "ids_16": ids_16, "ids_1024": ids_1024,
                    "time_2N_over_N": at_2n["later_epoch_s"] / at_n["later_epoch_s"],
                    "ids_1024_over_16_per_row": ids_1024["per_row_us"] / ids_16["per_row_us"]},
    })


if __name__ == "__main__":
    main()

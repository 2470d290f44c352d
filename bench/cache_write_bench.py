"""The core alone, without Spark: Arrow batches -> CacheWriter -> Pipeline.

    PYTHONPATH=src python bench/cache_write_bench.py [--rows 2000000]

W1-shaped batches (x: array<float> of 32, y: double -> float32, 64 partition ids) made in Arrow,
so the figures are the core's own rows/s: the writer (every value null-, length-, finiteness-
and range-checked, as on the executors) and a shuffled epoch read back as core_bench reads it
(batch 512, 4 partitions open, one thread per core).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import pyarrow as pa

from keras_spark import _core


def batches(rows: int, batch_rows: int, features: int = 32) -> list[pa.RecordBatch]:
    rng = np.random.default_rng(0)
    out = []
    for start in range(0, rows, batch_rows):
        n = min(batch_rows, rows - start)
        x = pa.FixedSizeListArray.from_arrays(pa.array(rng.random(n * features, dtype=np.float32)), features)
        x = pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * features, features, dtype=np.int32)), x.flatten())
        out.append(pa.record_batch({"x": x, "y": pa.array(rng.random(n)),
                                    "pid": pa.array(np.sort(rng.integers(0, 64, n)).astype(np.int32))}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--batch-rows", type=int, default=10_000)  # Spark's maxRecordsPerBatch default
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    data = batches(args.rows, args.batch_rows)
    write, read = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as directory:
            writer = _core.CacheWriter(f"{directory}/chunk", [("x", 0, "float32", [32]), ("y", 1, "float32", [])], 2)
            start = time.perf_counter()
            for batch in data:
                writer.write(*batch.__arrow_c_array__())
            summary = writer.finish()
            write.append(time.perf_counter() - start)
            read.append(read_epoch_seconds(summary))
    print(json.dumps({"rows": args.rows, "write_rows_per_s": args.rows / float(np.median(write)),
                      "read_rows_per_s": args.rows / float(np.median(read))}, indent=2))


def read_epoch_seconds(summary: dict) -> float:
    runs: dict[int, list] = {}
    for pid, start, count in summary["runs"]:
        runs.setdefault(pid, []).append((0, start, count))
    pipeline = _core.Pipeline([summary["files"]], [("float32", [32]), ("float32", [])], [runs[p] for p in sorted(runs)],
                              batch_size=512, shuffle=True, seed=1, cycle_length=4, num_threads=os.cpu_count() or 1,
                              prefetch=2 * (os.cpu_count() or 1) + 2)
    for _ in range(pipeline.steps_per_epoch):  # warms the page cache
        pipeline.next()
    start = time.perf_counter()
    for _ in range(pipeline.steps_per_epoch):
        pipeline.next()
    seconds = time.perf_counter() - start
    pipeline.close()
    return seconds

if __name__ == "__main__":
    main()

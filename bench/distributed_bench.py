"""fit(num_workers=1) on the driver vs fit(num_workers=2) in a Spark barrier stage, under JAX or PyTorch.

Prints JSON for a small model (2k parameters) and a wide one (1.1M): rows/s of training
(later epochs, from per-step wall times), the wall time of each whole fit (Spark passes and
worker start-up included), one gradient-sized all-reduce between two processes of the backend's
runtime (JAX's, or torch.distributed's gloo), and an estimate of 8 and 64 workers from those
measured per-step costs.

    python bench/distributed_bench.py [--backend jax|torch] [--rows 200000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

# The backend is fixed per process and must be set before Keras is imported.
BACKEND = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "jax"
os.environ["KERAS_BACKEND"] = BACKEND
sys.path.insert(0, str(Path(__file__).parent))

from common import EpochTimer, emit, float_features, median, spark_session  # noqa: E402

BATCH = 512
FEATURES = 32


# small: W1's model (2k parameters, a step is mostly overhead); wide: 1.1M parameters, a step
# is mostly arithmetic, the case data parallelism is for.
HIDDEN = {"small": [64], "wide": [1024, 1024]}


def model(kind: str):
    import keras

    from keras_spark.models import KerasSparkModel

    keras.utils.set_random_seed(0)
    x = keras.Input((FEATURES,), name="x")
    h = x
    for width in HIDDEN[kind]:
        h = keras.layers.Dense(width, activation="relu")(h)
    m = KerasSparkModel(x, keras.layers.Dense(1, name="y")(h))
    m.compile("adam", "mse")
    return m


def one_worker(df, rows, epochs, kind):
    m, timer = model(kind), EpochTimer()
    started = time.perf_counter()
    m.fit(df, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[timer])
    wall = time.perf_counter() - started
    later = median(timer.times[1:])
    steps = -(-rows // BATCH)
    return {"fit_wall_s": wall, "later_epoch_s": later, "step_s": later / steps, "rows_per_s": rows / later,
            "params": m.count_params()}


def two_workers(df, rows, epochs, kind):
    m = model(kind)
    started = time.perf_counter()
    m.fit(df, batch_size=BATCH, epochs=epochs, verbose=0, num_workers=2)
    wall = time.perf_counter() - started
    stats = m.data_stats
    steps = stats["steps_per_epoch"]
    # Per-step wall times of every rank, later epochs only; a step ends when the slowest rank's does.
    later = [max(ranks) for ranks in zip(*[s[steps:] for s in stats["step_s"]], strict=True)]
    step = median(later)
    return {"fit_wall_s": wall, "train_s": stats["train_s"], "step_s": step, "rows_per_s": BATCH / step,
            "steps_per_epoch": steps, "rows_per_worker": stats["rows_per_worker"]}


def allreduce_seconds(sizes: list[int]) -> dict:
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    probe = Path(__file__).with_name("allreduce_probe.py")
    args = lambda rank: [sys.executable, str(probe), BACKEND, str(rank), "2", str(port),  # noqa: E731
                         ",".join(map(str, sizes))]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    peer = subprocess.Popen(args(1), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chief = subprocess.run(args(0), env=env, capture_output=True, text=True, timeout=600, check=True)
    peer.wait(timeout=60)
    line = next(line for line in chief.stdout.splitlines() if line.startswith("{"))
    return {int(k): v for k, v in json.loads(line)["seconds_per_allreduce"].items()}


def estimate(one: dict, two: dict, allreduce: dict, params: int) -> dict:
    """Step time at N workers from the measured per-step costs: compute + a ring all-reduce.

    compute(N) = one-worker step / N (global batch fixed; one such machine per worker).
    Here both workers share this machine's cores, so their compute per step is the
    one-worker step, and the measured two-worker step less it is the communication
    at N=2; the probe splits it into a size part (grows as 2(N-1)/N in a ring, so
    stays about flat) and a fixed part per collective (grows with the 2(N-1) hops).
    An estimate from two processes on one 2-core machine, not a measurement at N.
    """
    comm2 = max(two["step_s"] - one["step_s"], 0.0)
    smallest = allreduce[min(allreduce)]
    probe_size_part = max(allreduce[params] - smallest, 0.0)
    size_part = min(probe_size_part, comm2)
    out = {"comm_per_step_at_2_s": comm2, "size_part_s": size_part, "fixed_part_s": comm2 - size_part}
    # Two readings of the same measurements: "measured_step" scales all of the step's
    # measured communication (core sharing included: pessimistic); "probe_ring" scales
    # only one gradient-sized all-reduce as the probe timed it (optimistic).
    readings = {"measured_step": (size_part, comm2 - size_part), "probe_ring": (probe_size_part, smallest)}
    for reading, (by_size, fixed) in readings.items():
        for n in (2, 8, 64):
            comm = by_size * (2 * (n - 1) / n) + fixed * (n - 1)
            step = one["step_s"] / n + comm
            out[f"{reading}_N{n}"] = {
                "step_s": step, "comm_s": comm, "rows_per_s": BATCH / step, "speedup_vs_1": one["step_s"] / step,
                # Holding 512 rows a worker (the global batch grows with N) instead:
                "rows_per_s_at_512_per_worker": n * BATCH / (one["step_s"] + comm),
            }
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["jax", "torch"], default="jax")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    spark = spark_session("bench-distributed")
    df = float_features(spark, args.rows, FEATURES, args.partitions).cache()
    df.count()
    figures = {"backend": BACKEND, "rows": args.rows, "features": FEATURES, "global_batch": BATCH,
               "epochs": args.epochs}
    for kind in HIDDEN:
        rows = args.rows if kind == "small" else args.rows // 10  # the wide model is ~500x the work a row
        data = df if kind == "small" else df.limit(rows).cache()
        one = one_worker(data, rows, args.epochs, kind)
        two = two_workers(data, rows, args.epochs, kind)
        params = one["params"]
        allreduce = allreduce_seconds(sorted({params, 1 << 10, 1 << 22}))
        figures[kind] = {
            "rows": rows, "params": params, "one_worker_driver": one, "two_workers_barrier": two,
            "allreduce_s_by_floats": allreduce,
            "allreduce_share_of_2_worker_step": allreduce[params] / two["step_s"],
            "ratios": {"rows_per_s_2_vs_1": two["rows_per_s"] / one["rows_per_s"],
                       "fit_wall_2_vs_1": two["fit_wall_s"] / one["fit_wall_s"]},
            "estimate": estimate(one, two, allreduce, params),
        }
    emit(f"distributed_{BACKEND}", figures)


if __name__ == "__main__":
    main()

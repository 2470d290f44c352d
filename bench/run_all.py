"""Run every benchmark and write bench/results/<name>.json, then print the README table.

    python bench/run_all.py [--quick]

--quick runs smaller workloads (for a smoke check); the README's figures come from a full run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def run(script: str, *args: str) -> None:
    print(f"== {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True, stdout=subprocess.DEVNULL)


def table() -> str:
    def load(name):
        path = HERE / "results" / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    lines = ["| figure | keras-spark | baseline | ratio | target |", "|---|---|---|---|---|"]
    for name, label in (("fit_w1", "W1 fit"), ("fit_w2", "W2 fit")):
        r = load(name)
        if r:
            ours, limit = r["keras_spark"], r["limit_numpy"]
            lines.append(f"| {label}: later epoch (s) | {ours['later_epoch_s']:.2f} | "
                         f"NumPy {limit['later_epoch_s']:.2f} | "
                         f"{r['ratios']['later_epoch_vs_limit']:.2f}x | <= 1.05x |")
            lines.append(f"| {label}: first epoch incl. Spark pass (s) | {ours['first_epoch_s']:.2f} | NumPy "
                         f"{limit['first_epoch_s']:.2f} | {r['ratios']['first_epoch_vs_limit_first']:.2f}x | <= 1.5x |")
            lines.append(f"| {label}: fit rows/s vs seed-style | {r['rows'] / ours['later_epoch_s']:,.0f} | "
                         f"{r['seed_style']['rows_per_s']:,.0f} | "
                         f"{r['ratios']['fit_rows_per_s_vs_seed_style']:.0f}x | |")
    c = load("core")
    if c:
        rps = c["rows_per_s"]
        for key, value in rps.items():
            if key.startswith("keras_spark_core"):
                lines.append(f"| core alone, {key} (rows/s) | {value:,.0f} | NumPy copy {rps['numpy_copy']:,.0f} | "
                             f"{value / rps['numpy_copy']:.2f}x | >= 0.5x |")
        lines.append(f"| core alone vs seed-style (rows/s) | {rps['keras_spark_core']:,.0f} | {rps['seed_style']:,.0f} "
                     f"| {c['ratios']['core_vs_seed_style']:.0f}x | >= 20x |")
        peta = c["petastorm"]
        lines.append("| core alone vs Petastorm | | " + (f"{peta['rows_per_s']:,.0f} | "
                     f"{c['ratios']['core_vs_petastorm']:.1f}x" if peta["rows_per_s"] else
                     f"did not run: {peta['error'][:60]} | n/a") + " | >= 3x |")
    p = load("predict_w3")
    if p:
        rps = p["rows_per_s"]
        lines.append(f"| W3 predict (rows/s) | {rps['keras_spark']:,.0f} | "
                     f"predict_batch_udf {rps['predict_batch_udf']:,.0f}"
                     f" | {p['ratios']['keras_spark_vs_predict_batch_udf']:.2f}x | >= 2x |")
        if "keras_spark_default" in rps:
            lines.append(f"| W3 predict, no batch_size (rows/s) | {rps['keras_spark_default']:,.0f} | "
                         f"batch_size=32 {rps['keras_spark_32']:,.0f} | "
                         f"{p['ratios']['default_batch_vs_batch_32']:.2f}x | |")
    m = load("memory_w4")
    if m:
        lines.append(f"| W4 fit on {m['data_gb']:.1f} GB, driver RSS growth (GB) | "
                     f"{m['driver_rss_growth_gb']:.2f} | cap {m['cap_gb']:.1f} | "
                     f"{'under' if m['under_cap'] else 'OVER'} | under cap |")
        s = m["scaling"]
        lines.append(f"| W4 epoch time 2N / N | | | {s['time_2N_over_N']:.2f} | <= 2.1 |")
        lines.append(f"| W4 per-row cost, 1,024 / 16 ids | | | {s['ids_1024_over_16_per_row']:.2f} | <= 1.1 |")
    for backend in ("jax", "torch"):
        d = load(f"distributed_{backend}")
        if not d:
            continue
        for kind in ("small", "wide"):
            r = d[kind]
            one, two = r["one_worker_driver"], r["two_workers_barrier"]
            lines.append(f"| {backend}: num_workers=2 vs 1, {kind} model ({r['params']:,} params), train rows/s | "
                         f"{two['rows_per_s']:,.0f} | 1 worker {one['rows_per_s']:,.0f} | "
                         f"{r['ratios']['rows_per_s_2_vs_1']:.2f}x | |")
            lines.append(f"| {backend}: num_workers=2, {kind} model: all-reduce of the gradients (ms) | "
                         f"{1e3 * r['allreduce_s_by_floats'][str(r['params'])]:.1f} | step {1e3 * two['step_s']:.1f} ms"
                         f" | {r['allreduce_share_of_2_worker_step']:.0%} of a step | |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if not args.table_only:
        quick = args.quick
        run("core_bench.py", *(["--rows", "200000"] if quick else []))
        run("fit_bench.py", "--workload", "w1", *(["--rows", "200000", "--repeat", "1"] if quick else []))
        run("fit_bench.py", "--workload", "w2", *(["--rows", "20000", "--repeat", "1"] if quick else []))
        run("predict_bench.py", *(["--rows", "30000", "--repeat", "1"] if quick else []))
        run("memory_bench.py", *(["--cap-gb", "0.1", "--scaling-rows", "50000"] if quick else []))
        for backend in ("jax", "torch"):
            run("distributed_bench.py", "--backend", backend, *(["--rows", "50000", "--epochs", "2"] if quick else []))
        run("connect_bench.py", *(["--rows", "50000", "--big-model-mb", "100"] if quick else []))
    print(table())


if __name__ == "__main__":
    main()

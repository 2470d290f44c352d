"""Seconds per all-reduce between JAX processes on this machine (run by distributed_bench.py).

    python bench/allreduce_probe.py RANK NUM_PROCESSES PORT FLOATS[,FLOATS...]

Each process holds one shard of an (N, floats) array; summing over the sharded axis
into a replicated result is the all-reduce that data-parallel training does on its
gradients every step. Rank 0 prints one JSON line.
"""

import json
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402


def main():
    rank, processes, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    sizes = [int(s) for s in sys.argv[4].split(",")]
    jax.distributed.initialize(f"127.0.0.1:{port}", processes, rank)
    mesh = Mesh(np.array(jax.devices()), ("workers",))
    sharded, replicated = NamedSharding(mesh, PartitionSpec("workers")), NamedSharding(mesh, PartitionSpec())
    reduce = jax.jit(lambda a: a.sum(axis=0), out_shardings=replicated)
    figures = {}
    for floats in sizes:
        local = np.full((1, floats), rank + 1.0, np.float32)
        array = jax.make_array_from_process_local_data(sharded, local, (processes, floats))
        reduce(array).block_until_ready()
        repeats = max(5, min(200, int(2e8 // max(floats, 1) // 100)))
        started = time.perf_counter()
        for _ in range(repeats):
            out = reduce(array)
        out.block_until_ready()
        figures[str(floats)] = (time.perf_counter() - started) / repeats
        expected = processes * (processes + 1) / 2
        assert float(np.asarray(out.addressable_data(0))[0]) == expected
    if rank == 0:
        print(json.dumps({"processes": processes, "seconds_per_allreduce": figures}), flush=True)


if __name__ == "__main__":
    main()

"""Seconds per all-reduce between processes of a backend's runtime on this machine (run by distributed_bench.py).

    python bench/allreduce_probe.py jax|torch RANK NUM_PROCESSES PORT FLOATS[,FLOATS...]

JAX: each process holds one shard of an (N, floats) array; summing over the sharded axis
into a replicated result is the all-reduce that data-parallel training does on its
gradients every step. PyTorch: `torch.distributed.all_reduce` of `floats` floats over gloo,
what keras-spark's torch engine does once a step. Rank 0 prints one JSON line.
"""

import json
import os
import sys
import time

import numpy as np


def _repeats(floats: int) -> int:
    return max(5, min(200, int(2e8 // max(floats, 1) // 100)))


def jax_seconds(rank: int, processes: int, port: str, sizes: list[int]) -> dict:
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    jax.distributed.initialize(f"127.0.0.1:{port}", processes, rank)
    mesh = Mesh(np.array(jax.devices()), ("workers",))
    sharded, replicated = NamedSharding(mesh, PartitionSpec("workers")), NamedSharding(mesh, PartitionSpec())
    reduce = jax.jit(lambda a: a.sum(axis=0), out_shardings=replicated)
    figures = {}
    for floats in sizes:
        local = np.full((1, floats), rank + 1.0, np.float32)
        array = jax.make_array_from_process_local_data(sharded, local, (processes, floats))
        reduce(array).block_until_ready()
        repeats = _repeats(floats)
        started = time.perf_counter()
        for _ in range(repeats):
            out = reduce(array)
        out.block_until_ready()
        figures[str(floats)] = (time.perf_counter() - started) / repeats
        assert float(np.asarray(out.addressable_data(0))[0]) == processes * (processes + 1) / 2
    return figures


def torch_seconds(rank: int, processes: int, port: str, sizes: list[int]) -> dict:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=processes)
    figures = {}
    for floats in sizes:
        tensor = torch.full((floats,), rank + 1.0)
        dist.all_reduce(tensor)
        repeats = _repeats(floats)
        started = time.perf_counter()
        for _ in range(repeats):
            dist.all_reduce(tensor)
        figures[str(floats)] = (time.perf_counter() - started) / repeats
    dist.destroy_process_group()
    return figures


def main():
    backend, rank, processes, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    sizes = [int(s) for s in sys.argv[5].split(",")]
    figures = (jax_seconds if backend == "jax" else torch_seconds)(rank, processes, port, sizes)
    if rank == 0:
        print(json.dumps({"backend": backend, "processes": processes, "seconds_per_allreduce": figures}), flush=True)


if __name__ == "__main__":
    main()

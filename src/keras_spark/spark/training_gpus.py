"""fit(num_workers=N) on GPU executors: one GPU per training process, or a refusal before training.

When the application gives its executors GPUs (`spark.executor.resource.gpu.amount` > 0 on a
cluster manager: standalone, YARN, Kubernetes, local-cluster), the barrier stage that trains
asks for one whole GPU per task with stage-level scheduling (`training_profile`), whatever
`spark.task.resource.gpu.amount` the rest of the application uses (scoring may share GPUs at
0.25; a training process never does). The rest of the job keeps the default profile. Each
barrier task hands its GPU address to its training process as `CUDA_VISIBLE_DEVICES`.

Local mode (`local[N]`) has no executors and Spark refuses stage-level task profiles there, so
training on the driver's machine uses Spark's ordinary task resources instead.
"""

from __future__ import annotations

import math

from keras_spark.spark.session import executor_count, executor_gpu_amount, one_gpu_per_task_profile


def trains_on_gpus(spark) -> bool:
    """True when the executors have GPUs and the master supports a per-stage GPU request."""
    master = spark.conf.get("spark.master", None) or ""
    return executor_gpu_amount(spark) > 0 and not master.startswith("local[") and master != "local"


def training_profile(spark):
    """The barrier stage's ResourceProfile (one GPU a task), or None to keep the default one."""
    return one_gpu_per_task_profile(spark) if trains_on_gpus(spark) else None


def check_training_gpus(spark, num_workers: int) -> None:
    """Refuses, before any Spark job, a cluster that cannot give `num_workers` processes one GPU each."""
    if not trains_on_gpus(spark):
        return
    per_executor_gpus = math.floor(executor_gpu_amount(spark))
    cores = int(spark.conf.get("spark.executor.cores", None) or 0) or _local_cluster_cores(spark)
    cpus = int(spark.conf.get("spark.task.cpus", None) or 1)
    per_executor = min(per_executor_gpus, cores // cpus) if cores else per_executor_gpus
    executors = executor_count(spark)
    if executors is None:  # a manager that does not say: Spark's own barrier check decides
        return
    offered = executors * per_executor
    if offered >= num_workers:
        return
    if per_executor_gpus == 0:
        missing = (f"each executor has {executor_gpu_amount(spark):g} of a GPU "
                   f"(spark.executor.resource.gpu.amount); a training process needs a whole one")
    else:
        missing = (f"this application has {executors} executor(s) with {per_executor_gpus} GPU(s) each "
                   f"(spark.executor.resource.gpu.amount)" + (
                       f" and {cores} core(s) each for tasks of {cpus} (spark.task.cpus)" if cores else "") +
                   f", so {offered} training process(es) can hold a GPU at once")
    raise ValueError(
        f"num_workers={num_workers} trains one process per GPU, but {missing}; use num_workers={offered} "
        f"or fewer, or add executors with GPUs" if offered else
        f"num_workers={num_workers} trains one process per GPU, but {missing}; give executors whole GPUs "
        f"(spark.executor.resource.gpu.amount=1 or more)"
    )


def _local_cluster_cores(spark) -> int:
    import re

    master = spark.conf.get("spark.master", None) or ""
    found = re.fullmatch(r"local-cluster\[\s*\d+\s*,\s*(\d+)\s*,\s*\d+\s*\]", master)
    return int(found.group(1)) if found else 0

"""One way to reach Spark: what the rest of keras-spark asks of a session, for classic and Connect alike.

Classic sessions (the Python process is the Spark driver) and Spark Connect sessions
(a gRPC client of a driver elsewhere: Spark 4 clients, Databricks shared and serverless
compute) share DataFrames, `mapInArrow` and barrier stages, but Connect has no
`sparkContext`, no RDD and no broadcast, and its client's disk is not the cluster's.
Nothing else in keras-spark touches `sparkContext`, `rdd` or broadcast.

- `is_connect`: which kind of session a DataFrame belongs to.
- `task_slots`: how many tasks can run at once (barrier stages need that many).
- `ship_bytes`: a large payload (the model) sent once, read on the executors by `.value`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from keras_spark import scratch


def is_connect(spark) -> bool:
    """True for a Spark Connect session (or a DataFrame's `sparkSession`), False for a classic one."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def task_slots(spark) -> int:
    """Tasks the application can run at once (`defaultParallelism`), for classic and Connect sessions."""
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    configured = spark.conf.get("spark.default.parallelism", None)
    if configured:
        return int(configured)
    from_master = _slots_of_master(spark.conf.get("spark.master", None) or "")
    if from_master:
        return from_master
    # No master to read (a cluster manager): spark.range without a partition count splits into
    # the default parallelism, which a tiny job reads back.
    from pyspark.sql import functions as F

    return int(spark.range(0, 1 << 12).select(F.spark_partition_id().alias("p")).agg(F.max("p")).first()[0]) + 1


def _slots_of_master(master: str) -> int | None:
    """local[N] -> N, local[N,F] -> N, local-cluster[n,c,m] -> n*c; None where the master does not say."""
    cluster = re.fullmatch(r"local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*\d+\s*\]", master)
    if cluster:
        return int(cluster.group(1)) * int(cluster.group(2))
    local = re.fullmatch(r"local(?:\[\s*(\d+|\*)\s*(?:,\s*\d+\s*)?\])?", master)
    if local:
        threads = local.group(1)
        if threads is None:
            return 1
        return os.cpu_count() or 1 if threads == "*" else int(threads)
    return None


# -- large payloads ---------------------------------------------------------------------
@dataclass(frozen=True)
class ShippedBytes:
    """Bytes sent to the executors once, read there with `.value`.

    Classic: a Spark broadcast. Connect (no broadcast; a closure travels inside the plan,
    whose messages are capped at 128 MiB): a session artifact named by the content's hash,
    uploaded once per session and fetched once per executor.
    """

    sha256: str
    size: int
    broadcast: object = None
    artifact_name: str | None = None

    @property
    def value(self) -> bytes:
        if self.broadcast is not None:
            return self.broadcast.value
        with open(_artifact_path(self.artifact_name), "rb") as f:
            return f.read()


_uploaded: set[tuple[str, str]] = set()  # (session id, artifact name) this client has sent
upload_count = 0  # artifacts this client process has uploaded (the benchmark counts crossings)


def ship_bytes(spark, payload: bytes) -> ShippedBytes:
    """`payload` on its way to the executors once, whatever the session kind."""
    sha = hashlib.sha256(payload).hexdigest()
    if not is_connect(spark):
        return ShippedBytes(sha, len(payload), broadcast=spark.sparkContext.broadcast(payload))
    name = f"keras_spark_{sha[:32]}.bin"
    key = (spark.session_id, name)
    if key not in _uploaded:
        global upload_count
        with scratch.scratch_dir("upload_", guard=False) as tmp:  # owned: swept if this process dies
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                f.write(payload)
            spark.addArtifacts(path, file=True)
        _uploaded.add(key)
        upload_count += 1
    return ShippedBytes(sha, len(payload), artifact_name=name)


def _artifact_path(name: str) -> str:
    """Where a Connect session's file artifact lies on an executor (its Python workers start there)."""
    from pyspark import SparkFiles

    candidates = []
    try:
        candidates.append(os.path.join(SparkFiles.getRootDirectory(), name))
    except Exception:  # no SparkFiles root in this worker
        pass
    candidates.append(os.path.abspath(name))
    for path in candidates:
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"keras-spark: the session artifact {name} is not on this executor (looked in "
                            f"{candidates}); was the session's artifact directory cleaned up?")


# -- GPUs (the settings; devices.py does the pinning) ------------------------------------
def _conf_float(spark, key: str) -> float:
    try:
        value = spark.conf.get(key, None)
    except Exception:  # a Connect server that refuses to show a static setting
        return 0.0
    return float(value) if value else 0.0


def task_gpu_amount(spark) -> float:
    """`spark.task.resource.gpu.amount`: the share of a GPU each task's addresses stand for (0: none)."""
    return _conf_float(spark, "spark.task.resource.gpu.amount")


def executor_gpu_amount(spark) -> float:
    """`spark.executor.resource.gpu.amount`: GPUs each executor has (0: the application asked for none)."""
    return _conf_float(spark, "spark.executor.resource.gpu.amount")


def executor_count(spark) -> int | None:
    """Executors of the application: local-cluster's n, `spark.executor.instances`, else the live ones."""
    master = spark.conf.get("spark.master", None) or ""
    cluster = re.fullmatch(r"local-cluster\[\s*(\d+)\s*,\s*\d+\s*,\s*\d+\s*\]", master)
    if cluster:
        return int(cluster.group(1))
    configured = spark.conf.get("spark.executor.instances", None)
    if configured:
        return int(configured)
    if not is_connect(spark):
        infos = spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos()
        return max(0, len(infos) - 1)  # the driver is listed too
    return None


def one_gpu_per_task_profile(spark):
    """A stage-level `ResourceProfile`: each task of the stage takes one whole GPU and the usual cores.

    Only task resources (a TaskResourceProfile): Spark supports it on standalone, YARN and
    Kubernetes without dynamic allocation, on the executors the application already has.
    """
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    cpus = int(spark.conf.get("spark.task.cpus", None) or 1)
    return ResourceProfileBuilder().require(TaskResourceRequests().cpus(cpus).resource("gpu", 1.0)).build


# -- files beside what Spark writes (a saved pipeline stage's model.keras) ---------------
_FILE_CHUNK = 8 << 20


def write_file(spark, path: str, data: bytes) -> None:
    """`data` as the file `path` on the file system Spark's own writers use for that path.

    Classic: Hadoop's FileSystem through the driver's JVM (HDFS, S3A, a Volume, local: any
    scheme Spark can write). Connect (no JVM here): `copyFromLocalToFs`, which uploads the bytes
    and has the server copy them into its default file system; the path must have no scheme,
    and a server whose default file system is local refuses unless it was started with
    `spark.sql.artifact.copyFromLocalToFs.allowDestLocal=true` (Spark's switch for test servers).
    """
    if not is_connect(spark):
        jvm = spark.sparkContext._jvm
        hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
        stream = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).create(hadoop_path, True)
        try:
            for start in range(0, len(data), _FILE_CHUNK):
                stream.write(bytearray(data[start:start + _FILE_CHUNK]))
        finally:
            stream.close()
        return
    destination = path[len("file:"):] if path.startswith("file:") else path
    with scratch.scratch_dir("upload_", guard=False) as tmp:  # owned: swept if this process dies
        local = os.path.join(tmp, os.path.basename(destination.rstrip("/")) or "file")
        with open(local, "wb") as f:
            f.write(data)
        try:
            spark.copyFromLocalToFs(local, destination)
        except Exception as error:
            raise OSError(
                f"keras-spark could not write {path} through Spark Connect (copyFromLocalToFs): {error}. Give a "
                f"path without a scheme on the server's default file system (e.g. /Volumes/..., an HDFS path); a "
                f"server whose default file system is local must be started with "
                f"spark.sql.artifact.copyFromLocalToFs.allowDestLocal=true"
            ) from error


def read_file(spark, path: str) -> bytes:
    """The bytes of the file `path`, read by Spark (`binaryFile`), for classic and Connect sessions alike."""
    row = spark.read.format("binaryFile").load(path).select("content").first()
    if row is None:
        raise FileNotFoundError(f"keras-spark: {path} holds no file")
    return bytes(row[0])

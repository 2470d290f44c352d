"""The executors checked before keras-spark's first Spark job: one clear error instead of a Spark traceback.

`check_executors(spark)` runs a tiny job once per session and worker Python (cached after it
passes): each task tries to import keras_spark and its compiled core, and reports versions or the
error as a row. The task's function is made from source in a module that does not exist anywhere,
so cloudpickle ships it by value and unpickling it on an executor imports nothing of keras-spark.

`worker_python(spark)` is what keras-spark's own jobs run under: on a local master (the workers
run on this machine) where no worker Python was set, the driver's own interpreter, so a script
run as `/path/to/venv/bin/python script.py` without activating the venv works.

KERAS_SPARK_CHECK_EXECUTORS=0 turns the check off.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time

from keras_spark.errors import ExecutorEnvironmentError
from keras_spark.spark import session

_PYTHON_CONFS = ("spark.sql.execution.pyspark.python", "spark.pyspark.python")
_PROBE_SCHEMA = "host string, python string, version string, keras_spark string, core string, keras string, " \
                "backend string, error string"
FIX = ("Install the same keras-spark wheel on every node (pip install keras-spark==VERSION, as a cluster library "
       "on Databricks); or ship a packed environment with it (keras_spark.deploy.ship_environment(spark), or "
       "spark.archives=env.tar.gz#environment with spark.pyspark.python=./environment/bin/python); or point "
       "PYSPARK_PYTHON / spark.pyspark.python at a Python that has it. See docs/deployment.md.")

# The task's source: run on the executor, it must import nothing it cannot find (no keras_spark at module level).
_PROBE_SOURCE = '''
def probe(batches):
    import importlib, importlib.metadata, importlib.util, socket, sys
    import pyarrow as pa

    def version(name):
        try:
            return importlib.metadata.version(name)
        except Exception:
            return ""

    row = {"host": socket.gethostname(), "python": sys.executable, "version": sys.version.split()[0],
           "keras_spark": "", "core": "", "keras": version("keras"), "backend": "", "error": ""}
    try:
        if BACKEND_MODULE:
            row["backend"] = "yes" if importlib.util.find_spec(BACKEND_MODULE) else "no"
        module = importlib.import_module("keras_spark")
        row["keras_spark"] = getattr(module, "__version__", "?") + " at " + str(module.__file__)
        importlib.import_module("keras_spark._core")
        row["core"] = "ok"
    except BaseException as error:
        row["error"] = type(error).__name__ + ": " + str(error)
    for _ in batches:
        pass
    yield pa.RecordBatch.from_pylist([row])
'''

_BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy"}
_passed: set[tuple] = set()
_python_exec_lock = threading.RLock()
last_check_seconds: float | None = None  # how long the last probe job took (None: answered from the cache)


def _probe_function(backend: str | None):
    module = _BACKEND_MODULES.get(backend, backend) if backend else ""
    namespace = {"__name__": "keras_spark_executor_probe", "BACKEND_MODULE": module}
    exec(compile(_PROBE_SOURCE, "<keras-spark executor probe>", "exec"), namespace)  # noqa: S102
    return namespace["probe"]


def _conf(spark, key: str) -> str | None:
    try:
        return spark.conf.get(key, None) or None
    except Exception:  # a Connect server that refuses to show a static setting
        return None


def _session_key(spark) -> str:
    if session.is_connect(spark):
        return spark.session_id
    context = spark.sparkContext  # applicationId asks the JVM: read once per context, kept on it
    if "_keras_spark_app_id" not in context.__dict__:
        context._keras_spark_app_id = context.applicationId
    return context._keras_spark_app_id


def _is_local_master(master: str) -> bool:
    """`local`, `local[N]`, `local[N,F]`, `local[*]`: tasks run in this JVM's machine; local-cluster does not count."""
    return re.fullmatch(r"local(\[[^\]]*\])?", master.strip()) is not None


def driver_python_for_workers(spark) -> str | None:
    """The interpreter keras-spark's jobs should run instead of Spark's default `python3` from PATH, or None.

    The driver's own `sys.executable` on a classic session with a local master where neither
    PYSPARK_PYTHON nor spark.pyspark.python nor spark.sql.execution.pyspark.python chose one;
    None everywhere else (a Connect client cannot know where its server's workers run).
    """
    if session.is_connect(spark) or os.environ.get("PYSPARK_PYTHON"):
        return None
    if not _is_local_master(_conf(spark, "spark.master") or ""):
        return None
    if any(_conf(spark, key) for key in _PYTHON_CONFS):
        return None
    return sys.executable


@contextlib.contextmanager
def worker_python(spark):
    """The Python UDFs made inside this block run under `driver_python_for_workers(spark)` where it is one.

    PySpark writes `SparkContext.pythonExec` into each Python function when the function is made
    (pyspark/sql/udf.py `_wrap_function`), so only keras-spark's own jobs, lazy ones included,
    get the driver's interpreter; the user's UDFs keep Spark's default.
    """
    python = driver_python_for_workers(spark)
    if python is None:
        yield
        return
    context = spark.sparkContext
    with _python_exec_lock:  # threads fitting at once (a CrossValidator) must not restore each other's value
        before = context.pythonExec
        context.pythonExec = python
        try:
            yield
        finally:
            context.pythonExec = before


def _effective_python(spark) -> str:
    """The worker Python keras-spark's jobs get; three conf reads at most (the check's whole cost once cached)."""
    for key in _PYTHON_CONFS:
        value = _conf(spark, key)
        if value:
            return value
    if session.is_connect(spark):
        return "the server's default"
    if not os.environ.get("PYSPARK_PYTHON") and _is_local_master(_conf(spark, "spark.master") or ""):
        return sys.executable  # as driver_python_for_workers, whose conf reads were just made
    return spark.sparkContext.pythonExec


def check_executors(spark, backend: str | None = None) -> None:
    """Raise `ExecutorEnvironmentError` unless the executors can run keras-spark as this driver does.

    Args:
        spark: a classic or Spark Connect `SparkSession`.
        backend: the Keras backend the executors' tasks run the model under (predict, num_workers > 1):
            Keras no older than the driver's and that backend must be there too. None (the Spark pass of
            fit and evaluate, whose tasks only write the cache): keras-spark and its core only.

    Runs one small job (one task per task slot) the first time for a session, worker Python and
    backend; later calls are a lookup. Each task reports its host, Python, keras-spark and Keras
    versions; the driver compares them with its own.
    """
    global last_check_seconds
    if os.environ.get("KERAS_SPARK_CHECK_EXECUTORS", "1") == "0":
        return
    key = (_session_key(spark), _effective_python(spark), backend)
    if key in _passed:
        last_check_seconds = None
        return
    started = time.perf_counter()
    rows = _run_probe(spark, backend, key[1])
    last_check_seconds = time.perf_counter() - started
    problems = [p for p in (_problem(row, backend) for row in rows) if p]
    if problems:
        raise ExecutorEnvironmentError(_message(problems, key[1]))
    _passed.add(key)


@contextlib.contextmanager
def _own_job_group(spark):
    """The probe's job in a group of its own (named in the Spark UI), not in the caller's."""
    if session.is_connect(spark):
        yield
        return
    context = spark.sparkContext
    saved = {key: context.getLocalProperty(key) for key in ("spark.jobGroup.id", "spark.job.description",
                                                              "spark.job.interruptOnCancel")}
    context.setJobGroup("keras-spark-executor-check", "keras-spark: can the executors import keras_spark?")
    try:
        yield
    finally:
        for key, value in saved.items():
            context.setLocalProperty(key, value)


def _run_probe(spark, backend: str | None, python: str) -> list[dict]:
    # One task per slot reaches most executors; a scheduler may still put two tasks on one.
    slots = max(1, min(session.task_slots(spark), 64))
    with worker_python(spark):
        frame = spark.range(0, slots, 1, slots).mapInArrow(_probe_function(backend), _PROBE_SCHEMA)
    try:
        with _own_job_group(spark):
            rows = frame.collect()
        return [row.asDict() for row in rows]
    except Exception as error:  # the worker itself could not start: no such Python, no pyarrow, another PySpark
        raise ExecutorEnvironmentError(
            f"keras-spark could not run its check on the executors with the worker Python {python!r}: "
            f"{_root_cause(error)}. {FIX.replace('VERSION', _driver_version())}") from None


def _root_cause(error: Exception) -> str:
    """The line of a Spark error that says what failed: the Python error raised last, or why no worker started."""
    text = str(error)
    no_program = re.search(r'Cannot run program "[^"]*"[^\n]*', text)
    if no_program:
        return no_program.group(0)[:500]
    found = re.findall(r"^\s*(?:Caused by: )?((?:[\w$]+\.)*\w*(?:Error|Exception)\b:[^\n]*)", text, flags=re.MULTILINE)
    line = found[-1] if found else (text.strip().splitlines() or [type(error).__name__])[0]
    return line[:500]


def _driver_version() -> str:
    import keras_spark

    return keras_spark.__version__


def _problem(row: dict, backend: str | None) -> str | None:
    """What is wrong on one executor, in words, or None."""
    where = f"executor on host {row['host']} (Python {row['version']} at {row['python']})"
    if not row["keras_spark"]:
        return f"{where}: cannot import keras_spark: {row['error']}"
    version = row["keras_spark"].split(" at ")[0]
    if version != _driver_version():  # the pass's and the scoring's code are the driver's: one version
        return f"{where}: keras-spark {row['keras_spark']}, but the driver has {_driver_version()}"
    if row["error"]:
        return f"{where}: keras_spark {row['keras_spark']} is there but its compiled core fails to load: {row['error']}"
    return _keras_problem(row, backend, where) if backend else None


def _keras_problem(row: dict, backend: str, where: str) -> str | None:
    import keras
    if not row["keras"]:
        return f"{where}: Keras is not installed"
    if _major_minor(row["keras"]) < _major_minor(keras.__version__):
        return (f"{where}: Keras {row['keras']} is older than the driver's {keras.__version__} and may not load "
                f"the model the driver saves")
    if row["backend"] != "yes":
        return f"{where}: the Keras backend {backend!r} (the driver's) is not installed"
    return None


def _major_minor(version: str) -> tuple[int, int]:
    parts = re.findall(r"\d+", version)[:2]
    return tuple(int(p) for p in parts) + (0,) * (2 - len(parts))  # type: ignore[return-value]


def _message(problems: list[str], python: str) -> str:
    unique = list(dict.fromkeys(problems))
    shown = "\n  - ".join(unique[:8]) + (f"\n  - ... and {len(unique) - 8} more" if len(unique) > 8 else "")
    return (f"keras-spark cannot run on the executors (worker Python: {python}):\n  - {shown}\n"
            f"{FIX.replace('VERSION', _driver_version())}")

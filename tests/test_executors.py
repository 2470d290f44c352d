"""Executors checked before keras-spark's first job: one clear ExecutorEnvironmentError, not a Spark traceback.

The worker Python is switched per query with `spark.sql.execution.pyspark.python`, so these tests share
the suite's classic session; each wrapper below is a Python that lacks keras_spark or has another one.
"""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from keras_spark.errors import ExecutorEnvironmentError
from keras_spark.spark import executors

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(executors.__file__))))
WORKER_PYTHON = "spark.sql.execution.pyspark.python"

pytestmark = [pytest.mark.backend_independent, pytest.mark.session_independent]


def _wrapper(tmp_path, name: str, prelude: str) -> str:
    """An executable that runs this interpreter after `prelude` (a shell line) changed its environment."""
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{prelude}\nexec {sys.executable} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def _without_src(tmp_path) -> str:
    """A Python whose `import keras_spark` fails as where it is not installed (installed here or on PYTHONPATH)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys

        class NoKerasSpark:
            def find_spec(self, name, path=None, target=None):
                if name == "keras_spark" or name.startswith("keras_spark."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, NoKerasSpark())
    """))
    return _wrapper(tmp_path, "python_without_keras_spark", f'export PYTHONPATH="{blocker}:$PYTHONPATH"')


@pytest.fixture
def worker_python(spark):
    """Sets the session's worker Python for one test; the check's cache is emptied before and after."""
    def use(python: str):
        spark.conf.set(WORKER_PYTHON, python)
    executors._passed.clear()
    yield use
    spark.conf.unset(WORKER_PYTHON)
    executors._passed.clear()


def test_executor_without_keras_spark_is_named_with_its_host_and_the_fix(spark, worker_python, tmp_path):
    worker_python(_without_src(tmp_path))
    started = time.perf_counter()
    with pytest.raises(ExecutorEnvironmentError) as caught:
        executors.check_executors(spark)
    message = str(caught.value)
    assert "cannot import keras_spark" in message and "No module named 'keras_spark'" in message
    assert "executor on host" in message and "python_without_keras_spark" in message
    assert "pip install keras-spark==" in message and "PYSPARK_PYTHON" in message and "ship_environment" in message
    print(f"clear error after {time.perf_counter() - started:.2f} s")


def test_executor_with_another_keras_spark_version_is_refused(spark, worker_python, tmp_path):
    other = tmp_path / "other" / "keras_spark"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text('__version__ = "0.0.1"\n')
    worker_python(_wrapper(tmp_path, "python_other_version", f'export PYTHONPATH="{other.parent}:$PYTHONPATH"'))
    with pytest.raises(ExecutorEnvironmentError, match=r"keras-spark 0\.0\.1 at .*, but the driver has 0\."):
        executors.check_executors(spark)


def test_executor_python_that_cannot_start_a_worker_is_one_clear_error(spark, worker_python):
    worker_python("/nonexistent/bin/python3")
    with pytest.raises(ExecutorEnvironmentError, match="could not run its check on the executors with the "
                                                       "worker Python '/nonexistent/bin/python3'"):
        executors.check_executors(spark)


def test_check_passes_once_then_costs_a_lookup(spark, worker_python):
    worker_python(sys.executable)
    executors.check_executors(spark, "tensorflow")
    first = executors.last_check_seconds
    assert first is not None
    started = time.perf_counter()
    executors.check_executors(spark, "tensorflow")
    cached = time.perf_counter() - started
    assert executors.last_check_seconds is None and cached < 0.1
    print(f"first check {first:.2f} s, then {cached * 1e3:.1f} ms")


def test_fit_on_executors_without_keras_spark_raises_before_the_spark_pass(spark, worker_python, tmp_path):
    import keras

    from keras_spark.models import KerasSparkModel

    worker_python(_without_src(tmp_path))
    df = spark.createDataFrame([(float(i), float(i), 0) for i in range(8)], "feature1 double, label1 double, "
                                                                            "partition_id int")
    inputs = keras.Input((1,), name="feature1")
    model = KerasSparkModel(inputs, keras.layers.Dense(1, name="label1")(inputs))
    model.compile("adam", "mse")
    with pytest.raises(ExecutorEnvironmentError, match="cannot import keras_spark"):
        model.fit(df, batch_size=4, epochs=1, verbose=0)


@pytest.mark.parametrize("row, problem", [
    (dict(keras_spark="0.1.0 at /x", keras="2.15.0", backend="yes"), "Keras 2.15.0 is older than the driver's"),
    (dict(keras_spark="0.1.0 at /x", keras="", backend=""), "Keras is not installed"),
    (dict(keras_spark="0.1.0 at /x", keras="9.0.0", backend="no"), "backend 'jax' (the driver's) is not installed"),
    (dict(keras_spark="0.1.0 at /x", keras="9.0.0", backend="yes"), None),
])
def test_what_scoring_executors_need_beyond_keras_spark(row, problem, monkeypatch):
    monkeypatch.setattr(executors, "_driver_version", lambda: "0.1.0")
    full = dict(host="node-7", python="/usr/bin/python3", version="3.11.2", core="ok", error="", **row)
    found = executors._problem(full, "jax")
    assert found == problem if problem is None else problem in found and "node-7" in found


def test_a_local_master_gives_keras_spark_jobs_the_driver_python(tmp_path):
    """An unactivated venv's script: PATH's python3 cannot run the jobs, yet fit and predict work.

    .ci/wheel runs the quickstart so from a venv with the wheel installed.
    """
    script = tmp_path / "unactivated.py"
    script.write_text(textwrap.dedent("""
        import keras
        from pyspark.sql import SparkSession
        from keras_spark.models import KerasSparkModel

        spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
        df = spark.createDataFrame([(float(i), float(i), 0) for i in range(20)],
                                   "feature1 double, label1 double, partition_id int")
        inputs = keras.Input((1,), name="feature1")
        model = KerasSparkModel(inputs, keras.layers.Dense(1, name="label1")(inputs))
        model.compile("adam", "mse")
        model.fit(df, batch_size=5, epochs=1, verbose=0)
        assert model.predict(df).count() == 20
        print("OK", spark.sparkContext.pythonExec)
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON",
                                                             "VIRTUAL_ENV", "SPARK_REMOTE",
                                                             "SPARK_CONNECT_MODE_ENABLED")}
    # PATH's python3 has no pyarrow (or is none at all): Spark's default worker could not run keras-spark's jobs.
    env.update(PATH="/usr/bin:/bin", PYTHONPATH=SRC)
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OK python3" in done.stdout  # Spark's default stayed for the user's own UDFs


@pytest.mark.parametrize("spark_error, shown", [
    ('An error occurred while calling o116.collectToPython.\n: org.apache.spark.SparkException: Job aborted\n'
     'Caused by: java.io.IOException: Cannot run program "/no/python3": error=2, No such file or directory\n',
     'Cannot run program "/no/python3": error=2, No such file or directory'),
    ("PythonException: \n  Traceback (most recent call last):\n    import pyarrow\n"
     "ModuleNotFoundError: No module named 'pyarrow'\n\n\tat org.apache.spark.api.python.X",
     "ModuleNotFoundError: No module named 'pyarrow'"),
])
def test_a_failed_check_job_is_told_by_its_cause_not_its_trace(spark_error, shown):
    assert executors._root_cause(Exception(spark_error)) == shown

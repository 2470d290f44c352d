"""The environment shipped: a packed venv with keras-spark as `spark.archives`-style archive on a cluster.

A lean venv (keras-spark, Keras, JAX, pyarrow, pandas, venv-pack; no PySpark: Spark gives its workers
its own) is made and packed once for the run, by keras_spark.deploy.pack_environment run in it. A
driver on `local-cluster[1,1,1024]` whose executors would otherwise start PATH's python3 (one without
keras_spark) first gets the clear ExecutorEnvironmentError, then ships the archive and fits and predicts.
KERAS_SPARK_TEST_WHEEL=path/to.whl installs that wheel into the venv (.ci/wheel's); by default the
checkout's built package directory is copied in, as the wheel would install it.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.backend_independent


def _package_dir() -> str:
    """keras_spark as this test process imports it: installed (with its core) or a checkout's src/ with a built core."""
    import keras_spark

    return os.path.dirname(os.path.abspath(keras_spark.__file__))


SRC = os.path.dirname(_package_dir())  # what the test's driver scripts put first on sys.path


def _pip(venv, *args):
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--only-binary", ":all:", *args],
                   check=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=900)


# Session scope: pytest runs the classic-session tests of every module, then the Connect ones, then the rest,
# so a module-scoped fixture would be made again each time the run comes back to this module.
@pytest.fixture(scope="session")
def packed_env(tmp_path_factory):
    """(archive path, figures) for a lean venv with keras-spark, packed by keras_spark.deploy.pack_environment."""
    import jax
    import keras
    import pyarrow

    root = tmp_path_factory.mktemp("packed")
    venv = root / "venv"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    _pip(venv, f"keras=={keras.__version__}", f"jax=={jax.__version__}", f"jaxlib=={jax.__version__}",
         f"pyarrow=={pyarrow.__version__}", "pandas<3", "venv-pack")
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = subprocess.run([str(venv / "bin" / "python"), "-c", where], check=True, capture_output=True,
                          text=True).stdout.strip()
    wheel = os.environ.get("KERAS_SPARK_TEST_WHEEL")
    if wheel:
        _pip(venv, "--no-deps", wheel)
    else:
        shutil.copytree(_package_dir(), os.path.join(site, "keras_spark"),
                        ignore=shutil.ignore_patterns("__pycache__"))
    installed = time.perf_counter()
    archive = root / "keras_spark_env.tar.gz"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(venv / "bin" / "python"), "-c",
                    f"from keras_spark.deploy import pack_environment; pack_environment({str(archive)!r})"],
                   check=True, env=env, timeout=900)
    figures = dict(install_s=installed - started, pack_s=time.perf_counter() - installed,
                   archive_mb=archive.stat().st_size / 1e6)
    print(f"packed env: {figures}")
    return str(archive), figures


@pytest.mark.session_independent  # its own driver and local-cluster, in a subprocess
def test_a_shipped_environment_runs_fit_and_predict_on_executors_without_keras_spark(packed_env, tmp_path):
    archive, figures = packed_env
    script = tmp_path / "cluster_driver.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys, time
        sys.path.insert(0, {SRC!r})  # the driver only: executors get no PYTHONPATH to this checkout
        import keras
        from pyspark.sql import SparkSession
        from keras_spark.deploy import ship_environment
        from keras_spark.errors import ExecutorEnvironmentError
        from keras_spark.models import KerasSparkModel

        spark = (SparkSession.builder.master("local-cluster[1,1,1024]").config("spark.ui.enabled", "false")
                 .config("spark.executor.memory", "1g").getOrCreate())
        df = spark.createDataFrame([(float(i), 2.0 * i, i % 2) for i in range(40)],
                                   "feature1 double, label1 double, partition_id int")
        inputs = keras.Input((1,), name="feature1")
        model = KerasSparkModel(inputs, keras.layers.Dense(1, name="label1")(inputs))
        model.compile("adam", "mse")
        figures = {{}}
        started = time.perf_counter()
        try:
            model.fit(df, batch_size=8, epochs=1, verbose=0)
            raise SystemExit("fit ran on executors whose python3 has no keras_spark")
        except ExecutorEnvironmentError as error:
            figures["clear_error_s"] = time.perf_counter() - started
            figures["error"] = str(error)
        started = time.perf_counter()
        figures["python"] = ship_environment(spark, {archive!r})
        model.fit(df, batch_size=8, epochs=2, verbose=0)
        figures["first_fit_s"] = time.perf_counter() - started
        started = time.perf_counter()
        rows = model.predict(df).select("model_output.label1").collect()
        figures["predict_s"] = time.perf_counter() - started
        assert len(rows) == 40 and all(isinstance(r["label1"], float) for r in rows)
        print("FIGURES " + json.dumps(figures))
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON",
                                                             "VIRTUAL_ENV", "SPARK_REMOTE",
                                                             "SPARK_CONNECT_MODE_ENABLED")}
    env.update(PATH="/usr/bin:/bin", KERAS_BACKEND="jax")  # the executors' python3: PATH's, without keras_spark
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    shown = json.loads(done.stdout.split("FIGURES ", 1)[1].splitlines()[0])
    assert shown["python"] == "./environment/bin/python"
    assert "cannot import keras_spark" in shown["error"] or "could not run its check" in shown["error"]
    print({**figures, **{k: v for k, v in shown.items() if k != "error"}})


def test_a_shipped_environment_over_spark_connect_runs_keras_spark_jobs_in_it(spark, packed_env, request):
    """Over Connect the archive is a session artifact, unpacked where the session's Python workers start.

    A session of the test's own (its artifacts go with it: the suite's shared session must not carry a
    277 MB archive into every session Spark clones from it). keras-spark's executor check then runs in
    `./environment/bin/python`, which starts only where the archive was unpacked, and a fit runs.
    """
    import keras
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    from keras_spark.deploy import ship_environment
    from keras_spark.models import KerasSparkModel
    from keras_spark.spark import executors
    from keras_spark.spark.session import is_connect

    if not is_connect(spark):
        pytest.skip("the classic route is test_a_shipped_environment_runs_fit_and_predict_on_executors_...")
    archive, _ = packed_env
    own = ConnectSession.builder.remote(request.getfixturevalue("connect_server").url).create()
    try:
        assert ship_environment(own, archive) == "./environment/bin/python"
        rows = executors._run_probe(own, None, "./environment/bin/python")
        assert rows and all(row["python"].endswith("environment/bin/python") for row in rows), rows
        assert all(row["core"] == "ok" for row in rows), rows  # keras_spark and its core import in the shipped env
        df = own.createDataFrame([(float(i), 2.0 * i, i % 2) for i in range(40)],
                                 "feature1 double, label1 double, partition_id int")
        inputs = keras.Input((1,), name="feature1")
        model = KerasSparkModel(inputs, keras.layers.Dense(1, name="label1")(inputs))
        model.compile("adam", "mse")
        model.fit(df, batch_size=8, epochs=1, verbose=0)
        assert model.data_stats["rows"] == 40
    finally:
        own.stop()
        executors._passed.clear()

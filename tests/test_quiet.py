"""Quiet by default: the backend's C++ start-up lines are dropped, everything else on stderr is kept."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from keras_spark import quiet

pytestmark = pytest.mark.backend_independent

NOISE = (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
         b"I0000 00:00:1796203055.836586   11174 port.cc:153] oneDNN custom operations are on. You may see\n"
         b"I0000 00:00:1796203055.836831   11174 cudart_stub.cc:31] Could not find cuda drivers on your machine\n"
         b"E0000 00:00:1796203309.731430   20022 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n")


def test_start_up_lines_are_dropped_and_other_lines_kept_in_order(capfd, monkeypatch):
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    with quiet.start_up_lines_dropped():
        os.write(2, b"before\n" + NOISE + b"E0000 00:00:1.0 1 foo.cc:1] a real error\nafter\n")
    assert capfd.readouterr().err == "before\nE0000 00:00:1.0 1 foo.cc:1] a real error\nafter\n"


def test_keras_spark_verbose_keeps_every_line(capfd, monkeypatch):
    monkeypatch.setenv(quiet.VERBOSE_ENV, "1")
    with quiet.start_up_lines_dropped():
        os.write(2, NOISE)
    assert capfd.readouterr().err == NOISE.decode()


SMALL_FIT = textwrap.dedent("""
    import os, sys
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from keras_spark.models import KerasSparkModel
    import keras
    from pyspark.sql import SparkSession, functions as F
    spark = (SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false").getOrCreate())
    df = spark.range(64).select((F.col("id") / 64.0).cast("float").alias("x"), (F.col("id") / 32.0).alias("y"))
    x = keras.Input((1,), name="x")
    model = KerasSparkModel(x, keras.layers.Dense(1, name="y")(x))
    model.compile("sgd", "mse")
    model.fit(df, batch_size=16, epochs=1, verbose=0)
    print("scored", model.predict(df).count())
    spark.stop()
""")


def test_a_small_fit_and_predict_print_no_tensorflow_start_up_lines(tmp_path):
    env = {k: v for k, v in os.environ.items()  # a local session of its own, whatever session the suite is on
           if k not in ("TF_CPP_MIN_LOG_LEVEL", quiet.VERBOSE_ENV, "SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED")}
    env.update(KERAS_BACKEND="tensorflow", PYTHONPATH=os.pathsep.join([str(Path(quiet.__file__).parents[1])]
                                                                       + sys.path))
    done = subprocess.run([sys.executable, "-c", SMALL_FIT], env=env, cwd=tmp_path, capture_output=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert b"scored 64" in done.stdout
    for marker in (b"absl::InitializeLog", b"oneDNN", b"cuda drivers", b"cuInit", b"cudart_stub"):
        assert marker not in done.stderr, done.stderr.decode()

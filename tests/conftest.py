"""The `spark` fixture: every Spark test runs on a classic local[2] session and on a Spark Connect session.

The Connect session talks to one server started for the whole run (PySpark's own
start-connect-server.sh, --master local[2]); where the machine allows it, the server
has a private /tmp that the client cannot see, as on a remote cluster
(tests/connect_server.py). KERAS_SPARK_TEST_SESSIONS=classic (or connect) runs one kind.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable

import pytest  # noqa: E402

# Which tests run where (tests/README.md): the suite runs once per Keras backend and, for Spark tests,
# once per kind of session. A test whose outcome cannot depend on the backend says so with
# `backend_independent` and runs in the PRIMARY_BACKEND pass only; a Spark test whose outcome cannot
# depend on the kind of session says so with `session_independent` and runs on the classic session only.
# What a Connect session changes (how rows travel, how the model ships, how errors come back) is the
# same whatever the backend, so Spark tests run on Connect in the PRIMARY_BACKEND pass; a test where the
# backend and the session meet (fit, predict and num_workers through Connect: test_connect.py) says so
# with `connect_every_backend` and runs on Connect in every pass.
PRIMARY_BACKEND = "tensorflow"
MARKERS = {
    "backend_independent": f"the outcome cannot depend on the Keras backend: runs in the {PRIMARY_BACKEND} pass only",
    "session_independent": "the outcome cannot depend on the kind of Spark session: runs on the classic session only",
    "connect_every_backend": f"runs on the Connect session in every backend's pass (other Spark tests run on "
                             f"Connect in the {PRIMARY_BACKEND} pass)",
}

SPARK_CONF = {
    "spark.sql.shuffle.partitions": "4",
    "spark.driver.memory": "2g",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "2000",
}
SESSION_KINDS = [k for k in os.environ.get("KERAS_SPARK_TEST_SESSIONS", "classic,connect").split(",") if k]


def pytest_configure(config):
    for name, meaning in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")


def _runs_here(item) -> bool:
    primary = os.environ["KERAS_BACKEND"] == PRIMARY_BACKEND
    if item.get_closest_marker("backend_independent") and not primary:
        return False
    params = getattr(item, "callspec", None) and item.callspec.params
    if not (params and params.get("spark") == "connect"):
        return True
    if item.get_closest_marker("session_independent"):
        return False
    return primary or item.get_closest_marker("connect_every_backend") is not None


def pytest_collection_modifyitems(config, items):
    """Deselect what another pass covers (see MARKERS); pytest's summary counts them as deselected."""
    elsewhere = [item for item in items if not _runs_here(item)]
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        items[:] = [item for item in items if _runs_here(item)]


def pytest_report_header(config):
    return [f"keras-spark: backend {os.environ['KERAS_BACKEND']}; sessions {','.join(SESSION_KINDS)}; "
            f"backend_independent tests run under {PRIMARY_BACKEND} only, session_independent ones on classic only, "
            f"Connect runs under {PRIMARY_BACKEND} and, for connect_every_backend tests, every backend"]


@pytest.fixture(scope="session")
def connect_server():
    """One Spark Connect server for the whole run, stopped at its end."""
    from connect_server import start_connect_server

    # A test server's default file system is local: let copyFromLocalToFs write there (saved pipelines'
    # model.keras, keras_spark.spark.session.write_file), as Spark allows for test servers only.
    server = start_connect_server(conf={**SPARK_CONF, "spark.sql.artifact.copyFromLocalToFs.allowDestLocal": "true"})
    yield server
    server.stop()


def _classic_session():
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master("local[2]").appName("keras-spark-tests").config("spark.ui.enabled", "false")
    for key, value in SPARK_CONF.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


@pytest.fixture(scope="session", params=SESSION_KINDS)
def spark(request):
    """A classic local[2] SparkSession, then a Spark Connect session (pytest runs each kind's tests together)."""
    if request.param == "classic":
        session = _classic_session()
        yield session
        session.stop()
        return
    server = request.getfixturevalue("connect_server")
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    # pyspark.sql.functions dispatch to their Connect versions only while this is set.
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    os.environ["SPARK_REMOTE"] = server.url  # SparkSession.builder.getOrCreate() in a test gets this server
    session = ConnectSession.builder.remote(server.url).getOrCreate()
    try:
        yield session
    finally:
        session.stop()
        os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)
        os.environ.pop("SPARK_REMOTE", None)


@pytest.fixture
def classic_spark(spark):
    """`spark` where the test reads the SparkContext itself (no Connect equivalent exists)."""
    from keras_spark.spark.session import is_connect

    if is_connect(spark):
        pytest.skip("reads SparkContext job counts, which a Spark Connect client cannot see")
    return spark


@pytest.fixture
def isolated_connect(spark, request):
    """`spark` where it is a Connect session to a server whose /tmp the client cannot see."""
    from connect_server import can_isolate

    from keras_spark.spark.session import is_connect

    if not is_connect(spark):
        pytest.skip("a classic session shares the client's file system by construction")
    connect_server = request.getfixturevalue("connect_server")
    if not connect_server.isolated:
        pytest.skip(f"this machine cannot give the Connect server a private /tmp: {can_isolate()}")
    return spark


@pytest.fixture(autouse=True)
def _seeded():
    import keras

    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture(scope="session")
def moto_s3_endpoint():
    """A real S3 API for the whole run: moto's threaded server on 127.0.0.1, a free port (as s3fs tests)."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_s3_endpoint, monkeypatch, request):
    """`s3://<a new bucket>` on the moto server, with the AWS variables a user of S3 would set."""
    import re
    import uuid

    import pyarrow.fs as pafs

    for name, value in {"AWS_ENDPOINT_URL": moto_s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    scheme, _, endpoint = moto_s3_endpoint.partition("://")
    pafs.S3FileSystem(endpoint_override=endpoint, scheme=scheme, region="us-east-1",
                     allow_bucket_creation=True).create_dir(bucket)
    return f"s3://{bucket}"

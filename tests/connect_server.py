"""A Spark Connect server for tests and benchmarks: PySpark's own start-connect-server.sh.

Where the machine allows it (root and `unshare`), the server runs in its own mount
namespace with a private tmpfs on /tmp: its executors cannot see the client's /tmp,
as on a remote cluster. Elsewhere it runs as a plain local process (`isolated` False).
Its Python workers import keras_spark from wherever this process imports it (the
checkout under test, or the installed package in CI).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass


@dataclass
class ConnectServer:
    """A running server: `url` for `SparkSession.builder.remote`, `isolated` if its /tmp is private."""

    url: str
    isolated: bool
    process: subprocess.Popen
    log_path: str
    scratch: str

    def stop(self) -> None:
        """Stop the server and every process it started (it leads its own process group)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def log_tail(self, chars: int = 4000) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-chars:]


def can_isolate() -> str | None:
    """None if a private /tmp can be made here; otherwise why not."""
    if shutil.which("unshare") is None:
        return "the unshare command is not installed"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs tmpfs /tmp"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot make a private /tmp (unshare -m + tmpfs needs root): {probe.stderr.strip()[:200]}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _package_path() -> str:
    import keras_spark

    return os.path.dirname(os.path.dirname(os.path.abspath(keras_spark.__file__)))


def start_connect_server(*, master: str = "local[2]", conf: dict[str, str] | None = None, isolate: bool = True,
                         timeout_s: float = 120.0) -> ConnectServer:
    """Start a Connect server on a free port and wait until it answers."""
    import pyspark

    script = os.path.join(os.path.dirname(pyspark.__file__), "sbin", "start-connect-server.sh")
    port = _free_port()
    settings = {"spark.connect.grpc.binding.port": str(port), "spark.ui.enabled": "false", **(conf or {})}
    args = [script, "--wait", "--master", master]
    for key, value in settings.items():
        args += ["--conf", f"{key}={value}"]
    # Kept outside /tmp so the client can read the log of an isolated server.
    scratch = tempfile.mkdtemp(prefix="keras_spark_connect_", dir=os.path.expanduser("~"))
    env = dict(
        os.environ,
        PYSPARK_PYTHON=sys.executable,
        PYTHONPATH=os.pathsep.join(p for p in (_package_path(), os.environ.get("PYTHONPATH")) if p),
        SPARK_LOG_DIR=scratch, SPARK_PID_DIR=scratch, SPARK_NO_DAEMONIZE="1",
    )
    env.pop("SPARK_CONNECT_MODE_ENABLED", None)
    env.pop("SPARK_REMOTE", None)
    isolated = isolate and can_isolate() is None
    if isolated:
        quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)
        command = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   f"mount -t tmpfs tmpfs /tmp && exec {quoted}"]
    else:
        command = args
    log_path = os.path.join(scratch, "server.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = ConnectServer(f"sc://127.0.0.1:{port}", isolated, process, log_path, scratch)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = server.log_tail()
            server.stop()
            raise RuntimeError(f"the Spark Connect server exited with {process.returncode}:\n{tail}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return server
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"the Spark Connect server did not listen on port {port} within {timeout_s:.0f}s")

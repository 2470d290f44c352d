"""A Spark Connect server for tests and benchmarks: PySpark's own start-connect-server.sh.

Where the machine allows it (root and `unshare`), the server runs in its own mount
namespace with a private tmpfs on /tmp: its executors cannot see the client's /tmp,
as on a remote cluster. What a cluster node would have installed stays visible even
when it lives under /tmp (a venv or a checkout made there): the Python prefix, its
site-packages, PySpark, Java, keras_spark and PYTHONPATH are bound back in (`mount_plan`).
Elsewhere it runs as a plain local process (`isolated` False). Its Python workers import
keras_spark from wherever this process imports it (the checkout under test, or the
installed package in CI).
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


def installed_paths() -> list[str]:
    """What a cluster node has installed, as this process sees it: Python and its packages, PySpark,
    Java and keras_spark (never the client's scratch, which is what isolation hides)."""
    import site

    import pyspark

    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)),
             *site.getsitepackages(), os.path.dirname(pyspark.__file__), _package_path(),
             os.environ.get("JAVA_HOME"), os.environ.get("SPARK_HOME"),
             *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return [p for p in paths if p]


HIDDEN = "/tmp"  # what an isolated server does not share with its client, as a remote cluster would not


def shared_scratch(prefix: str) -> str:
    """A new directory both the client and an isolated server see: in the checkout, or in the home
    directory where the checkout itself lies under the hidden /tmp (whatever TMPDIR says)."""
    import tempfile
    from pathlib import Path

    checkout = Path(__file__).resolve().parent.parent
    under_hidden = checkout.is_relative_to(Path(HIDDEN).resolve())
    return tempfile.mkdtemp(prefix=prefix, dir=Path.home() if under_hidden else checkout)


def mount_plan(keep: list[str], hold: str, tmp: str = HIDDEN) -> list[str]:
    """Shell commands, run in the server's mount namespace, that put a private tmpfs on `tmp` and bind
    the `keep` paths under it back in (seen through `hold`, a bind of the old `tmp` outside it)."""
    tmp = os.path.realpath(tmp)
    inside = sorted({os.path.realpath(p) for p in keep if os.path.realpath(p).startswith(tmp + os.sep)})
    inside = [p for p in inside if not any(p.startswith(q + os.sep) for q in inside)]  # a parent binds its children
    if not inside:
        return [f"mount -t tmpfs tmpfs {_quote(tmp)}"]
    plan = [f"mount --bind {_quote(tmp)} {_quote(hold)}", f"mount -t tmpfs tmpfs {_quote(tmp)}"]
    for path in inside:
        plan += [f"mkdir -p {_quote(path)}", f"mount --bind {_quote(hold + path[len(tmp):])} {_quote(path)}"]
    return plan + [f"umount -l {_quote(hold)}"]  # the rest of the old /tmp is out of reach again


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


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
        hold = os.path.join(scratch, "host_tmp")
        os.mkdir(hold)
        plan = " && ".join(mount_plan(installed_paths(), hold))
        command = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   f"{plan} && exec {' '.join(_quote(a) for a in args)}"]
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

"""Every directory keras-spark makes: one owner each, removed however its owner ends.

A scratch directory (the driver's training cache, a data-parallel worker's cache on an
executor) is made only by `make_dir`, which

- writes an owner file into it: host, boot id, pid and the pid's start time, so a
  later process can tell whether the owner still runs (a reused pid is not the owner);
- starts a guardian: a tiny stdlib-only process holding the read end of a pipe whose
  write end only the owner holds. When the owner ends in any way (success, exception,
  SIGTERM, SIGKILL, a Spark executor killing its Python worker) the pipe closes and
  the guardian removes the directory if it is still there;
- first sweeps the same parent of `keras_spark_*` directories whose owner is gone
  (a guardian that was itself killed, a machine that rebooted with the cache on disk).

`remove` is the normal way out; `remove_owned` (at exit and on SIGTERM, see `shutdown`)
removes whatever this process still owns. Directories of other hosts (a shared file
system) and directories without an owner file are never touched.

This file imports only the standard library: it runs as the guardian script itself.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

PREFIX = "keras_spark_"
OWNER_FILE = ".keras_spark_owner.json"
# An executor may still be creating files in it while we remove it: retry (the guardian longer,
# as the owner's Spark tasks may outlive it by seconds).
_REMOVE_ATTEMPTS = 20
_GUARDIAN_REMOVE_ATTEMPTS = 300


@dataclass(frozen=True)
class Owner:
    """Who made a directory: enough to tell, later and on the same host, whether it still runs."""

    host: str
    boot: str | None
    pid: int
    start: str | None  # the pid's start time in clock ticks since boot (Linux), else None

    @classmethod
    def of_process(cls, pid: int) -> Owner:
        """The owner token of a running process of this host."""
        return cls(socket.gethostname(), _boot_id(), pid, _start_time(pid))

    @classmethod
    def current(cls) -> Owner:
        return cls.of_process(os.getpid())

    def is_alive(self) -> bool:
        """False only when certain: same host, and the pid is gone, reused, a zombie or of an earlier boot."""
        if self.host != socket.gethostname():
            return True  # another machine's process: we cannot tell
        boot = _boot_id()
        if self.boot and boot and self.boot != boot:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, another user's
        start = _start_time(self.pid)
        if start == "zombie":
            return False
        return not (self.start and start and self.start != start)


def _boot_id() -> str | None:
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()
    return None


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat ("zombie" for a dead, unreaped process); None without /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the name in parentheses may hold spaces
    return "zombie" if fields[0] in ("Z", "X") else fields[19]


@dataclass
class _Held:
    pid: int  # the process that made it (a forked child inherits the table, not the ownership)
    guardian: subprocess.Popen | None


_held: dict[str, _Held] = {}


def make_dir(kind: str = "", parent: str | None = None, *, guard: bool = True) -> str:
    """A new directory `<parent>/keras_spark_<kind>XXXX` owned by this process.

    `parent` defaults to the temporary directory (TMPDIR) and is created if missing.
    Remove it with `remove`; if this process dies first, its guardian (or a later
    `make_dir` in the same parent) removes it.
    """
    parent = parent or tempfile.gettempdir()
    os.makedirs(parent, exist_ok=True)
    sweep(parent)
    path = tempfile.mkdtemp(prefix=PREFIX + kind, dir=parent)
    with open(os.path.join(path, OWNER_FILE), "w") as f:
        json.dump(asdict(Owner.current()), f)
    _held[path] = _Held(os.getpid(), _start_guardian(path) if guard else None)
    return path


@contextlib.contextmanager
def scratch_dir(kind: str = "", parent: str | None = None, *, guard: bool = True) -> Iterator[str]:
    """`make_dir` for the length of a `with` block (`guard=False` for brief ones: a later sweep suffices)."""
    path = make_dir(kind, parent, guard=guard)
    try:
        yield path
    finally:
        remove(path)


def remove(path: str) -> None:
    """Delete a directory made by `make_dir`, and let its guardian go."""
    _remove_tree(path)
    held = _held.pop(path, None)
    if held is not None and held.guardian is not None and held.pid == os.getpid():
        with contextlib.suppress(OSError):
            held.guardian.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            held.guardian.wait(timeout=5)


def remove_owned() -> list[str]:
    """Delete every directory this process made and still holds (at exit, on SIGTERM)."""
    mine = [path for path, held in _held.items() if held.pid == os.getpid()]
    for path in mine:
        remove(path)
    return mine


def owned() -> list[str]:
    """The directories this process made and has not removed yet."""
    return [path for path, held in _held.items() if held.pid == os.getpid()]


def owner_of(path: str) -> Owner | None:
    """The owner recorded in a directory, or None when it has no readable owner file."""
    try:
        with open(os.path.join(path, OWNER_FILE)) as f:
            return Owner(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def sweep(parent: str) -> list[str]:
    """Remove the `keras_spark_*` directories in `parent` whose owner is certainly gone."""
    removed = []
    with contextlib.suppress(OSError):
        with os.scandir(parent) as entries:
            candidates = [e.path for e in entries if e.name.startswith(PREFIX) and e.is_dir(follow_symlinks=False)]
        for path in candidates:
            owner = owner_of(path)
            if owner is not None and not owner.is_alive():
                _remove_tree(path)
                removed.append(path)
    return removed


def _remove_tree(path: str, attempts: int = _REMOVE_ATTEMPTS) -> None:
    # rmtree fails with ENOTEMPTY when a file appears meanwhile (a Spark task still writing): retry.
    for _ in range(attempts):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
        time.sleep(0.1)


def _start_guardian(path: str) -> subprocess.Popen | None:
    try:
        # -I -S: no site, no user paths; a new session: the owner's terminal or process group
        # signals (Ctrl-C, Spark's SIGHUP to its workers' group) must not end it first.
        return subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), path], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
        )
    except OSError:
        return None  # no guardian: the sweep remains


def _guard(path: str) -> None:
    """The guardian: wait until the owner closes the pipe (or dies), then remove what is left."""
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(4096):
            pass
    _remove_tree(path, _GUARDIAN_REMOVE_ATTEMPTS)


atexit.register(remove_owned)

if __name__ == "__main__":
    _guard(sys.argv[1])

"""The whole test suite: one pytest pass per Keras backend, the passes side by side.

    python tests/run_suite.py                      # tensorflow, jax and torch; classic and Connect sessions
    python tests/run_suite.py --backends tensorflow --sessions classic   # the quick first check
    python tests/run_suite.py --jobs 1 -- -x       # one pass at a time; arguments after -- go to pytest

A backend is fixed per process, so each pass is its own pytest process (tests/conftest.py says which tests
a pass runs: `backend_independent` tests run in the tensorflow pass only). Much of a pass is waiting
(JVM starts, Python workers, scenario subprocesses), so passes run side by side, `--jobs` at once (default
two): the longest two start together and each later pass starts when a lane comes free. Each pass writes
its log to build/test-logs/<backend>.log and gets its own TMPDIR; the summary gives each pass's result
line and time, and the tail of a failing pass's log.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["jax", "tensorflow", "torch"]  # longest first: free lanes take passes in this order
SLOWEST = 12  # tests each pass lists by time, so a change sees what it adds
NOTHING_TO_RUN = 5  # pytest's exit status when a pass selects no test (e.g. only backend_independent ones)


def _arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated Keras backends")
    parser.add_argument("--sessions", default="classic,connect", help="classic, connect or both")
    parser.add_argument("--jobs", type=int, default=2, help="passes run at once (default 2)")
    parser.add_argument("--logs", default=str(ROOT / "build" / "test-logs"), help="where each pass writes its log")
    cut = argv.index("--") if "--" in argv else len(argv)
    return parser.parse_args(argv[:cut]), argv[cut + 1:]


class Pass:
    """One pytest process under one backend."""

    def __init__(self, backend: str, sessions: str, logs: Path, pytest_args: list[str]):
        self.backend, self.log = backend, logs / f"{backend}.log"
        self.tmp = tempfile.mkdtemp(prefix=f"keras_spark_tests_{backend}_")
        self.env = dict(os.environ, KERAS_BACKEND=backend, KERAS_SPARK_TEST_SESSIONS=sessions, TMPDIR=self.tmp)
        if backend == "jax":
            # One compilation cache for the pass and the worker processes it starts: the scenarios' workers
            # compile the same train steps again and again (XLA's compile is most of a small JAX fit).
            # Outside TMPDIR, which tests check for leftovers.
            self.env.update(JAX_COMPILATION_CACHE_DIR=tempfile.mkdtemp(prefix="jax_compilation_cache_"),
                            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
        self.command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--durations={SLOWEST}",
                        *pytest_args]
        self.returncode: int | None = None
        self.seconds = 0.0
        self.lane = 0

    def run(self) -> None:
        start = time.monotonic()
        with open(self.log, "w") as out:
            self.returncode = subprocess.call(self.command, cwd=ROOT, env=self.env, stdout=out,
                                              stderr=subprocess.STDOUT)
        self.seconds = time.monotonic() - start
        print(f"[{self.backend}] {self.summary()}", flush=True)

    def summary(self) -> str:
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        result = lines[-1].strip("= ") if lines else "no output"
        return f"exit {self.returncode} in {self.seconds / 60:.1f} min: {result}"

    def slowest(self) -> list[str]:
        """pytest's `--durations` lines ("12.34s call tests/test_x.py::test_y[classic]"), slowest first."""
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        start = next((i for i, line in enumerate(lines) if "slowest" in line and "durations" in line), None)
        if start is None:
            return []
        found = []
        for line in lines[start + 1:]:
            if not line.strip() or line.startswith("="):
                break
            if line.split()[0].endswith("s"):
                found.append(line.strip())
        return found


def _run_in_lanes(passes: list[Pass], jobs: int) -> None:
    """Run the passes, at most `jobs` at once; a lane that comes free takes the next pass in order."""
    waiting = list(passes)
    lock = threading.Lock()

    def lane(number: int) -> None:
        while True:
            with lock:
                if not waiting:
                    return
                one = waiting.pop(0)
            one.lane = number
            one.run()

    threads = [threading.Thread(target=lane, args=(n,)) for n in range(1, max(1, min(jobs, len(passes))) + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main(argv: list[str]) -> int:
    args, pytest_args = _arguments(argv)
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    backends = [b for b in BACKENDS if b in args.backends.split(",")]
    unknown = set(args.backends.split(",")) - set(BACKENDS)
    if unknown or not backends:
        raise SystemExit(f"unknown backends {sorted(unknown)}; choose from {BACKENDS}")
    passes = [Pass(b, args.sessions, logs, pytest_args) for b in backends]
    print(f"test passes {backends}, sessions {args.sessions}, {args.jobs} at once; logs in {logs}", flush=True)
    start = time.monotonic()
    _run_in_lanes(passes, args.jobs)
    failed = [one for one in passes if one.returncode not in (0, NOTHING_TO_RUN)]
    for one in failed:
        print(f"\n---- {one.backend} pass failed; the end of {one.log}:\n", flush=True)
        print("\n".join(one.log.read_text(errors="replace").splitlines()[-80:]), flush=True)
    print(f"\nall passes in {(time.monotonic() - start) / 60:.1f} min", flush=True)
    for one in passes:
        print(f"  {one.backend:<10} lane {one.lane}, {one.summary()}", flush=True)
    for lane in sorted({one.lane for one in passes}):
        in_lane = [one for one in passes if one.lane == lane]
        print(f"  lane {lane}: {' then '.join(one.backend for one in in_lane)}, "
              f"{sum(one.seconds for one in in_lane) / 60:.1f} min", flush=True)
    for one in passes:
        print(f"\n{one.backend} pass, its slowest tests:", flush=True)
        print("\n".join(f"  {line}" for line in one.slowest()) or "  (none listed)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

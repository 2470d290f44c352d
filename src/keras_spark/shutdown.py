"""How a fit or evaluate ends when it does not return: SIGTERM, an abandoned thread, interpreter exit.

- `terminate_cleanly()` wraps fit/evaluate on the driver: while it runs, SIGTERM (a
  scheduler, `timeout`, a cancelled notebook cell) first removes this process's scratch
  directories, then does what the previous handler would have done (by default: end the
  process with SIGTERM's status). Installed only in the main thread, and put back after.
  SIGINT raises KeyboardInterrupt as before and the `finally` blocks clean up; it is also
  noted, because Keras can swallow it (`pythonify_logs` has a bare `except:` around the
  wait for a step's metrics, where a JAX step spends most of its time): the feed's next
  pull in the main thread raises it again (`raise_if_interrupted`).
- `NativeHandle` holds a C++ object (the batch pipeline) for its Python owner and closes
  it when the owner is collected or the interpreter exits, so its threads are joined and
  nanobind sees no leaked instance even when a fit was abandoned in a thread.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Generic, TypeVar

from keras_spark import scratch

_EXIT_WAIT_S = 2.0  # at exit: time for a thread woken by close() to leave the native call
_interrupted = threading.Event()  # SIGINT arrived while terminate_cleanly() ran


def raise_if_interrupted() -> None:
    """In the main thread: KeyboardInterrupt if a SIGINT arrived during this fit and was swallowed."""
    if _interrupted.is_set() and threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt("keras-spark: interrupted (SIGINT) during fit/evaluate")


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """While the block runs (main thread only), SIGTERM removes our scratch directories first; SIGINT is noted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    previous_int = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        _interrupted.set()
        if callable(previous_int):
            previous_int(signum, frame)  # pyspark's: cancels the Spark jobs, then KeyboardInterrupt
        elif previous_int != signal.SIG_IGN:
            raise KeyboardInterrupt

    def on_sigterm(signum, frame):
        scratch.remove_owned()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:  # the default action (or one set outside Python): end so
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    _interrupted.clear()
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:  # unless someone replaced ours meanwhile
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        if signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, previous_int if previous_int is not None else signal.default_int_handler)
        _interrupted.clear()


Native = TypeVar("Native")
_open: set[NativeHandle] = set()


class NativeHandle(Generic[Native]):
    """A native object with a `close()` method, closed with its owner or at interpreter exit.

    The handle holds the only lasting reference, so closing it frees the C++ object.

    Example:
        self._pipeline = NativeHandle(self, _core.Pipeline(...))
        self._pipeline.get().next()
    """

    def __init__(self, owner: object, native: Native):
        self._native: Native | None = native
        self._lock = threading.Lock()
        weakref.finalize(owner, self.close).atexit = False  # collected owner: close; exit: `_close_all`
        _open.add(self)

    def get(self) -> Native:
        native = self._native
        if native is None:
            raise RuntimeError("this keras-spark batch feed is closed (its fit or evaluate has ended)")
        return native

    @property
    def closed(self) -> bool:
        return self._native is None

    def close(self, wait_s: float = 0.0) -> None:
        """Close the native object and let go of it; `wait_s`: wait for calls in flight to leave it."""
        with self._lock:
            native, self._native = self._native, None
            _open.discard(self)
        if native is None:
            return
        native.close()  # wakes a thread blocked in it: that call raises and lets go of its reference
        deadline = time.monotonic() + wait_s
        while sys.getrefcount(native) > 2 and time.monotonic() < deadline:  # ours + getrefcount's
            time.sleep(0.01)


def _close_all() -> None:
    deadline = time.monotonic() + _EXIT_WAIT_S
    for handle in list(_open):
        handle.close(wait_s=max(0.0, deadline - time.monotonic()))


atexit.register(_close_all)

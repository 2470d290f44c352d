"""Quiet by default: the backend's C++ start-up lines are dropped unless KERAS_SPARK_VERBOSE=1.

TensorFlow 2.19+ logs through absl before `absl::InitializeLog()` runs, so its start-up
lines ("oneDNN custom operations are on", "Could not find cuda drivers", "failed call to
cuInit") reach stderr whatever `TF_CPP_MIN_LOG_LEVEL` says. The only lever left to a
library is the process's stderr itself: while the backend is imported, file descriptor 2
goes to a temporary file, and afterwards every line that is not one of those start-up
lines is written back, in order. Real errors (an import that fails, a warning of another
kind) still reach stderr; they only arrive when the import ends.

Used on the driver (`keras_spark.models` imports Keras through it) and in every Python
process keras-spark starts on the executors (scoring workers, `num_workers` processes).
It only helps where keras-spark imports the backend first: a process that imported
TensorFlow before keras-spark has already printed them.

Spark's console progress bar is not touched here: `spark.ui.showConsoleProgress` is read once,
when a classic SparkContext starts, and cannot be changed at runtime, so only whoever creates
the session can turn it off (the examples and the quickstart do).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

VERBOSE_ENV = "KERAS_SPARK_VERBOSE"
"""Set to 1 (or true/yes/on) to keep the backend's start-up lines (and TF_CPP_MIN_LOG_LEVEL as you set it)."""

# One C++ log line: absl's (I0000 00:00:1796203055.836586  11174 port.cc:153] ...), or TSL's older
# (2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] ...).
_LOG_LINE = re.compile(rb"^([IWEF]\d{4} [\d:.]+\s+\d+ |\d{4}-\d\d-\d\d [\d:.]+: [IWEF] )[\w./-]+\.cc:\d+\] ")
_NOISE = (
    rb"All log messages before absl::InitializeLog() is called are written to STDERR",
    rb"oneDNN custom operations are on",
    rb"Could not find cuda drivers on your machine",
    rb"failed call to cuInit",
    rb"Unable to register cu",  # cuDNN/cuFFT/cuBLAS factory already registered
    rb"computation placer already registered",
    rb"This TensorFlow binary is optimized to use available CPU instructions",
    rb"To enable the following instructions",
    rb"TF-TRT Warning: Could not find TensorRT",
)


def verbose() -> bool:
    """True when the user asked for the backend's start-up lines (KERAS_SPARK_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def is_start_up_noise(line: bytes) -> bool:
    """True for one of the backend's start-up lines that keras-spark drops by default."""
    if line.startswith(b"WARNING: " + _NOISE[0]):
        return True
    return bool(_LOG_LINE.match(line)) and any(marker in line for marker in _NOISE[1:])


@contextlib.contextmanager
def start_up_lines_dropped():
    """While the block runs, stderr (fd 2) is held; afterwards all but the start-up lines are written back."""
    if verbose():
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's own INFO/WARNING lines once its logging is up
    sys.stderr.flush()
    held = tempfile.TemporaryFile()
    saved = os.dup(2)
    os.dup2(held.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        held.seek(0)
        kept = [line for line in held.read().splitlines(keepends=True) if not is_start_up_noise(line)]
        held.close()
        if kept:
            os.write(2, b"".join(kept))


def import_backend() -> None:
    """Import Keras (and so its backend) with the start-up lines dropped; nothing once Keras is imported."""
    if "keras" in sys.modules:
        return
    with start_up_lines_dropped():
        import keras

        if keras.backend.backend() == "tensorflow":  # the cuInit line comes when TF first looks for devices
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")

"""fit + predict through the same path under JAX and PyTorch (each in its own process)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_fit_and_predict_under_backend(backend):
    env = dict(os.environ, KERAS_BACKEND=backend)
    script = Path(__file__).with_name("backend_smoke.py")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"backend={backend}" in done.stdout

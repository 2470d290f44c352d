"""Every example runs (with tiny settings, on the suite's session), and the README's quickstart is
examples/quickstart.py, which learns."""

import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"

pytestmark = [pytest.mark.backend_independent, pytest.mark.session_independent]


def quickstart_code() -> str:
    """The part of examples/quickstart.py between its snippet markers (what the docs include)."""
    text = (EXAMPLES / "quickstart.py").read_text()
    return text.split("# --8<-- [start:quickstart]\n")[1].split("# --8<-- [end:quickstart]")[0]


def test_the_readme_quickstart_is_examples_quickstart():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quickstart"):]
    block = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    assert block == quickstart_code()


def test_the_quickstart_learns_y_equals_2x_plus_1_and_prints_predictions(spark, capsys):
    exec(compile(quickstart_code(), str(EXAMPLES / "quickstart.py"), "exec"), {"__name__": "quickstart"})
    printed = capsys.readouterr().out
    weight, bias = map(float, re.search(r"learned y = ([-0-9.]+) x \+ ([-0-9.]+)", printed).groups())
    assert abs(weight - 2) < 0.05 and abs(bias - 1) < 0.05
    assert "predicted" in printed and printed.count("\n|") >= 6  # a header and five scored rows


def _example(name: str):
    """examples/<name>.py imported as a module (its `main` takes the suite's session: no JVM of its own)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_demo_runs_as_the_readme_runs_it(tmp_path):
    """The README's main job, as a script: its own local session, made and stopped."""
    import keras_spark

    package_root = str(Path(keras_spark.__file__).parents[1])  # the keras_spark under test (wheel or src/)
    # The script makes its own local session, even when the suite's Connect tests set SPARK_REMOTE.
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED")}
    env.update(KERAS_BACKEND="tensorflow", TMPDIR=str(tmp_path), PYTHONPATH=os.pathsep.join([package_root, *sys.path]))
    done = subprocess.run([sys.executable, str(EXAMPLES / "digits_demo.py"), "--epochs", "1"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "held-out accuracy" in done.stdout and done.stdout.count("  label ") == 10


def test_pipeline_demo_runs(spark, capsys):
    _example("pipeline_demo").main(epochs=1, spark=spark)
    out = capsys.readouterr().out
    assert "cross-validated AUC" in out and "reloaded from" in out


def test_image_classifier_runs_and_leaves_no_files_behind(spark, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where its temporary image folder goes
    _example("image_classifier").main(epochs=1, images=200, spark=spark)
    out = capsys.readouterr().out
    assert "wrote 200 image files" in out and "held-out accuracy" in out
    assert not list(tmp_path.glob("digit_images_*"))

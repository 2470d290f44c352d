"""Every example runs (with tiny settings), and the README's quickstart is examples/quickstart.py, which learns."""

import os
import re
import subprocess
import sys
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


def _run_example(name: str, *args: str, tmp_path: Path) -> str:
    import keras_spark

    # The keras_spark this test imported (an installed wheel, or src/ with an in-place core).
    package_root = str(Path(keras_spark.__file__).parents[1])
    # An example makes its own local session, even when the suite's Connect tests set SPARK_REMOTE.
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED")}
    env.update(KERAS_BACKEND="tensorflow", TMPDIR=str(tmp_path), PYTHONPATH=os.pathsep.join([package_root, *sys.path]))
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_digits_demo_runs(tmp_path):
    out = _run_example("digits_demo.py", "--epochs", "1", tmp_path=tmp_path)
    assert "held-out accuracy" in out and out.count("  label ") == 10


def test_pipeline_demo_runs(tmp_path):
    out = _run_example("pipeline_demo.py", "--epochs", "1", tmp_path=tmp_path)
    assert "cross-validated AUC" in out and "reloaded from" in out


def test_image_classifier_runs_and_leaves_no_files_behind(tmp_path):
    out = _run_example("image_classifier.py", "--epochs", "1", "--images", "200", tmp_path=tmp_path)
    assert "wrote 200 image files" in out and "held-out accuracy" in out
    assert not list(tmp_path.glob("digit_images_*"))

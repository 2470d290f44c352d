"""Faults in Spark: Python workers killed mid-task, with task retries, lose and duplicate nothing.

The scenarios run in their own process (faults_run.py) with a `local[2,4]` master, the
retries a cluster gives (the shared test session has none). A source that fails
mid-read is in test_cleanup.
"""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

# Spark task retries after a killed Python worker: the backend's part is tested in test_fit and test_predict
pytestmark = pytest.mark.backend_independent


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    env = dict(os.environ, KERAS_SPARK_TEST_TAG=f"keras_spark_faults_{uuid.uuid4().hex}",
               TMPDIR=str(tmp_path_factory.mktemp("faults_tmp")))
    script = Path(__file__).with_name("faults_run.py")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=False,
                          timeout=900)
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            results[result["name"]] = result
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    results["tmpdir_left"] = sorted(n for n in os.listdir(env["TMPDIR"]) if n.startswith("keras_spark_"))
    return results


def test_a_scoring_worker_killed_mid_task_gives_complete_exact_output(faults):
    result = faults["scoring_worker_killed"]
    assert result["killed"] and result["failed_tasks"] >= 1  # the kill did fail a task, and Spark reran it
    assert result["rows"] == result["distinct"] == result["expected_rows"]
    assert result["max_diff"] < 1e-5


def test_a_worker_killed_in_fits_spark_pass_is_retried_and_every_row_trained_once(faults):
    result = faults["fit_pass_worker_killed"]
    assert result["killed"] and result["failed_tasks"] >= 1
    assert result["row_count"] == [result["expected_count"]] * result["epochs"]
    assert result["row_sum"] == [result["expected_sum"]] * result["epochs"]
    assert result["rows_trained"] == result["expected_count"] * result["epochs"]


def test_the_failed_attempts_leave_no_directory(faults):
    assert faults["tmpdir_left"] == []

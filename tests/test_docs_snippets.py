"""The documentation's runnable snippets, run as written (paths moved into the test's tmp_path).

The quickstart (README.md and docs/getting-started.md) is examples/quickstart.py: tests/test_examples.py.
"""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"


def python_blocks(page: str) -> list[str]:
    """The ```python blocks of a page under docs/, in order."""
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)


@pytest.mark.backend_independent  # a documentation snippet; the stages under each backend are test_ml's
@pytest.mark.session_independent  # the stages on each session are test_ml's
def test_the_spark_ml_pipeline_page_runs(spark, tmp_path, capsys):
    code = python_blocks("guide/ml-pipelines.md")[0].replace("/tmp/cancer_pipeline", str(tmp_path / "cancer_pipeline"))
    exec(compile(code, str(DOCS / "guide/ml-pipelines.md"), "exec"), {"__name__": "docs"})
    printed = capsys.readouterr().out
    test_auc = float(re.search(r"test AUC ([0-9.]+)", printed).group(1))
    reloaded_auc = float(re.search(r"reloaded AUC ([0-9.]+)", printed).group(1))
    assert test_auc > 0.9 and reloaded_auc > 0.9


@pytest.mark.backend_independent
def test_every_python_snippet_in_the_docs_is_valid_python():
    """Snippets that need a cluster or data of yours are not run, but they must at least parse."""
    for page in sorted(DOCS.rglob("*.md")):
        for number, block in enumerate(python_blocks(str(page.relative_to(DOCS)))):
            compile(block, f"{page.relative_to(DOCS)} python block {number + 1}", "exec")

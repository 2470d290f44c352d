"""The README's Spark ML pipeline section, run as written (the save path moved into the test's tmp_path)."""

import re
from pathlib import Path

import pytest

# a documentation snippet; the stages under each backend are test_ml's
pytestmark = pytest.mark.backend_independent

README = Path(__file__).parent.parent / "README.md"


def _pipeline_code() -> str:
    text = README.read_text()
    section = text[text.index("## Spark ML pipelines and MLflow"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)[0]


def test_readme_pipeline_section_runs(spark, tmp_path, capsys):
    code = _pipeline_code().replace("/tmp/cancer_pipeline", str(tmp_path / "cancer_pipeline"))
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    test_auc = float(re.search(r"test AUC ([0-9.]+)", printed).group(1))
    reloaded_auc = float(re.search(r"reloaded AUC ([0-9.]+)", printed).group(1))
    assert test_auc > 0.9 and reloaded_auc > 0.9

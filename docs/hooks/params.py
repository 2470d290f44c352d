"""MkDocs hook: `<!-- params: keras_spark.ml.KerasEstimator -->` becomes a table of that stage's Params.

Spark ML Params carry their documentation in the Param object (`Param.doc`), not in a
docstring mkdocstrings can read, so the table is made from the class itself at build time:
every Param a stage has is listed, with its default, and a Param added later cannot be
forgotten here.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path

MARKER = re.compile(r"<!-- params: ([\w.]+) -->")


def _importable() -> None:
    os.environ.setdefault("KERAS_BACKEND", "numpy")  # the Params need no backend: start the lightest
    try:
        importlib.import_module("keras_spark")
    except ImportError:
        sys.path.insert(0, str(Path(__file__).parents[2] / "src"))


def params_table(dotted: str) -> str:
    """A Markdown table of the Params of the class at `dotted` (name, default, meaning)."""
    _importable()
    module, name = dotted.rsplit(".", 1)
    stage = getattr(importlib.import_module(module), name)()
    rows = ["| Param | default | meaning |", "|---|---|---|"]
    for param in sorted(stage.params, key=lambda p: p.name):
        if param.name == "kerasModelBytes":
            default = "set by `model=`"
        elif stage.hasDefault(param):
            default = f"`{stage.getOrDefault(param)!r}`"
        else:
            default = "unset"
        meaning = param.doc.replace("|", "\\|").replace("\n", " ")
        rows.append(f'| <a id="{name}-{param.name}"></a>`{param.name}` | {default} | {meaning} |')
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return MARKER.sub(lambda m: params_table(m.group(1)), markdown)

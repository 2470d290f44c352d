"""Column kinds: one module a kind, each a `ColumnKind` (base.py), as Keras's data adapters are one class a file.

- dense.py: numbers, arrays of numbers and Spark ML vectors, as fixed-shape tensors;
- sequence.py: variable-length arrays feeding `(None, ...)` inputs and per-step labels;
- string.py: one string a row feeding a dtype="string" input (TensorFlow);
- sparse.py: Spark ML vectors feeding `sparse=True` inputs as their non-zeros;
- image.py: encoded images and Spark's image struct, decoded by the core.

`binding` asks the kinds in `KINDS`' order to bind each input and label; everything after it
asks the kind of a binding (`kind_of`). A new kind is a new module and one line here.
"""

from __future__ import annotations

from keras_spark.kinds.base import ColumnKind
from keras_spark.kinds.dense import DenseKind
from keras_spark.kinds.image import ImageKind
from keras_spark.kinds.sequence import SequenceKind
from keras_spark.kinds.sparse import SparseKind
from keras_spark.kinds.string import StringKind

KINDS: tuple[ColumnKind, ...] = (ImageKind(), StringKind(), SequenceKind(), SparseKind(), DenseKind())
"""The kinds in the order they are asked to bind a column: the first to take it binds it; dense takes the rest."""
_BY_NAME = {kind.name: kind for kind in KINDS}


def kind_of(binding) -> ColumnKind:
    """The kind that bound `binding` (a `ColumnBinding`)."""
    return _BY_NAME[binding.kind]


def split_core_specs(columns) -> tuple[list, list]:
    """Core specs (`ColumnKind.core_spec`) -> (the CacheWriter's 4-tuples, its `ragged` list)."""
    def ragged(column) -> bool:  # a sparse column's fifth element is its kind, "sparse"
        return len(column) > 4 and isinstance(column[4], tuple)

    specs = [tuple(c[:4]) if ragged(c) else tuple(c) for c in columns]
    return specs, [(i, *c[4]) for i, c in enumerate(columns) if ragged(c)]


def pipeline_options(bindings) -> dict:
    """The core Pipeline's keywords the kinds decide: each ragged column's padding, each kind's batch layout."""
    pads = (kind_of(b).ragged_pad(b, i) for i, b in enumerate(bindings))
    options: dict = {"ragged": [pad for pad in pads if pad is not None]}
    for kind in KINDS:
        options.update(kind.pipeline_layout())
    return options


def data_parallel_refusal(bindings, num_workers: int) -> str | None:
    """Why these columns cannot train with `num_workers` > 1, from the first kind that refuses (None if none)."""
    for kind in KINDS:
        columns = [b.column for b in bindings if b.kind == kind.name]
        refusal = kind.data_parallel_refusal(columns, num_workers) if columns else None
        if refusal:
            return refusal
    return None


__all__ = ["KINDS", "ColumnKind", "data_parallel_refusal", "kind_of", "pipeline_options", "split_core_specs"]

"""Which DataFrame column feeds which Keras input or label, and the rules it must obey.

Everything here reads only the Spark schema and the model, so every mistake it can
see is reported before Spark runs a job. What only the data can show (nulls, array
lengths) is checked by the C++ core during the single Spark pass.
"""

from __future__ import annotations

from pyspark.sql import types as T

from keras_spark.errors import BindingError, DataError
from keras_spark.kinds import KINDS
from keras_spark.kinds.image import image_fit
from keras_spark.kinds.schema import INTEGER_TYPES, ColumnBinding, column_depth, column_or_error, describe_type

# Keras auto-names unnamed inputs like this; such a name rarely matches a column.
_AUTO_INPUT_PREFIXES = ("input_layer", "keras_tensor", "input_")


def _bound(ask: str, *args, **kwargs) -> ColumnBinding:
    """The binding of the first kind (in `KINDS`' order) whose `ask` method takes the column."""
    for kind in KINDS:
        binding = getattr(kind, ask)(*args, **kwargs)
        if binding is not None:
            return binding
    raise AssertionError("internal: the dense kind binds every column the others leave")


def bind_inputs(model, schema: T.StructType, image_resize: str | None = None) -> list[ColumnBinding]:
    """Bind every Keras input to the column of the same name: the first kind (kinds.KINDS) that takes it binds it.

    `image_resize` fits image columns (kinds/image.py).
    """
    fit = image_fit(image_resize)
    bindings = []
    for tensor in model.inputs:
        name = tensor.name
        if name not in schema.fieldNames():
            if name.startswith(_AUTO_INPUT_PREFIXES):
                raise BindingError(
                    f"Keras input '{name}' has no name of its own and matches no column; name each input after "
                    f"its column, e.g. keras.Input(shape={tuple(tensor.shape[1:])}, name='<column>'); columns "
                    f"are {schema.fieldNames()}"
                )
            column_or_error(schema, name, f"Keras input '{name}'")
        field = schema[name]
        bindings.append(_bound("bind_input", tensor, field, image_fit=fit))
    return bindings


def label_dtype(leaf: T.DataType, floatx: str) -> str:
    """Labels keep their kind: integer columns stay integers (sparse losses need them)."""
    if isinstance(leaf, T.LongType):
        return "int64"
    if isinstance(leaf, INTEGER_TYPES):
        return "int32"
    return floatx


def bind_labels(model, schema: T.StructType, floatx: str = "float32") -> list[ColumnBinding]:
    """Bind every Keras output to the label column named like the output."""
    bindings = []
    for name, output in zip(model.output_names, model.outputs, strict=True):
        field = column_or_error(schema, name, f"Keras output '{name}' (its label)")
        _, leaf = column_depth(field.dataType, name, "label")
        dtype = label_dtype(leaf, floatx)
        bindings.append(_bound("bind_label", output, field, dtype))
    return bindings


def check_partition_column(schema: T.StructType, partition_col: str) -> None:
    """The partition column must exist and hold integers (checked for sign in the core)."""
    field = column_or_error(schema, partition_col, f"partition_col='{partition_col}'")
    if not isinstance(field.dataType, INTEGER_TYPES):
        raise BindingError(
            f"partition column '{partition_col}' has type {describe_type(field.dataType)}; expected an integer "
            f"type (int/bigint) holding partition ids 0..n"
        )


def _same_shape(label: tuple[int, ...], output: tuple) -> bool:
    """Equal where the output's dimension is known; a trailing 1 on either side is the same row."""
    strip = lambda s: s[:-1] if s and s[-1] == 1 else s  # noqa: E731
    label, output = strip(tuple(label)), strip(tuple(output))
    return len(label) == len(output) and all(o is None or o == d for d, o in zip(label, output, strict=True))


def check_label_shapes(model, bindings: list[ColumnBinding], shapes: list[tuple[int, ...]]) -> None:
    """Each label's per-row shape (known after the data is read) must match its output's.

    Keras would broadcast a mismatch silently (a 2-wide label against a 1-unit output trains
    on the wrong loss). The one legitimate mismatch is an integer class label beside a
    k-wide output of scores (sparse categorical): the label's shape is the output's minus
    its last dimension.
    """
    outputs = dict(zip(model.output_names, model.outputs, strict=True))
    for b, shape in zip(bindings, shapes, strict=True):
        if b.role != "label":
            continue
        output = tuple(outputs[b.keras_name].shape[1:])
        if _same_shape(shape, output):
            continue
        if b.dtype.startswith("int") and output and _same_shape(shape, output[:-1]):
            continue
        raise DataError(
            f"label column '{b.column}' has per-row shape {tuple(shape)}, but Keras output '{b.keras_name}' has "
            f"per-row shape {output}; Keras would broadcast the loss over the mismatch. Make the column match the "
            f"output (or, for class ids with a sparse loss, give integer labels of shape {output[:-1] or ()})"
        )

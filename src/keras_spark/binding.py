"""Which DataFrame column feeds which Keras input or label, and the rules it must obey.

Everything here reads only the Spark schema and the model, so every mistake it can
see is reported before Spark runs a job. What only the data can show (nulls, array
lengths) is checked by the C++ core during the single Spark pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import types as T

from keras_spark import sparse as sparse_inputs
from keras_spark.errors import BindingError, DataError
from keras_spark.images import check_image_input, image_fit, is_image_type

_INTEGER_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
_NUMERIC_TYPES = _INTEGER_TYPES + (T.FloatType, T.DoubleType, T.BooleanType)
# Keras auto-names unnamed inputs like this; such a name rarely matches a column.
_AUTO_INPUT_PREFIXES = ("input_layer", "keras_tensor", "input_")

SUPPORTED_DTYPES = (
    "bool", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "float32", "float64",
)


@dataclass(frozen=True)
class ColumnBinding:
    """One DataFrame column feeding one Keras input or one output's label.

    `shape` is the per-row shape of the dense tensor; -1 where the data decides
    (a `None` dimension of the Keras input, or any dimension of a label).
    """

    column: str
    role: str  # "input" or "label"
    keras_name: str
    dtype: str
    shape: tuple[int, ...]
    spark_type: str
    kind: str = "dense"  # or "sequence" / "string": a ragged column (sequences.py)
    sequence: object = None  # sequences.SequenceOptions of a ragged column
    image: str | None = None  # an image column: "exact", "resize" or "center_crop" (images.py)
    sparse: bool = False  # a Spark ML vector kept as its non-zeros (keras_spark.sparse)

    @property
    def core_dtype(self) -> str:
        """The dtype as the C++ core takes it: an image column's fit follows it (`uint8;image=resize`)."""
        return self.dtype if self.image is None else f"{self.dtype};image={self.image}"

    def core_spec(self, field_index: int) -> tuple:
        """The (name, field index, dtype, shape[, "sparse" or ragged options]) tuple the C++ core takes."""
        if self.kind != "dense":
            from keras_spark import sequences

            return sequences.core_spec(self, field_index)
        return (self.column, field_index, self.core_dtype, list(self.shape)) + (("sparse",) if self.sparse else ())


def describe_type(data_type: T.DataType) -> str:
    """A Spark type in the words a user would write it (`array<float>`)."""
    return data_type.simpleString()


def column_depth(data_type: T.DataType, column: str, role: str = "input") -> tuple[int, T.DataType]:
    """Nesting depth and leaf type of a column that can feed a tensor (`role` "input" or "label").

    Raises BindingError for columns that hold no numbers (strings, maps, ...).
    """
    if type(data_type).__name__ == "VectorUDT":
        return 1, T.DoubleType()
    depth, leaf = 0, data_type
    while isinstance(leaf, T.ArrayType):
        depth, leaf = depth + 1, leaf.elementType
    if isinstance(leaf, _NUMERIC_TYPES):
        return depth, leaf
    from keras_spark.sequences import string_column_hint, string_label_hint

    strings = string_label_hint(leaf, column) if role == "label" else string_column_hint(leaf)
    hint = " (cast it to double first)" if isinstance(leaf, T.DecimalType) else strings
    raise BindingError(
        f"{'label ' if role == 'label' else ''}column '{column}' has type {describe_type(data_type)}; expected a "
        f"number, an array of numbers (any depth) or a Spark ML vector{hint}"
    )


def _column_or_error(schema: T.StructType, column: str, what: str) -> T.StructField:
    names = schema.fieldNames()
    if column in names:
        return schema[column]
    raise BindingError(f"{what} has no column named '{column}' in the DataFrame; columns are {names}")


def _input_shape(keras_shape) -> tuple[int, ...]:
    return tuple(-1 if d is None else int(d) for d in keras_shape[1:])


def _check_depth(column: str, spark_type: T.DataType, depth: int, shape: tuple[int, ...], keras_name: str) -> None:
    # A column of depth d feeds a rank-d input, or a higher-rank one whose extra
    # trailing dimensions are all 1 (a scalar column feeding shape (1,)).
    extra = shape[depth:]
    if len(shape) >= depth and all(d == 1 for d in extra):
        return
    raise BindingError(
        f"column '{column}' has type {describe_type(spark_type)} (nesting depth {depth}), but Keras input "
        f"'{keras_name}' expects per-row shape {shape} (rank {len(shape)}); give the input a shape of rank "
        f"{depth} or make the column match"
    )


def bind_inputs(model, schema: T.StructType, image_resize: str | None = None) -> list[ColumnBinding]:
    """Bind every Keras input to the column of the same name; `image_resize` fits image columns (images.py)."""
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
            _column_or_error(schema, name, f"Keras input '{name}'")
        field = schema[name]
        if is_image_type(field.dataType) and str(tensor.dtype) != "string":  # binary into a string input: bytes
            shape, dtype, spark_type = _input_shape(tensor.shape), str(tensor.dtype), describe_type(field.dataType)
            check_image_input(name, spark_type, shape, dtype)
            bindings.append(ColumnBinding(name, "input", name, dtype, shape, spark_type, image=fit))
            continue
        from keras_spark import sequences

        ragged = sequences.bind_input(tensor, field)
        if ragged is not None:
            bindings.append(ragged)
            continue
        shape = _input_shape(tensor.shape)
        if sparse_inputs.is_sparse_input(tensor):
            sparse_inputs.check_sparse_input(name, field.dataType, shape)
        depth, _ = column_depth(field.dataType, name)
        _check_depth(name, field.dataType, depth, shape, name)
        dtype = str(tensor.dtype)
        if dtype not in SUPPORTED_DTYPES:
            raise BindingError(
                f"Keras input '{name}' has dtype {dtype}; keras-spark feeds one of {SUPPORTED_DTYPES}"
            )
        bindings.append(ColumnBinding(name, "input", name, dtype, shape, describe_type(field.dataType),
                                      sparse=sparse_inputs.is_sparse_input(tensor)))
    return bindings


def label_dtype(leaf: T.DataType, floatx: str) -> str:
    """Labels keep their kind: integer columns stay integers (sparse losses need them)."""
    if isinstance(leaf, T.LongType):
        return "int64"
    if isinstance(leaf, _INTEGER_TYPES):
        return "int32"
    return floatx


def bind_labels(model, schema: T.StructType, floatx: str = "float32") -> list[ColumnBinding]:
    """Bind every Keras output to the label column named like the output."""
    from keras_spark import sequences

    bindings = []
    for name, output in zip(model.output_names, model.outputs, strict=True):
        field = _column_or_error(schema, name, f"Keras output '{name}' (its label)")
        depth, leaf = column_depth(field.dataType, name, "label")
        ragged = sequences.bind_label(output, field, label_dtype(leaf, floatx))
        if ragged is not None:
            bindings.append(ragged)
            continue
        bindings.append(
            ColumnBinding(name, "label", name, label_dtype(leaf, floatx), (-1,) * depth, describe_type(field.dataType))
        )
    return bindings


def check_partition_column(schema: T.StructType, partition_col: str) -> None:
    """The partition column must exist and hold integers (checked for sign in the core)."""
    field = _column_or_error(schema, partition_col, f"partition_col='{partition_col}'")
    if not isinstance(field.dataType, _INTEGER_TYPES):
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

"""What every column kind reads of a Spark schema: the binding record, type names, nesting depth, shapes.

The kinds (and `binding`, which asks them) import this module; it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import types as T

from keras_spark.errors import BindingError

INTEGER_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
NUMERIC_TYPES = INTEGER_TYPES + (T.FloatType, T.DoubleType, T.BooleanType)

SUPPORTED_DTYPES = (
    "bool", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "float32", "float64",
)


@dataclass(frozen=True)
class ColumnBinding:
    """One DataFrame column feeding one Keras input or one output's label.

    `shape` is the per-row shape of the dense tensor; -1 where the data decides
    (a `None` dimension of the Keras input, or any dimension of a label).
    `kind` names the column kind that bound it (keras_spark.kinds: `kind_of(binding)`).
    """

    column: str
    role: str  # "input" or "label"
    keras_name: str
    dtype: str
    shape: tuple[int, ...]
    spark_type: str
    kind: str = "dense"  # "dense", "sequence", "string", "sparse" or "image" (keras_spark.kinds)
    sequence: object = None  # sequences.SequenceOptions of a ragged column (sequence or string)
    image: str | None = None  # an image column's fit: "exact", "resize" or "center_crop" (kinds/image.py)


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
    if isinstance(leaf, NUMERIC_TYPES):
        return depth, leaf
    strings = string_label_hint(leaf, column) if role == "label" else string_column_hint(leaf)
    hint = " (cast it to double first)" if isinstance(leaf, T.DecimalType) else strings
    raise BindingError(
        f"{'label ' if role == 'label' else ''}column '{column}' has type {describe_type(data_type)}; expected a "
        f"number, an array of numbers (any depth) or a Spark ML vector{hint}"
    )


def string_column_hint(leaf: T.DataType) -> str:
    """What to do with a string column fed to a numeric input."""
    if not isinstance(leaf, T.StringType):
        return ""
    return (" (strings: index them in Spark with pyspark.ml.feature.StringIndexer, or, with the TensorFlow "
            "backend, declare keras.Input(shape=(1,), dtype='string') and let StringLookup/TextVectorization "
            "in the model do it)")


def string_label_hint(leaf: T.DataType, column: str) -> str:
    """What to do with a string column fed as a label (a model's output is numbers)."""
    if not isinstance(leaf, T.StringType):
        return ""
    return (f" (a string label: if it holds numbers, cast it in Spark, F.col('{column}').cast('double'); if it holds "
            f"class names, index them with pyspark.ml.feature.StringIndexer and train on the indices)")


def column_or_error(schema: T.StructType, column: str, what: str) -> T.StructField:
    """The schema's field `column`, or a BindingError naming `what` wanted it and the columns there are."""
    names = schema.fieldNames()
    if column in names:
        return schema[column]
    raise BindingError(f"{what} has no column named '{column}' in the DataFrame; columns are {names}")


def input_shape(keras_shape) -> tuple[int, ...]:
    """A Keras input's per-row shape, -1 where it is None."""
    return tuple(-1 if d is None else int(d) for d in keras_shape[1:])


def check_depth(column: str, spark_type: T.DataType, depth: int, shape: tuple[int, ...], keras_name: str) -> None:
    """A column of depth d feeds a rank-d input, or a higher-rank one whose extra trailing dimensions are all 1
    (a scalar column feeding shape (1,))."""
    extra = shape[depth:]
    if len(shape) >= depth and all(d == 1 for d in extra):
        return
    raise BindingError(
        f"column '{column}' has type {describe_type(spark_type)} (nesting depth {depth}), but Keras input "
        f"'{keras_name}' expects per-row shape {shape} (rank {len(shape)}); give the input a shape of rank "
        f"{depth} or make the column match"
    )

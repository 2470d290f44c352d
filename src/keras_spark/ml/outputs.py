"""The `model_output` struct (the stage's outputCol) flattened into the columns Spark ML's evaluators read.

- regression: `prediction`, a double (RegressionEvaluator);
- classification: `probability` and `rawPrediction`, Spark ML dense vectors (one entry a class), and
  `prediction`, the class index as a double (Binary/MulticlassClassificationEvaluator). A 1-unit output
  is read as a sigmoid P(class 1); a k-unit output as softmax probabilities. `rawPrediction` holds the
  probabilities too: the evaluators rank by it, and a monotone score ranks the same as a margin.

Built from Spark SQL expressions (no Python UDF), so they run alike on classic and Connect sessions.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

from keras_spark.errors import BindingError
from keras_spark.spark.score import OUTPUT_COLUMN


def _output_field(scored_schema: T.StructType, output_col: str, output_name: str) -> T.StructField:
    return next(f for f in scored_schema[output_col].dataType.fields if f.name == output_name)


def _is_number(data_type: T.DataType) -> bool:
    return isinstance(data_type, T.NumericType)


def _is_vector_of_numbers(data_type: T.DataType) -> bool:
    return isinstance(data_type, T.ArrayType) and _is_number(data_type.elementType)


def flatten_outputs(scored, output_name: str, style: str, *, prediction_col: str, probability_col: str,
                    raw_prediction_col: str, output_col: str = OUTPUT_COLUMN):
    """`scored` (predict's result, its struct named `output_col`) with the evaluator columns of `output_name`."""
    if style == "none":
        return scored
    field = _output_field(scored.schema, output_col, output_name)
    value = F.col(f"`{output_col}`").getField(output_name)
    taken = [c for c in (prediction_col, probability_col, raw_prediction_col) if c in scored.columns]
    if taken:
        raise BindingError(f"the DataFrame already has column(s) {taken}, which predictionStyle='{style}' adds; "
                           f"drop them or set predictionCol/probabilityCol/rawPredictionCol to other names")
    if style == "regression":
        if not _is_number(field.dataType):
            raise BindingError(f"predictionStyle='regression' needs a one-number-per-row output; output "
                               f"'{output_name}' is {field.dataType.simpleString()}: use predictionStyle='none' "
                               f"and read {output_col}.{output_name}")
        return scored.withColumn(prediction_col, value.cast("double"))
    if _is_number(field.dataType):  # sigmoid: P(class 1)
        positive = value.cast("double")
        probabilities = F.array(F.lit(1.0) - positive, positive)
        prediction = (positive > F.lit(0.5)).cast("double")
    elif _is_vector_of_numbers(field.dataType):  # softmax over k classes
        probabilities = value.cast("array<double>")
        prediction = (F.array_position(probabilities, F.array_max(probabilities)) - F.lit(1)).cast("double")
    else:
        raise BindingError(f"predictionStyle='classification' needs a 1-unit (sigmoid) or k-unit (softmax) "
                           f"output; output '{output_name}' is {field.dataType.simpleString()}")
    vector = _array_to_vector(probabilities)
    return (scored.withColumn(raw_prediction_col, vector).withColumn(probability_col, vector)
            .withColumn(prediction_col, prediction))


def _array_to_vector(values: Column) -> Column:
    from pyspark.ml.functions import array_to_vector

    return array_to_vector(values)

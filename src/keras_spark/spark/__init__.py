"""The Spark side: one pass to a local cache (extract), scoring on the executors (score)."""


def is_spark_dataframe(x) -> bool:
    """True for classic and Spark Connect DataFrames, without importing Spark for other data."""
    module = type(x).__module__ or ""
    return module.startswith("pyspark.sql") and type(x).__name__ == "DataFrame"

"""keras-spark: train and score Keras 3 models on PySpark DataFrames.

    from keras_spark.models import KerasSparkModel

The package root stays light (no Keras import) because Spark executors import it
to reach the C++ core when they write the training cache.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name in ("KerasSparkModel", "load_model"):
        from keras_spark import models

        return getattr(models, name)
    raise AttributeError(f"module 'keras_spark' has no attribute {name!r}")

"""keras-spark: train and score Keras 3 models on PySpark DataFrames.

    from keras_spark.models import KerasSparkModel

The package root stays light (no Keras import) because Spark executors import it
to reach the C++ core when they write the training cache.
"""

import os

__version__ = "0.1.0"


def worker_rank() -> int:
    """This process's rank among the training processes of `fit(df, num_workers=N)`.

    Returns:
        int: 0 to N-1 inside a training process (in your callbacks), 0 anywhere else (the driver),
        so a callback that should act once (write a file, send a message) can test `worker_rank() == 0`
        on every backend.
    """
    return int(os.environ.get("KERAS_SPARK_RANK", "0"))


def __getattr__(name):
    if name in ("tune", "TuneResult"):  # keras_spark.tuning imports Optuna: only when asked for
        from keras_spark import tuning

        return getattr(tuning, name)
    if name in ("KerasSparkModel", "load_model"):
        from keras_spark import models

        return getattr(models, name)
    if name == "Checkpoint":  # fit(df, checkpoint=keras_spark.Checkpoint(...)); see keras_spark.checkpoints
        from keras_spark.checkpoints.options import Checkpoint

        return Checkpoint
    raise AttributeError(f"module 'keras_spark' has no attribute {name!r}")

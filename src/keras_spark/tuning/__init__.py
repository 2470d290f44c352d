"""Hyperparameter search with Optuna, its trials run as long-lived Spark tasks on the executors.

    from keras_spark.tuning import tune

`tune` is also `keras_spark.tune`. The driver creates the study and waits; the executors ask,
train and tell (trials.py).
"""

from keras_spark.tuning.search import TuneResult, tune
from keras_spark.tuning.trials import DATA_SETUP_ATTR, PID_ATTR, SETUP_ATTR, SURPLUS_ATTR, TASK_ATTR, TRACEBACK_ATTR

__all__ = ["tune", "TuneResult", "TRACEBACK_ATTR", "PID_ATTR", "TASK_ATTR", "SETUP_ATTR", "DATA_SETUP_ATTR",
           "SURPLUS_ATTR"]

"""The exceptions keras-spark raises: bad input (ValueErrors) and failed training workers."""


class BindingError(ValueError):
    """A Keras input or output cannot be fed from the DataFrame's schema.

    Raised before Spark reads any data: a missing column, a type that cannot
    feed the input, or a nesting depth that does not match the input's rank.
    """


class DataError(ValueError):
    """The DataFrame's values cannot be fed to the model.

    Raised after the Spark pass and before the first training step: a null,
    an array of the wrong or varying length, a bad partition id, no rows.
    """


class TrainingError(RuntimeError):
    """A data-parallel training worker failed (fit with num_workers > 1).

    The message is the worker's own error, taken out of Spark's wrapping.
    """


class ModelPackageError(ValueError):
    """The model cannot be packed for the executors: a custom object that cannot be pickled, a module of
    the user's it needs that cannot travel by value (a compiled extension outside site-packages), or a
    class of the model that Keras could not find by name there (not registered, not in `custom_objects`).

    Raised on the driver before any Spark job, naming the object or class; by the Spark ML stages too
    when they open their model (naming their `customObjects` Param) or load a saved stage.
    """


class ExecutorEnvironmentError(RuntimeError):
    """The Spark executors cannot run keras-spark as the driver does.

    Raised before keras-spark's first Spark job (keras_spark.spark.executors.check_executors):
    keras_spark missing on an executor, another version of it, a compiled core that does not load,
    an older Keras or a missing backend. The message names the executor's host and Python, and how to
    fix it: the wheel on every node, a shipped environment (keras_spark.deploy), or PYSPARK_PYTHON.
    """


class CheckpointMismatchError(ValueError):
    """The checkpoint at a `fit(checkpoint=...)` location belongs to another model, other data or other
    fit arguments, so resuming from it would not continue the same run.

    Raised on the driver after the Spark pass and before the first training step. The message names
    each part that differs (the checkpoint's value and this fit's) and the checkpoint. Give `fit` a new
    location to start afresh, or the same model, data and arguments to resume.
    """


class CheckpointStoreError(OSError):
    """The checkpoint store stayed unreachable: an operation failed on every retry.

    The message names the store (its location), the operation and path, the last error, and the last
    good checkpoint there (the one a later `fit` with the same location resumes from).
    """

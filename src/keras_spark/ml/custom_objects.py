"""The custom objects a Keras stage ships its model with: its `customObjects` Param, plus those of the
user's active `keras.saving.custom_object_scope` that the model names.

    with keras.saving.custom_object_scope({"Shift": Shift}):
        fitted = KerasEstimator(model=model).fit(df)   # opens the model with Shift; the KerasModel keeps it
    fitted.transform(df)                                # ships Shift to the executors, in the scope or not

Opening a model merges the stage's objects with the active scope (`model_package.custom_object_scope`).
"""

from __future__ import annotations

from keras_spark.model_package import named_in, scoped_custom_objects


def for_shipping(model_bytes: bytes, stage_objects: dict) -> dict:
    """What travels with the model: the stage's objects, and those of the active scope that the
    model's config names (a scope may hold unrelated objects that cannot be pickled)."""
    return {**named_in(model_bytes, scoped_custom_objects()), **stage_objects}


def to_bytes(objects: dict) -> bytes:
    """The objects pickled as model packages pickle them (by value where executors cannot import them)."""
    from keras_spark.model_package import pickle_custom_objects

    return pickle_custom_objects(objects)


def from_bytes(data: bytes) -> dict:
    """What to_bytes wrote."""
    from pyspark import cloudpickle

    return cloudpickle.loads(data)

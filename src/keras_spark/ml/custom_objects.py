"""The custom objects a Keras stage opens and ships its model with: its `customObjects` Param, merged
with the user's active `keras.saving.custom_object_scope`.

    with keras.saving.custom_object_scope({"Shift": Shift}):
        fitted = KerasEstimator(model=model).fit(df)   # opens the model with Shift; the KerasModel keeps it
    fitted.transform(df)                                # ships Shift to the executors, in the scope or not

Keras keeps one scope dict a thread, and entering a scope replaces it; so every load here passes
the merged dict, never a scope of keras-spark's own alone.
"""

from __future__ import annotations

import io
import zipfile


def active_scope() -> dict:
    """The objects of the `custom_object_scope` active on this thread ({} outside any)."""
    from keras_spark.model_package import scoped_custom_objects

    return scoped_custom_objects()


def for_opening(stage_objects: dict) -> dict:
    """What a model is opened with on the driver: the active scope's objects, then the stage's."""
    return {**active_scope(), **stage_objects}


def for_shipping(model_bytes: bytes, stage_objects: dict) -> dict:
    """What travels with the model: the stage's objects, and those of the active scope that the
    model's config names (a scope may hold unrelated objects that cannot be pickled)."""
    with zipfile.ZipFile(io.BytesIO(model_bytes)) as archive:
        config = archive.read("config.json").decode("utf-8")
    named = {key: obj for key, obj in active_scope().items() if f'"{key}"' in config}
    return {**named, **stage_objects}


def to_bytes(objects: dict) -> bytes:
    """The objects pickled as model packages pickle them (by value where executors cannot import them)."""
    from keras_spark.model_package import pickle_custom_objects

    return pickle_custom_objects(objects)


def from_bytes(data: bytes) -> dict:
    """What to_bytes wrote."""
    from pyspark import cloudpickle

    return cloudpickle.loads(data)

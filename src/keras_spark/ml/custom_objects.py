"""The custom objects a Keras stage ships its model with: its `customObjects` Param, plus those of the
user's active `keras.saving.custom_object_scope` that the model names.

    with keras.saving.custom_object_scope({"Shift": Shift}):
        fitted = KerasEstimator(model=model).fit(df)   # opens the model with Shift; the KerasModel keeps it
    fitted.transform(df)                                # ships Shift to the executors, in the scope or not

Opening a model merges the stage's objects with the active scope (`model_package.custom_object_scope`).
"""

from __future__ import annotations

from keras_spark.model_package import check_classes_resolve, named_in, scoped_custom_objects

_SET_PARAM = "set the stage's customObjects Param (customObjects={example} or setCustomObjects({example}))"
_SCOPE_AT_LOAD = ("load it inside keras.saving.custom_object_scope({example}), or import the module that registers "
                  "the class first; the stage's customObjects Param then keeps them")


def for_shipping(model_bytes: bytes, stage_objects: dict) -> dict:
    """What travels with the model: the stage's objects, and those of the active scope that the
    model's config names (a scope may hold unrelated objects that cannot be pickled)."""
    return {**named_in(model_bytes, scoped_custom_objects()), **stage_objects}


def check_stage_classes(model_bytes: bytes, objects: dict, *, loading: bool = False) -> None:
    """ModelPackageError naming each class of the stage's model that Keras could not find given `objects`
    (the stage's, with the active scope's), and the customObjects Param that gives it; `loading`: a saved
    stage being read (KerasModel.load, PipelineModel.load), where a scope around the load gives it."""
    if loading:
        check_classes_resolve(model_bytes, objects, consequence="the saved stage cannot open its model",
                              remedy=_SCOPE_AT_LOAD)
    else:
        check_classes_resolve(model_bytes, objects, consequence="the stage cannot open its model",
                              remedy=_SET_PARAM)


def to_bytes(objects: dict) -> bytes:
    """The objects pickled as model packages pickle them (by value where executors cannot import them)."""
    from keras_spark.model_package import pickle_custom_objects

    return pickle_custom_objects(objects)


def from_bytes(data: bytes) -> dict:
    """What to_bytes wrote."""
    from pyspark import cloudpickle

    return cloudpickle.loads(data)

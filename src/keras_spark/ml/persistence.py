"""Saving and loading KerasEstimator / KerasModel, alone or inside a Pipeline(Model); code is pickled only
where the user gives it (customObjects).

    <path>/metadata/     Spark ML's own JSON metadata (DefaultParamsWriter): class, uid, Params
    <path>/model.keras   the Keras model (architecture, weights, compile config, optimizer state)
    <path>/custom_objects.pkl  the customObjects Param, cloudpickled, where it is not empty

Both are written where Spark writes (the path's Hadoop file system; over Spark Connect, the
server's), so `PipelineModel.load(path)` works from a new session, classic or Connect.
"""

from __future__ import annotations

import os

from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter

from keras_spark.spark.session import is_connect, read_file, write_file

MODEL_FILE = "model.keras"
OBJECTS_FILE = "custom_objects.pkl"
_BYTES_PARAM = "kerasModelBytes"  # saved as the .keras file, not inside the JSON metadata
_OBJECTS_PARAM = "customObjects"  # classes and functions: pickled beside it, not JSON


def _class_name(cls) -> str:
    return f"{cls.__module__}.{cls.__name__}"


class KerasStageWriter(MLWriter):
    """Writes a KerasEstimator or KerasModel: Spark ML metadata plus the model as a .keras file."""

    def __init__(self, instance) -> None:
        super().__init__()
        self.instance = instance

    def _handleOverwrite(self, path: str) -> None:
        if not is_connect(self.sparkSession):
            return super()._handleOverwrite(path)
        from pyspark.ml.connect.readwrite import RemoteMLWriter

        RemoteMLWriter.handleOverwrite(path, True)

    def saveImpl(self, path: str) -> None:
        params = {p.name: v for p, v in self.instance._paramMap.items() if p.name not in (_BYTES_PARAM, _OBJECTS_PARAM)}
        objects = self.instance.getCustomObjects()
        extra = {"customObjectsFile": OBJECTS_FILE} if objects else None
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession, paramMap=params, extraMetadata=extra)
        if objects:
            from keras_spark.ml.custom_objects import to_bytes

            write_file(self.sparkSession, os.path.join(path, OBJECTS_FILE), to_bytes(objects))
        if self.instance.isDefined(self.instance.kerasModelBytes):
            # getKerasModelBytes, not the Param: a KerasModel writes the model its transform scores
            write_file(self.sparkSession, os.path.join(path, MODEL_FILE), self.instance.getKerasModelBytes())


class KerasStageReader(MLReader):
    """Reads what KerasStageWriter wrote, into a new instance of `cls` with the saved uid and Params."""

    def __init__(self, cls) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str):
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession, _class_name(self.cls))
        instance = self.cls()
        instance._resetUid(metadata["uid"])
        instance._setDefault(**metadata.get("defaultParamMap", {}))
        instance._set(**metadata["paramMap"])
        if metadata.get("customObjectsFile"):
            from keras_spark.ml.custom_objects import from_bytes

            objects = from_bytes(read_file(self.sparkSession, os.path.join(path, metadata["customObjectsFile"])))
            instance._set(**{_OBJECTS_PARAM: objects})
        model_path = os.path.join(path, MODEL_FILE)
        try:
            model_bytes = read_file(self.sparkSession, model_path)
        except Exception as error:
            if self.cls.__name__ == "KerasEstimator" and "PATH_NOT_FOUND" in str(error):
                return instance  # an estimator saved before it was given a model
            raise
        from keras_spark.ml.custom_objects import check_stage_classes, for_shipping

        # The active scope's objects the model names are kept, so the stage opens outside the scope too.
        objects = for_shipping(model_bytes, instance.getCustomObjects())
        check_stage_classes(model_bytes, objects, loading=True)
        if objects:
            instance._set(**{_OBJECTS_PARAM: objects})
        return instance._set(**{_BYTES_PARAM: model_bytes})

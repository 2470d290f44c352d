"""keras_spark.ml stages follow Spark ML's conventions: getX/setX for every Param, a readable
explainParams, Sequential models, an outputCol, custom objects, and one model for transform and save."""

import keras
import pytest
from ml_frames import classifier

from keras_spark.ml import KerasEstimator, KerasModel
from keras_spark.ml.estimator import model_to_keras_bytes


class Shift(keras.layers.Layer):
    """Not registered: the stages know it only through customObjects or the user's custom_object_scope."""

    def __init__(self, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.offset = offset

    def call(self, x):
        return x + self.offset

    def get_config(self):
        return dict(super().get_config(), offset=self.offset)


def _example_values() -> dict:
    """A value for each Param, other than its default (a new Param needs one here)."""
    return {
        "kerasModelBytes": model_to_keras_bytes(classifier(width=2)), "inputCols": {"features": "f"},
        "labelCols": {"label": "y"}, "predictionStyle": "regression", "predictionCol": "p", "probabilityCol": "q",
        "rawPredictionCol": "r", "predictBatchSize": 7, "outputCol": "scores", "customObjects": {"Shift": Shift},
        "epochs": 3, "batchSize": 5, "learningRate": 0.25, "partitionCol": "part", "numPartitions": 4,
        "numWorkers": 2, "validationFraction": 0.5, "seed": 9, "verbose": 2,
    }


# -- getters and setters ------------------------------------------------------------------
@pytest.mark.backend_independent
@pytest.mark.parametrize("stage_class", [KerasEstimator, KerasModel])
def test_every_param_has_a_getter_and_a_setter_that_round_trip(stage_class):
    stage, values = stage_class(), _example_values()
    assert {p.name for p in stage.params} <= set(values)
    for param in stage.params:
        suffix = param.name[0].upper() + param.name[1:]
        setter, getter = getattr(stage, f"set{suffix}", None), getattr(stage, f"get{suffix}", None)
        assert setter is not None and getter is not None, f"{stage_class.__name__}.{param.name}"
        assert setter(values[param.name]) is stage
        assert getter() == values[param.name], param.name

"""Checkpoints of long fits, on any store: the record, the store, and the driver's use of them.

- `options.Checkpoint`: what users pass (`fit(df, checkpoint=...)`);
- `store.CheckpointStore`: commits and reads checkpoints through pyarrow.fs (fsspec where it has none);
- `record`: what a checkpoint holds (variables' bytes, epoch and step, History, the feed's seed) and
  the fingerprint of the run it belongs to;
- `driver.DriverCheckpoints`: resume and commit every epoch in a fit on the driver.
"""

from keras_spark.checkpoints.options import Checkpoint
from keras_spark.checkpoints.store import CheckpointStore

__all__ = ["Checkpoint", "CheckpointStore"]

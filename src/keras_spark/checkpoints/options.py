"""`keras_spark.Checkpoint`: where a fit's checkpoints go and how many are kept."""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where `fit(df, checkpoint=...)` commits a checkpoint after every epoch, and resumes from.

    Args:
        location (str | os.PathLike): a local or mounted directory (`/mnt/nfs/run1`, `/dbfs/...`), or a
            URI: `s3://bucket/prefix`, `gs://...`, `hdfs://...` (pyarrow.fs), or any scheme fsspec knows
            (`abfs://`, `abfss://`, ...). One location is one run: a fit given a location that holds
            checkpoints of this model, data and arguments resumes from the last good one.
        keep (int): default 3: the newest checkpoints kept; older ones are deleted after each commit.
        storage_options (dict | None): the file system's own keywords (`pyarrow.fs.S3FileSystem`'s
            `access_key`, `endpoint_override`, ...; `GcsFileSystem`'s; fsspec's for other schemes).
            Default None: credentials and endpoints as the store's usual variables set them
            (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, GCS's application default credentials).
        retries (int): default 5: tries of each store call before fit fails with a CheckpointStoreError.
        backoff_s (float): default 0.2: the wait after the first failed try, doubled after each.

    Example:
        ```python
        model.fit(df, epochs=20, checkpoint="s3://bucket/runs/churn-1")             # the defaults
        model.fit(df, epochs=20, checkpoint=keras_spark.Checkpoint("/mnt/nfs/run1", keep=5))
        ```
    """

    location: str
    keep: int = 3
    storage_options: dict | None = None
    retries: int = 5
    backoff_s: float = 0.2

    def __post_init__(self):
        if not isinstance(self.location, (str, os.PathLike)) or not os.fspath(self.location):
            raise TypeError(f"a checkpoint location is a path or a URI string; got {self.location!r}")
        object.__setattr__(self, "location", os.fspath(self.location))
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise ValueError(f"keep must be a positive integer (checkpoints kept); got {self.keep!r}")

    @classmethod
    def of(cls, value) -> Checkpoint:
        """A Checkpoint from what `fit(checkpoint=...)` takes: a Checkpoint, a path or a URI."""
        return value if isinstance(value, cls) else cls(value)

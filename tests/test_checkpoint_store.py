"""The checkpoint store on its own: commits, keep-last-K, fallback past a corrupt latest, retries, S3.

No Spark and no model: what these tests check cannot depend on the Keras backend.
"""

import json
import os
import warnings

import pytest

from keras_spark.checkpoints.store import MANIFEST, CheckpointStore
from keras_spark.errors import CheckpointStoreError

pytestmark = pytest.mark.backend_independent

FINGERPRINT = {"model": {"layers": ["Dense abc"]}, "data": {"rows": 10}, "fit": {"batch_size": 4}}


def _commit(store, epoch, payload=None):
    payload = payload if payload is not None else f"state of epoch {epoch}".encode()
    return store.commit({"state.bin": payload, "record.json": b"{}"}, epoch=epoch, step=0, fingerprint=FINGERPRINT)


def test_a_commit_reads_back_with_its_manifest(tmp_path):
    store = CheckpointStore(str(tmp_path / "run"))
    name = _commit(store, 1, b"\x00\x01weights")
    latest = store.latest()
    assert latest.name == name and latest.epoch == 1 and latest.step == 0
    assert latest.files["state.bin"] == b"\x00\x01weights"
    assert latest.manifest["fingerprint"] == FINGERPRINT
    assert latest.manifest["files"]["state.bin"]["bytes"] == len(b"\x00\x01weights")
    assert not [f for f in os.listdir(tmp_path / "run" / name) if f.startswith(".")]  # no temporary left


def test_an_empty_location_has_no_latest(tmp_path):
    assert CheckpointStore(str(tmp_path / "nothing here")).latest() is None


def test_commits_never_overwrite_and_keep_the_newest(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=2)
    names = [_commit(store, epoch) for epoch in (1, 2, 3, 4, 1)]  # epoch 1 again: a new name all the same
    assert len(set(names)) == 5
    assert sorted(os.listdir(tmp_path)) == sorted(names[-2:])
    assert store.latest().files["state.bin"] == b"state of epoch 1"


def test_a_checkpoint_without_its_manifest_is_not_one(tmp_path):
    store = CheckpointStore(str(tmp_path))
    _commit(store, 1)
    partial = _commit(store, 2)
    os.remove(tmp_path / partial / MANIFEST)  # as if the writer died before its last file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not a corrupt checkpoint: passed over without a warning
        assert store.latest().epoch == 1


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete the state", "garble the manifest"])
def test_a_corrupt_latest_falls_back_to_the_one_before(tmp_path, damage):
    store = CheckpointStore(str(tmp_path))
    _commit(store, 1)
    bad = _commit(store, 2)
    state, manifest = tmp_path / bad / "state.bin", tmp_path / bad / MANIFEST
    if damage == "flip a byte":
        data = bytearray(state.read_bytes())
        data[0] ^= 1
        state.write_bytes(bytes(data))
    elif damage == "truncate":
        state.write_bytes(state.read_bytes()[:-1])
    elif damage == "delete the state":
        state.unlink()
    else:
        manifest.write_text("{not json")
    with pytest.warns(RuntimeWarning, match=bad):
        latest = store.latest()
    assert latest.epoch == 1 and latest.files["state.bin"] == b"state of epoch 1"


def test_unfinished_checkpoints_older_than_the_kept_ones_are_swept(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=1)
    _commit(store, 1)
    unfinished = _commit(store, 2)
    os.remove(tmp_path / unfinished / MANIFEST)
    newest = _commit(store, 2)
    assert os.listdir(tmp_path) == [newest]


class _FlakyFileSystem:
    """A pyarrow file system whose writes fail `failures` times first (a throttled or reset store)."""

    def __init__(self, inner, failures):
        self._inner, self.failures, self.calls = inner, failures, 0

    def open_output_stream(self, path):
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise OSError("AWS Error SLOW_DOWN during PutObject operation: Please reduce your request rate")
        return self._inner.open_output_stream(path)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_brief_store_errors_are_retried(tmp_path):
    import pyarrow.fs as pafs

    flaky = _FlakyFileSystem(pafs.LocalFileSystem(), failures=3)
    store = CheckpointStore("s3://bucket/run", retries=5, backoff_s=0.001, file_system=(flaky, str(tmp_path)))
    _commit(store, 1)
    assert flaky.failures == 0 and flaky.calls == 3 + 3  # 3 failed tries, then state, record, manifest
    assert store.latest().epoch == 1


def test_a_store_that_stays_down_names_itself_the_operation_and_the_last_good_checkpoint(tmp_path):
    import pyarrow.fs as pafs

    flaky = _FlakyFileSystem(pafs.LocalFileSystem(), failures=0)
    store = CheckpointStore("s3://bucket/run", retries=3, backoff_s=0.001, file_system=(flaky, str(tmp_path)))
    good = _commit(store, 1)
    flaky.failures = 10**6
    with pytest.raises(CheckpointStoreError) as raised:
        _commit(store, 2)
    message = str(raised.value)
    assert "s3://bucket/run" in message and "failed to write" in message and "3 times" in message
    assert f"s3://bucket/run/{good}" in message and "SLOW_DOWN" in message


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep must be a positive integer"):
        CheckpointStore(str(tmp_path), keep=0)


def test_checkpoints_on_s3_through_a_real_s3_api(s3_bucket):
    store = CheckpointStore(f"{s3_bucket}/runs/one", keep=2)
    names = [_commit(store, epoch) for epoch in (1, 2, 3)]
    fresh = CheckpointStore(f"{s3_bucket}/runs/one")  # another process, the same location
    assert fresh.committed() == names[-2:]
    latest = fresh.latest()
    assert latest.name == names[-1] and latest.files["state.bin"] == b"state of epoch 3"
    assert json.loads(json.dumps(latest.manifest))["fingerprint"] == FINGERPRINT


def test_a_scheme_pyarrow_lacks_goes_through_fsspec(tmp_path):
    """abfs://, abfss:// and others take this path: fsspec's file system inside pyarrow's PyFileSystem."""
    import uuid

    location = f"memory://checkpoints-{uuid.uuid4().hex}/run"  # fsspec's in-memory file system
    store = CheckpointStore(location, keep=1)
    _commit(store, 1)
    name = _commit(store, 2)
    assert CheckpointStore(location).committed() == [name]
    assert CheckpointStore(location).latest().files["state.bin"] == b"state of epoch 2"


def test_s3_endpoint_and_credentials_from_storage_options(s3_bucket, monkeypatch):
    """Without the AWS variables, storage_options are pyarrow.fs.S3FileSystem's own keywords."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.delenv(name)
    scheme, _, host = endpoint.partition("://")
    options = {"endpoint_override": host, "scheme": scheme, "region": "us-east-1", "access_key": "testing",
               "secret_key": "testing"}
    store = CheckpointStore(f"{s3_bucket}/explicit", storage_options=options)
    name = _commit(store, 1)
    assert CheckpointStore(f"{s3_bucket}/explicit", storage_options=options).latest().name == name

"""Checkpoints on any file system, committed safely: the one place keras-spark writes and reads them.

A location is a local or mounted path (`/mnt/nfs/run1`, `/dbfs/...`) or a URI: `s3://`, `gs://`,
`hdfs://` through `pyarrow.fs`, and any scheme pyarrow lacks (`abfs://`, `abfss://`, ...) through
fsspec. Credentials and endpoints come as users set them for their store (the AWS variables, including
`AWS_ENDPOINT_URL`; GCS's application default credentials), or as `storage_options`.

A checkpoint is a directory `<location>/ckpt-<seq>-e<epoch>-s<step>` whose files are written first and
whose `MANIFEST.json` (each file's size and SHA-256, versions, the run's fingerprint) is written last:
without its manifest a directory is not a checkpoint (object stores have no atomic rename, so the
manifest is the commit, as in Orbax). Nothing is overwritten: every commit takes a new sequence number.
The newest checkpoint whose files match its manifest is the latest; a partial or corrupt one is passed
over for the one before it. Every store call is retried with backoff on errors that can pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
import uuid
import warnings
from collections.abc import Callable

from keras_spark.errors import CheckpointStoreError

MANIFEST = "MANIFEST.json"
FORMAT = 1
_NAME = re.compile(r"^ckpt-(\d{8})-e(\d+)-s(\d+)$")
# Errors that say the request was wrong rather than that the store was briefly away: never retried.
_PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def _s3_options() -> dict:
    """S3FileSystem's endpoint and region from the standard AWS variables (its constructor reads neither)."""
    options = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, rest = endpoint.rpartition("://")
        options["endpoint_override"] = rest.rstrip("/")
        if scheme:
            options["scheme"] = scheme
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return options


def open_file_system(location: str, storage_options: dict | None = None):
    """(pyarrow file system, root path inside it) for a checkpoint location.

    `storage_options` are the file system's own keywords (`pyarrow.fs.S3FileSystem`'s `access_key`,
    `endpoint_override`, ...; `GcsFileSystem`'s; fsspec's for other schemes).
    """
    import pyarrow.fs as pafs

    options = dict(storage_options or {})
    scheme, sep, rest = location.partition("://")
    if not sep:  # a local or mounted path
        return pafs.LocalFileSystem(), os.path.abspath(location)
    scheme = scheme.lower()
    if scheme in ("s3", "s3a"):
        return pafs.S3FileSystem(**{**_s3_options(), **options}), rest.rstrip("/")
    if scheme in ("gs", "gcs"):
        return pafs.GcsFileSystem(**options), rest.rstrip("/")
    if scheme in ("file", "hdfs", "viewfs") and not options:
        fs, path = pafs.FileSystem.from_uri(location)
        return fs, path.rstrip("/") or "/"
    try:
        import fsspec
    except ImportError as error:
        raise ImportError(f"keras-spark: the checkpoint location {location!r} needs fsspec and its package for "
                          f"{scheme}:// (pyarrow has no file system for it): pip install fsspec "
                          f"{'adlfs' if scheme.startswith('abfs') or scheme == 'az' else ''}".rstrip()) from error
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = fsspec.core.url_to_fs(location, **options)
    return PyFileSystem(FSSpecHandler(fs)), path.rstrip("/")


@dataclasses.dataclass(frozen=True)
class StoredCheckpoint:
    """One committed checkpoint: its directory name, its manifest, and its files' bytes once read."""

    name: str
    manifest: dict
    files: dict[str, bytes]

    @property
    def epoch(self) -> int:
        return int(self.manifest["epoch"])

    @property
    def step(self) -> int:
        return int(self.manifest["step"])


class CheckpointStore:
    """Commit, find and prune checkpoints under one location, retrying brief store errors.

    Example:
        store = CheckpointStore("s3://bucket/runs/1", keep=3)
        store.commit({"state.bin": payload}, epoch=2, step=0, fingerprint={...})
        latest = store.latest()  # StoredCheckpoint or None
    """

    def __init__(self, location: str, *, keep: int = 3, storage_options: dict | None = None,
                 retries: int = 5, backoff_s: float = 0.2, file_system=None):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive integer (checkpoints kept); got {keep!r}")
        self.location = str(location)
        self.keep = keep
        self.retries = max(1, int(retries))
        self.backoff_s = float(backoff_s)
        self._fs, self._root = (file_system if file_system is not None
                                else open_file_system(self.location, storage_options))
        self.last_good: str | None = None  # the newest checkpoint known complete (named in store errors)
        self.stats = {"commits": 0, "commit_s": 0.0, "bytes_written": 0}

    # -- the file system, retried ------------------------------------------------------
    def _call(self, operation: str, path: str, fn: Callable, *args):
        for attempt in range(self.retries):
            try:
                return fn(*args)
            except _PERMANENT:
                raise
            except OSError as error:  # pyarrow's store errors (throttling, resets, timeouts) are OSErrors
                last = error
                if attempt + 1 < self.retries:
                    time.sleep(self.backoff_s * 2 ** attempt)
        good = f"{self.location}/{self.last_good}" if self.last_good else "none"
        raise CheckpointStoreError(
            f"keras-spark: the checkpoint store {self.location!r} failed to {operation} {path!r} "
            f"{self.retries} times: {last}. The last good checkpoint is {good}; fix the store (or its "
            f"credentials) and run fit again with the same checkpoint location to resume from it"
        ) from last

    def _path(self, *parts: str) -> str:
        return "/".join([self._root.rstrip("/"), *parts]) if self._root not in ("", "/") else "/".join(parts)

    def _write(self, path: str, data: bytes) -> None:
        def write():
            with self._fs.open_output_stream(path) as stream:
                stream.write(data)

        self._call("write", path, write)

    def _read(self, path: str) -> bytes:
        def read():
            with self._fs.open_input_stream(path) as stream:
                return stream.read()

        return self._call("read", path, read)

    def _exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self._call("stat", path, self._fs.get_file_info, path).type != pafs.FileType.NotFound

    def names(self) -> list[str]:
        """Checkpoint directory names under the location (committed or not), oldest first."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self._root, allow_not_found=True)
        infos = self._call("list", self._root, self._fs.get_file_info, selector)
        found = [info.base_name for info in infos if info.type == pafs.FileType.Directory]
        return sorted(name for name in found if _NAME.match(name))

    # -- commits ---------------------------------------------------------------------
    def commit(self, files: dict[str, bytes], *, epoch: int, step: int, fingerprint: dict,
               extra: dict | None = None) -> str:
        """Write `files` under a new checkpoint name, then its manifest; prune to the last `keep`. The name."""
        started = time.perf_counter()
        names = self.names()
        seq = 1 + max((int(_NAME.match(n).group(1)) for n in names), default=0)
        name = f"ckpt-{seq:08d}-e{epoch}-s{step}"
        directory = self._path(name)
        self._call("create", directory, self._fs.create_dir, directory)
        for file_name, data in files.items():
            self._write(f"{directory}/{file_name}", data)
        manifest = {
            "format": FORMAT, "name": name, "epoch": int(epoch), "step": int(step), "created": time.time(),
            "files": {f: {"bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()} for f, d in files.items()},
            "fingerprint": fingerprint, **(extra or {}),
        }
        self._write_manifest(directory, json.dumps(manifest, indent=1, sort_keys=True).encode())
        self.last_good = name
        self._prune([*names, name])
        self.stats["commits"] += 1
        self.stats["commit_s"] += time.perf_counter() - started
        self.stats["bytes_written"] += sum(len(d) for d in files.values())
        return name

    def _write_manifest(self, directory: str, data: bytes) -> None:
        import pyarrow.fs as pafs

        final = f"{directory}/{MANIFEST}"
        if isinstance(self._fs, pafs.LocalFileSystem):  # a rename is atomic here: never a half manifest
            temporary = f"{directory}/.{MANIFEST}.{uuid.uuid4().hex}"
            self._write(temporary, data)
            self._call("rename", temporary, self._fs.move, temporary, final)
        else:  # an object store's PUT is atomic: the object appears whole or not at all
            self._write(final, data)

    def _prune(self, names: list[str]) -> None:
        """Delete all but the newest `keep` committed checkpoints, and unfinished ones older than those."""
        committed = [n for n in names if self._exists(self._path(n, MANIFEST))]
        kept = set(committed[-self.keep:])
        oldest_kept = min(kept) if kept else None
        for name in names:
            if name not in kept and (name in committed or (oldest_kept and name < oldest_kept)):
                self._call("delete", self._path(name), self._fs.delete_dir, self._path(name))

    # -- reading back ------------------------------------------------------------------
    def committed(self) -> list[str]:
        """Names of the checkpoints with a manifest, oldest first (their files not yet checked)."""
        return [n for n in self.names() if self._exists(self._path(n, MANIFEST))]

    def load(self, name: str) -> StoredCheckpoint:
        """One checkpoint, its files checked against its manifest; ValueError when they do not match."""
        manifest = json.loads(self._read(self._path(name, MANIFEST)))
        if manifest.get("format") != FORMAT:
            raise ValueError(f"checkpoint format {manifest.get('format')!r}; this keras-spark reads {FORMAT}")
        files = {}
        for file_name, expected in manifest["files"].items():
            data = self._read(self._path(name, file_name))
            if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
                raise ValueError(f"{file_name} has {len(data)} bytes or a checksum other than its manifest's")
            files[file_name] = data
        return StoredCheckpoint(name, manifest, files)

    def latest(self) -> StoredCheckpoint | None:
        """The newest checkpoint whose files match its manifest; a corrupt or partial one falls back."""
        for name in reversed(self.committed()):
            try:
                checkpoint = self.load(name)
            except (ValueError, KeyError, FileNotFoundError) as error:
                warnings.warn(f"keras-spark: skipping checkpoint {self.location}/{name}: {error}; "
                              f"falling back to the one before it", RuntimeWarning, stacklevel=2)
                continue
            self.last_good = name
            return checkpoint
        return None

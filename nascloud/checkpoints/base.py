"""The checkpoint store protocol: one per job prefix in a bucket (file://, s3://, gs://).

Layout under `<bucket>/<job-id>/` is documented in the README ("The bucket").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

from nascloud.errors import StorageError


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: str  # the manifest's sequence number, zero-padded ("000042")
    created_at: Optional[float]  # unix seconds; None (like files and bytes) for a damaged snapshot
    files: Optional[int]
    bytes: Optional[int]
    # committed: named by HEAD, or an older snapshot HEAD's chain still keeps;
    # uncommitted: a publish that never swung HEAD (killed, or beaten by another writer);
    # damaged: its manifest is missing or unreadable: restore skips it;
    # fallback: older than a damaged snapshot on HEAD's chain, so whether the chain holds it is
    #   unknown: restore tries these, newest first, when the chain's snapshots are damaged.
    status: str

    @property
    def committed(self) -> bool:
        return self.status == "committed"


class CheckpointStore(Protocol):
    url: str  # the job prefix this store writes under, e.g. s3://bucket/job-id
    # Set by restore(): why the snapshot asked for was not the one restored (damaged), else None.
    last_restore_warning: Optional[str]

    def publish(self, local_dir: Path) -> str:
        """Upload what changed, write a manifest create-only, swing HEAD to it. Returns its id.
        Raises StaleWriterError if another writer advanced HEAD since this store last read it."""

    def restore(self, local_dir: Path, snapshot_id: Optional[str] = None) -> Optional[str]:
        """Make local_dir equal to a verified snapshot (latest committed by default), falling back
        to the one before if it is damaged. None when the job has no snapshot yet."""

    def list(self) -> list[SnapshotInfo]:
        """Snapshots kept for this job, oldest first."""

    def put_json(self, name: str, value: dict) -> None:
        """A small object beside the snapshots (agent/heartbeat.json, budget.json, ...), overwritten."""

    def get_json(self, name: str) -> Optional[dict]:
        """The small object, or None if it does not exist."""

    def put_file(self, name: str, path: Path) -> None:
        """A file beside the snapshots (data/<sha>.npz, bundle/job.yaml, results/...)."""

    def get_file(self, name: str, path: Path) -> bool:
        """Download name to path; False if it does not exist."""

    def exists(self, name: str) -> bool: ...


def storage_error(error: OSError, verb: str, where: object) -> StorageError:
    """An OSError as the error family: what could not be done to which path, and the system's reason."""
    reason = error.strerror or str(error) or type(error).__name__
    return StorageError(f"cannot {verb} {where}: {reason[:1].lower()}{reason[1:]}")


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the job prefix, e.g. "blobs/ab12..."
    size: int
    modified: float  # unix seconds of the last write


class ObjectStore(Protocol):
    """The tiny per-backend object API the shared core (store.py) is written over. Keys are relative
    to the job prefix. Versions are opaque strings (S3 ETag, GCS generation, a hash on a local disk)."""

    url: str

    def get(self, key: str) -> Optional[tuple[bytes, str]]:
        """The object's bytes and version, or None if it does not exist."""

    def put(self, key: str, data: bytes) -> None:
        """Write (overwrite) the object whole: a reader sees the old or the new bytes, never a mix."""

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create the object only if no object has that key; False if one exists."""

    def put_if_match(self, key: str, data: bytes, version: Optional[str]) -> Optional[str]:
        """Overwrite only if the current version is `version` (None: only if absent). Returns the new
        version, or None when the precondition failed."""

    def upload(self, key: str, path: Path) -> None:
        """Write a local file (possibly large) to the object, overwriting."""

    def download(self, key: str, path: Path) -> bool:
        """Copy the object into the local file `path`; False if it does not exist."""

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Objects whose key starts with prefix, in no particular order."""

    def delete(self, key: str) -> None:
        """Remove the object; quiet if it is already gone."""


@dataclass
class RequestCount:
    """Requests as buckets bill them: class A (writes and lists) and class B (reads). Deletes are free."""

    class_a: int = 0
    class_b: int = 0


class CountedObjects:
    """An ObjectStore that counts the requests it makes, for the job's ledger of bucket charges."""

    _CLASS_A = ("put", "put_if_absent", "put_if_match", "upload", "list")
    _CLASS_B = ("get", "download")

    def __init__(self, objects: ObjectStore):
        self._objects = objects
        self.url = objects.url
        self.requests = RequestCount()

    def __getattr__(self, name: str):
        method = getattr(self._objects, name)
        if name not in self._CLASS_A + self._CLASS_B:
            return method

        def counted(*args, **kwargs):
            if name in self._CLASS_A:
                self.requests.class_a += 1
            else:
                self.requests.class_b += 1
            return method(*args, **kwargs)

        return counted

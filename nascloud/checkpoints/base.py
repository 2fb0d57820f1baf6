"""The checkpoint store protocol: one per job prefix in a bucket (file://, s3://, gs://).

Layout under `<bucket>/<job-id>/` is documented in the README ("The bucket").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: str  # the manifest's sequence number, zero-padded ("000042")
    created_at: float  # unix seconds
    files: int
    bytes: int
    committed: bool  # named by HEAD, or an older snapshot HEAD's chain still keeps


class CheckpointStore(Protocol):
    url: str  # the job prefix this store writes under, e.g. s3://bucket/job-id

    def publish(self, local_dir: Path) -> str:
        """Upload what changed, write a manifest create-only, swing HEAD to it. Returns its id.
        Raises StaleWriterError if another writer advanced HEAD since this store last read it."""

    def restore(self, local_dir: Path, snapshot_id: Optional[str] = None) -> Optional[str]:
        """Make local_dir equal to a verified snapshot (latest committed by default), falling back
        to the one before if it is damaged. None when the job has no snapshot yet."""

    def list(self) -> list[SnapshotInfo]:
        """Snapshots kept for this job, oldest first."""

    def put_json(self, name: str, value: dict) -> None:
        """A small object beside the snapshots (agent/heartbeat.json, lease.json, ...), overwritten."""

    def get_json(self, name: str) -> Optional[dict]:
        """The small object, or None if it does not exist."""

    def put_file(self, name: str, path: Path) -> None:
        """A file beside the snapshots (data/<sha>.npz, bundle/job.yaml, results/...)."""

    def get_file(self, name: str, path: Path) -> bool:
        """Download name to path; False if it does not exist."""

    def exists(self, name: str) -> bool: ...

"""Checkpoint stores: `open_store(url)` for file:///path, s3://bucket/prefix and gs://bucket/prefix.

Cloud SDKs are imported only when a store of that kind is opened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nascloud.checkpoints.base import CheckpointStore, SnapshotInfo
from nascloud.checkpoints.store import PublishStats, SnapshotStore
from nascloud.errors import UsageError

__all__ = ["CheckpointStore", "SnapshotInfo", "SnapshotStore", "PublishStats", "StoreURL", "open_store",
           "parse_url", "job_url"]

_BUCKET = {
    "s3": re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"),
    "gs": re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$"),
}
_RULES = {"s3": "3-63 lower-case letters, digits, dots and hyphens, a letter or digit at each end",
          "gs": "3-222 lower-case letters, digits, dots, hyphens and underscores, a letter or digit at each end"}
_FORMS = "file:///path, file://./relative, s3://bucket/prefix or gs://bucket/prefix"


@dataclass(frozen=True)
class StoreURL:
    scheme: str  # file | s3 | gs
    bucket: str  # the directory for file://
    prefix: str  # no leading or trailing slash; "" for the bucket's root

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")


def parse_url(url: str) -> StoreURL:
    """Validate a store URL. Relative file:// paths resolve against the current directory."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise UsageError(f"not a bucket URL: {url!r}; use {_FORMS}")
    if "?" in rest or "#" in rest:  # in a GCS object name '?' breaks its URLs
        raise UsageError(f"malformed URL {url!r}: '?' and '#' cannot be in a bucket URL (a URL reads them as a "
                         "query and a fragment); choose a name without them")
    if scheme == "file":
        host = rest.partition("/")[0]
        if host == "localhost":
            rest = rest[len("localhost"):]
        elif host and not host.startswith((".", "~")):  # file://./x, file://~/x: this machine, relative
            raise UsageError(f"file URL {url!r} names the host {host!r}: a file:// bucket is a folder on this "
                             f"machine; write file:///{rest} (absolute) or file://./{rest} (relative)")
        if not rest:
            raise UsageError(f"malformed file URL {url!r}: no path; use {_FORMS}")
        return StoreURL("file", str(Path(rest).expanduser().resolve()), "")
    if scheme not in _BUCKET:
        raise UsageError(f"unknown scheme {scheme!r} in {url!r}; use {_FORMS}")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET[scheme].match(bucket):
        raise UsageError(f"malformed {scheme}:// URL {url!r}: {bucket!r} is not a valid bucket name ({_RULES[scheme]})")
    prefix = prefix.strip("/")
    if "//" in prefix or any(part in (".", "..") for part in prefix.split("/")):
        raise UsageError(f"malformed {scheme}:// URL {url!r}: empty, '.' or '..' parts in the prefix")
    return StoreURL(scheme, bucket, prefix)


def job_url(bucket_url: str, job_id: str) -> str:
    """The job's prefix URL under a bucket URL, absolute (a relative file:// is resolved now, so an
    agent started in another directory finds the same place)."""
    return f"{parse_url(bucket_url)}".rstrip("/") + f"/{job_id}"


def open_store(url: str, keep: int = 3, grace_seconds: float = 3600.0) -> SnapshotStore:
    """A CheckpointStore on the job prefix `url`. Opening does no network call; a missing bucket is
    reported (UsageError naming it) by the first operation."""
    parsed = parse_url(url)
    if parsed.scheme == "file":
        from nascloud.checkpoints.local import LocalObjects

        objects = LocalObjects(Path(parsed.bucket))
    elif parsed.scheme == "s3":
        from nascloud.checkpoints.s3 import S3Objects

        objects = S3Objects(parsed.bucket, parsed.prefix)
    else:
        from nascloud.checkpoints.gcs import GCSObjects

        objects = GCSObjects(parsed.bucket, parsed.prefix)
    return SnapshotStore(objects, keep=keep, grace_seconds=grace_seconds)

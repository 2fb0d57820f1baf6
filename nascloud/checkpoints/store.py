"""The checkpoint store's logic, written once over a backend's tiny object API (base.ObjectStore).

A snapshot is published in three steps, so a writer killed at any point leaves the last committed
snapshot intact:
  1. content: every file whose sha256 the base snapshot does not already name goes to blobs/<sha256>;
  2. manifests/<seq>.json (paths, sizes, hashes, parent) is created create-only;
  3. HEAD is swung to it by compare-and-swap against the version this writer last saw.
A snapshot is committed once HEAD names it. A writer whose view of HEAD is stale gets StaleWriterError.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional

from nascloud.checkpoints.base import CountedObjects, ObjectStore, SnapshotInfo, storage_error
from nascloud.errors import NascloudError, StaleWriterError, UsageError
from nascloud.hints import command

HEAD = "HEAD"
MANIFESTS = "manifests/"
BLOBS = "blobs/"
RESERVED = ("HEAD", "manifests/", "blobs/")
# Restore stages downloads here, inside the target (same file system, so the final moves are
# renames); publish never uploads it and a restore killed half-way leaves nothing else behind.
STAGING = ".nascloud-restore"
# A file's cached hash is trusted only if it was last modified this long before it was hashed:
# a write within the file system's timestamp granularity could otherwise keep size and mtime.
RACY_SECONDS = 2.0
CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    snapshot_id: str
    parent: Optional[str]
    created_at: float
    files: dict[str, FileEntry]

    def to_bytes(self) -> bytes:
        return json.dumps({
            "format": 1, "snapshot_id": self.snapshot_id, "parent": self.parent,
            "created_at": self.created_at,
            "files": {p: {"sha256": e.sha256, "size": e.size} for p, e in sorted(self.files.items())},
        }, indent=0).encode()

    @staticmethod
    def from_bytes(data: bytes) -> "Manifest":
        raw = json.loads(data)
        files = {p: FileEntry(str(e["sha256"]), int(e["size"])) for p, e in raw["files"].items()}
        return Manifest(str(raw["snapshot_id"]), raw.get("parent"), float(raw["created_at"]), files)


@dataclass
class PublishStats:
    """What the last publish cost: figures for logs and the benchmark."""

    snapshot_id: str
    files: int = 0
    uploaded_files: int = 0
    uploaded_bytes: int = 0  # blob bytes + manifest + HEAD
    seconds: float = 0.0
    unchanged: bool = False  # the directory equalled the base snapshot: nothing was written


class Damaged(Exception):
    """A snapshot that cannot be restored exactly as its manifest says (internal to restore)."""


@dataclass
class _HashCache:
    """path -> (size, mtime_ns, ctime_ns, ino, sha256) of local files already hashed."""

    entries: dict[str, tuple[int, int, int, int, str]] = field(default_factory=dict)

    def sha256(self, rel: str, path: Path) -> tuple[str, int]:
        st = path.stat()
        key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        hit = self.entries.get(rel)
        if hit and hit[:4] == key:
            return hit[4], st.st_size
        digest = file_sha256(path)
        if time.time() - st.st_mtime_ns / 1e9 > RACY_SECONDS:
            self.entries[rel] = (*key, digest)
        return digest, st.st_size


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def _local_disk(verb: str, path: Path) -> Iterator[None]:
    """This machine's side failing (a folder that cannot be read or written) as the error family. The
    bucket's side raises the family itself, so an OSError here is always about a local path."""
    try:
        yield
    except OSError as error:
        raise storage_error(error, verb, error.filename or path) from None


def _raise(error: OSError) -> None:
    raise error  # os.walk would skip an unreadable folder, and a snapshot would silently lack it


def _seq(snapshot_id: str) -> int:
    return int(snapshot_id)


def _snapshot_id(seq: int) -> str:
    return f"{seq:06d}"


def check_name(name: str) -> str:
    """A small object's name: relative, no '..', not one of the snapshot machinery's keys."""
    parts = PurePosixPath(name).parts
    if not name or name.startswith("/") or ".." in parts or name.startswith(RESERVED) or name.endswith("/"):
        raise UsageError(f"bad object name {name!r}: use a relative path such as agent/progress.json "
                         "outside blobs/, manifests/ and HEAD")
    return name


def _safe_relpath(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    return bool(parts) and not rel.startswith("/") and ".." not in parts and parts[0] != STAGING


class SnapshotStore:
    """A CheckpointStore over any ObjectStore. One object per writer: it remembers the HEAD version it
    last saw (at restore or publish), which is what makes a stale writer detectable."""

    def __init__(self, objects: ObjectStore, keep: int = 3, grace_seconds: float = 3600.0):
        if keep < 1:
            raise UsageError(f"keep must be at least 1 snapshot, got {keep}")
        self.objects = CountedObjects(objects)
        self.requests = self.objects.requests  # what this store object has asked of the bucket
        self.url = objects.url
        self.keep = keep
        # Unreferenced blobs younger than this are left alone: a publish in progress may be about to
        # name them in its manifest.
        self.grace_seconds = grace_seconds
        self.last_restore_warning: Optional[str] = None
        self.last_publish: Optional[PublishStats] = None
        self._head_version: Optional[str] = None  # version of HEAD this writer last saw
        self._head_id: Optional[str] = None  # and the snapshot it named (its manifest may be gone)
        self._head_seen = False  # True once HEAD was read (absent HEAD is a valid view)
        self._base: Optional[Manifest] = None  # the snapshot this writer last restored or published
        self._hashes = _HashCache()

    # -- HEAD and manifests ------------------------------------------------------------------
    def _read_head(self) -> tuple[Optional[str], Optional[str]]:
        """(snapshot id HEAD names, HEAD's version); (None, None) for a job with no snapshot."""
        got = self.objects.get(HEAD)
        if got is None:
            return None, None
        data, version = got
        try:
            head = str(json.loads(data)["snapshot_id"])
            if head.isdigit():
                return head, version
        except (ValueError, KeyError, TypeError):
            pass
        raise NascloudError(f"{self.url}/HEAD is not a checkpoint pointer: the prefix holds something else; "
                            "use a fresh job prefix")

    def _see_head(self) -> Optional[str]:
        head, version = self._read_head()
        self._head_version, self._head_id, self._head_seen = version, head, True
        return head

    def _manifest(self, snapshot_id: str) -> Manifest:
        got = self.objects.get(f"{MANIFESTS}{snapshot_id}.json")
        if got is None:
            raise Damaged(f"manifest {snapshot_id} is missing")
        try:
            return Manifest.from_bytes(got[0])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise Damaged(f"manifest {snapshot_id} is unreadable") from None

    def _states(self, head: str) -> dict[str, str]:
        """HEAD's snapshot and every manifest's -> its SnapshotInfo.status, newest first. HEAD's chain is
        followed through manifests' parent links; a damaged link hides which older ones it held."""
        present = self._manifest_seqs()
        states: dict[str, str] = {}
        broken: Optional[int] = None  # the damaged link, if the chain has one
        current: Optional[str] = head
        while current is not None and current not in states:
            if current != head and _seq(current) not in present and not any(s < _seq(current) for s in present):
                break  # the ancestors from here on were pruned: the chain ends whole
            try:
                parent = self._manifest(current).parent
            except Damaged:
                states[current], broken = "damaged", _seq(current)
                break
            states[current], current = "committed", parent
        for seq in present:
            if _snapshot_id(seq) not in states:
                states[_snapshot_id(seq)] = "fallback" if broken is not None and seq < broken else "uncommitted"
        return dict(sorted(states.items(), key=lambda item: _seq(item[0]), reverse=True))

    def _candidates(self, head: str) -> list[str]:
        """What restore tries, newest first: HEAD's chain, then (past a damaged link) the older ones."""
        return [sid for sid, status in self._states(head).items() if status != "uncommitted"]

    # -- publish -----------------------------------------------------------------------------
    def _scan(self, local_dir: Path) -> dict[str, FileEntry]:
        files: dict[str, FileEntry] = {}
        for root, dirs, names in os.walk(local_dir, onerror=_raise):
            if Path(root) == local_dir and STAGING in dirs:
                dirs.remove(STAGING)
            for name in names:
                path = Path(root) / name
                if path.is_symlink() or not path.is_file():
                    continue  # a tuner's project holds regular files only
                rel = path.relative_to(local_dir).as_posix()
                digest, size = self._hashes.sha256(rel, path)
                files[rel] = FileEntry(digest, size)
        return files

    def publish(self, local_dir: Path) -> str:
        with _local_disk("read", Path(local_dir)):
            return self._publish(Path(local_dir))

    def _publish(self, local_dir: Path) -> str:
        started = time.monotonic()
        if not local_dir.is_dir():
            raise UsageError(f"cannot publish {local_dir}: not a directory")
        if not self._head_seen:
            head = self._see_head()
            self._base = self._load_base(head)
        files = self._scan(local_dir)
        base = self._base
        if base is not None and base.files == files:
            # Nothing changed: no new snapshot, but a stale writer must still learn it is stale.
            head, version = self._read_head()
            if version != self._head_version:
                raise self._stale(head)
            self.last_publish = PublishStats(base.snapshot_id, len(files), unchanged=True,
                                             seconds=time.monotonic() - started)
            return base.snapshot_id
        stats = PublishStats("", files=len(files))
        # Reuse only blobs the base snapshot names: they are kept by pruning while it is HEAD, and
        # anything else is uploaded again (which also refreshes its age for the pruning grace).
        known = {e.sha256 for e in base.files.values()} if base else set()
        for rel, entry in sorted(files.items()):
            if entry.sha256 in known:
                continue
            self.objects.upload(f"{BLOBS}{entry.sha256}", local_dir / rel)
            known.add(entry.sha256)
            stats.uploaded_files += 1
            stats.uploaded_bytes += entry.size
        parent = base.snapshot_id if base else None
        # Past HEAD's id too: a damaged snapshot's id is never reused for other contents.
        seq = max([0, *(_seq(sid) for sid in (parent, self._head_id) if sid), *self._manifest_seqs()]) + 1
        while True:  # a killed or racing writer may hold the next number: take the one after
            manifest = Manifest(_snapshot_id(seq), parent, time.time(), files)
            data = manifest.to_bytes()
            if self.objects.put_if_absent(f"{MANIFESTS}{manifest.snapshot_id}.json", data):
                break
            seq += 1
        pointer = json.dumps({"snapshot_id": manifest.snapshot_id, "updated_at": time.time()}).encode()
        version = self.objects.put_if_match(HEAD, pointer, self._head_version)
        if version is None:
            raise self._stale(self._read_head()[0])
        self._head_version, self._head_id = version, manifest.snapshot_id
        self._base = manifest
        stats.snapshot_id = manifest.snapshot_id
        stats.uploaded_bytes += len(data) + len(pointer)
        self.prune()
        stats.seconds = time.monotonic() - started
        self.last_publish = stats
        return manifest.snapshot_id

    def _stale(self, head: Optional[str]) -> StaleWriterError:
        return StaleWriterError(
            f"{self.url}: HEAD now names snapshot {head or 'none'}, which this writer did not make: "
            "another writer owns the job; stop this one")

    def _manifest_seqs(self) -> list[int]:
        seqs = []
        for info in self.objects.list(MANIFESTS):
            stem = info.key[len(MANIFESTS):].removesuffix(".json")
            if stem.isdigit():
                seqs.append(int(stem))
        return seqs

    def _load_base(self, head: Optional[str]) -> Optional[Manifest]:
        if head is None:
            return None
        try:
            return self._manifest(head)
        except Damaged:
            return None  # upload everything: nothing of a damaged snapshot is trusted

    # -- pruning -----------------------------------------------------------------------------
    def prune(self) -> None:
        """Keep HEAD's last `keep` snapshots. Removes older manifests and blobs no remaining manifest
        names, except blobs younger than the grace period (a publish in progress may name them) and
        manifests newer than HEAD (a publish in progress wrote them)."""
        head, _ = self._read_head()
        if head is None:
            return
        kept = set(self._candidates(head)[: self.keep])
        named: set[str] = set()
        cutoff = time.time() - self.grace_seconds
        for info in self.objects.list(MANIFESTS):
            stem = info.key[len(MANIFESTS):].removesuffix(".json")
            if not stem.isdigit():
                if info.modified < cutoff:
                    self.objects.delete(info.key)  # a killed writer's leftover, not a manifest
            elif stem in kept or int(stem) > _seq(head):
                try:
                    named.update(e.sha256 for e in self._manifest(stem).files.values())
                except Damaged:
                    continue
            else:
                self.objects.delete(info.key)
        for info in self.objects.list(BLOBS):
            if info.key[len(BLOBS):] not in named and info.modified < cutoff:
                self.objects.delete(info.key)

    # -- restore -----------------------------------------------------------------------------
    def restore(self, local_dir: Path, snapshot_id: Optional[str] = None) -> Optional[str]:
        with _local_disk("write", Path(local_dir)):
            return self._restore(Path(local_dir), snapshot_id)

    def _restore(self, local_dir: Path, snapshot_id: Optional[str]) -> Optional[str]:
        self.last_restore_warning = None
        head = self._see_head()
        if snapshot_id is not None:
            candidates = [self._existing(snapshot_id)]
        elif head is None:
            self._base = None
            return None
        else:
            candidates = self._candidates(head)
        problems: list[str] = []
        for candidate in candidates:
            try:
                manifest = self._restore_manifest(local_dir, candidate)
            except Damaged as damage:
                problems.append(f"snapshot {candidate} is damaged ({damage})")
                continue
            if problems:
                self.last_restore_warning = "; ".join(problems) + f"; restored snapshot {candidate} instead"
            # Publishing from here re-uploads whatever a damaged HEAD snapshot named.
            self._base = manifest
            return candidate
        raise NascloudError(f"{self.url}: no snapshot could be restored: {'; '.join(problems)}")

    def overwrites(self, local_dir: Path, snapshot_id: Optional[str] = None) -> list[str]:
        """The files in local_dir that a restore of the snapshot (default: HEAD's) would remove or replace:
        those it does not hold as they are. A snapshot that cannot be read counts every file."""
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            return []
        with _local_disk("read", local_dir):
            current = self._scan(local_dir)
        wanted = self._existing(snapshot_id) if snapshot_id else self._see_head()
        try:
            kept = self._manifest(wanted).files if wanted and wanted.isdigit() else {}
        except Damaged:
            kept = {}
        return sorted(rel for rel, entry in current.items() if kept.get(rel) != entry)

    def _existing(self, snapshot_id: str) -> str:
        """A snapshot id the user gave, as the store names it ("7" is 000007); one with no manifest is no
        damaged snapshot but a wrong id, and the error lists those there are."""
        if not snapshot_id.isdigit():
            raise UsageError(f"bad snapshot id {snapshot_id!r}: use one "
                             f"{command('checkpoints', 'list', self.url)} shows")
        seqs = sorted(self._manifest_seqs())
        if int(snapshot_id) not in seqs:
            there = ", ".join(map(_snapshot_id, seqs)) or "none yet"
            raise UsageError(f"snapshot {snapshot_id} does not exist in {self.url}; it has: {there}")
        return _snapshot_id(int(snapshot_id))

    def _restore_manifest(self, local_dir: Path, snapshot_id: str) -> Manifest:
        manifest = self._manifest(snapshot_id)
        bad = [rel for rel in manifest.files if not _safe_relpath(rel)]
        if bad:
            raise Damaged(f"manifest names a path outside the directory: {bad[0]!r}")
        local_dir.mkdir(parents=True, exist_ok=True)
        current = self._scan(local_dir)
        staging = local_dir / STAGING
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            # Every blob that is needed is downloaded and verified before the directory is touched,
            # so a damaged snapshot leaves the directory as it was for the next candidate.
            for rel, entry in sorted(manifest.files.items()):
                if current.get(rel) == entry or (staging / entry.sha256).exists():
                    continue
                blob = staging / entry.sha256
                if not self.objects.download(f"{BLOBS}{entry.sha256}", blob):
                    raise Damaged(f"content of {rel} is missing")
                if blob.stat().st_size != entry.size or file_sha256(blob) != entry.sha256:
                    raise Damaged(f"content of {rel} does not match its sha256")
            for rel in current.keys() - manifest.files.keys():
                (local_dir / rel).unlink(missing_ok=True)
            for rel, entry in manifest.files.items():
                if current.get(rel) == entry:
                    continue
                target = local_dir / rel
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                temp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
                shutil.copyfile(staging / entry.sha256, temp)
                os.replace(temp, target)  # a reader sees the old file or the new one, never half
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return manifest

    # -- listing -----------------------------------------------------------------------------
    def list(self) -> list[SnapshotInfo]:
        head, _ = self._read_head()
        if head is None:  # no commit yet: any manifest is a publish that never finished
            states = {_snapshot_id(seq): "uncommitted" for seq in sorted(self._manifest_seqs(), reverse=True)}
        else:
            states = self._states(head)
        infos = []
        for sid, status in reversed(states.items()):
            try:
                m = self._manifest(sid)
            except Damaged:
                infos.append(SnapshotInfo(sid, None, None, None, "damaged"))
                continue
            infos.append(SnapshotInfo(sid, m.created_at, len(m.files), sum(e.size for e in m.files.values()), status))
        return infos

    # -- small objects beside the snapshots ----------------------------------------------------
    def put_json(self, name: str, value: dict) -> None:
        self.objects.put(check_name(name), json.dumps(value, indent=1, sort_keys=True).encode())

    def get_json(self, name: str) -> Optional[dict]:
        got = self.objects.get(check_name(name))
        if got is None:
            return None
        try:
            return json.loads(got[0])
        except ValueError:
            raise NascloudError(f"{self.url}/{name} is not valid JSON; it was written by something else "
                                "or damaged") from None

    def put_file(self, name: str, path: Path) -> None:
        with _local_disk("read", Path(path)):
            self.objects.upload(check_name(name), Path(path))

    def get_file(self, name: str, path: Path) -> bool:
        path = Path(path)
        with _local_disk("write", path):
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                if not self.objects.download(check_name(name), temp):
                    return False
                os.replace(temp, path)
                return True
            finally:
                temp.unlink(missing_ok=True)

    def stored_bytes(self) -> int:
        """Everything under the job prefix: snapshots, data set, bundle and reports (what storage bills)."""
        return sum(info.size for info in self.objects.list(""))

    def exists(self, name: str) -> bool:
        check_name(name)
        return any(info.key == name for info in self.objects.list(name))

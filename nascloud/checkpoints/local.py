"""file:// backend: the job prefix is a directory on a local (or shared) disk.

Create-only is a fully written temp file hard-linked to its name (link fails if the name exists,
where rename would overwrite). Compare-and-swap holds an fcntl lock on `.lock` (released by the
kernel if the holder is killed) while it checks HEAD's version, the sha256 of its bytes.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import uuid
from contextlib import contextmanager, suppress
from itertools import takewhile
from pathlib import Path
from typing import Iterator, Optional

from nascloud.checkpoints.base import ObjectInfo, storage_error

TEMP_PREFIX = ".tmp-"  # half-written files, never named by a manifest; pruning clears old ones
_ABSENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


def _discard(temp: Path) -> None:
    # Best effort: on a read-only disk even this fails, and pruning clears what is left.
    with suppress(OSError):
        temp.unlink()


def _raise_unless_absent(error: OSError) -> None:
    if not isinstance(error, _ABSENT):
        raise error


class LocalObjects:
    def __init__(self, root: Path):
        self.root = root
        self.url = f"file://{root}"

    def _path(self, key: str) -> Path:
        return self.root / key

    @contextmanager
    def _errors(self, verb: str, key: str) -> Iterator[None]:
        """The disk's failures (read-only, full, permissions, I/O) as the error family, naming the object."""
        try:
            yield
        except OSError as error:
            raise storage_error(error, verb, f"{self.url}/{key}") from None

    def _temp(self, path: Path) -> Path:
        """A new empty temp file beside path. Every object is first one of these, so here is the one place that
        makes the bucket private: folders 0700 and files 0600 whatever the umask (the bundle holds the webhook
        URL; the snapshots are the user's results)."""
        missing = list(takewhile(lambda folder: not folder.exists(), (path.parent, *path.parent.parents)))
        for folder in reversed(missing):
            folder.mkdir(mode=0o700, exist_ok=True)  # a umask only takes bits away: never wider than 0700
        temp = path.parent / f"{TEMP_PREFIX}{path.name}.{uuid.uuid4().hex[:12]}"
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # renamed or linked, it keeps 0600
        return temp

    def _write_temp(self, path: Path, data: bytes) -> Path:
        temp = self._temp(path)
        try:
            with open(temp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # small commit objects: durable before they are named
        except OSError:
            _discard(temp)  # a full disk keeps no half-written copy
            raise
        return temp

    def get(self, key: str) -> Optional[tuple[bytes, str]]:
        with self._errors("read", key):
            try:
                data = self._path(key).read_bytes()
            except _ABSENT:
                return None
        return data, hashlib.sha256(data).hexdigest()

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with self._errors("write", key):
            temp = self._write_temp(path, data)
            try:
                os.replace(temp, path)
            finally:
                _discard(temp)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        with self._errors("write", key):
            temp = self._write_temp(path, data)
            try:
                os.link(temp, path)
                return True
            except FileExistsError:
                return False
            finally:
                _discard(temp)

    def put_if_match(self, key: str, data: bytes, version: Optional[str]) -> Optional[str]:
        path = self._path(key)
        with self._errors("write", key):
            temp = self._write_temp(path, data)
            try:
                with open(self.root / ".lock", "a+b") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    current = self.get(key)
                    if (current[1] if current else None) != version:
                        return None
                    os.replace(temp, path)
                    return hashlib.sha256(data).hexdigest()
            finally:
                _discard(temp)

    def upload(self, key: str, path: Path) -> None:
        target = self._path(key)
        with open(path, "rb") as source:  # the local side: its failures are the caller's to name
            with self._errors("write", key):
                temp = self._temp(target)
                try:
                    with open(temp, "wb") as out:
                        shutil.copyfileobj(source, out)
                    os.replace(temp, target)
                finally:
                    _discard(temp)

    def download(self, key: str, path: Path) -> bool:
        with self._errors("read", key):
            try:
                source = open(self._path(key), "rb")
            except _ABSENT:
                return False
        with source, open(path, "wb") as out:  # the local side: its failures are the caller's to name
            shutil.copyfileobj(source, out)
        return True

    def list(self, prefix: str) -> list[ObjectInfo]:
        # Half-written temp files are listed too, so pruning can clear those a killed writer left.
        # "" is the whole job folder (not its parent, which holds other jobs and the bucket's data sets)
        folder = self._path(prefix) if prefix.endswith("/") or not prefix else self._path(prefix).parent
        infos = []
        with self._errors("list", prefix):
            for dirpath, _, names in os.walk(folder, onerror=_raise_unless_absent):
                for name in names:
                    path = Path(dirpath) / name
                    key = path.relative_to(self.root).as_posix()
                    if key.startswith(prefix) and key != ".lock":
                        try:
                            st = path.stat()
                        except FileNotFoundError:
                            continue  # removed while we walked
                        infos.append(ObjectInfo(key, st.st_size, st.st_mtime))
        return infos

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self._path(key).unlink(missing_ok=True)

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
from pathlib import Path
from typing import Optional

from nascloud.checkpoints.base import ObjectInfo
from nascloud.errors import NascloudError

TEMP_PREFIX = ".tmp-"  # half-written files, never named by a manifest; pruning clears old ones


class LocalObjects:
    def __init__(self, root: Path):
        self.root = root
        self.url = f"file://{root}"

    def _path(self, key: str) -> Path:
        return self.root / key

    def _temp(self, path: Path) -> Path:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise NascloudError(f"cannot write under {self.root}: {error.strerror}; check the path and "
                                "its permissions") from None
        return path.parent / f"{TEMP_PREFIX}{path.name}.{uuid.uuid4().hex[:12]}"

    def _write_temp(self, path: Path, data: bytes) -> Path:
        temp = self._temp(path)
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # small commit objects: durable before they are named
        return temp

    def get(self, key: str) -> Optional[tuple[bytes, str]]:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return data, hashlib.sha256(data).hexdigest()

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        os.replace(self._write_temp(path, data), path)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        temp = self._write_temp(path, data)
        try:
            os.link(temp, path)
            return True
        except FileExistsError:
            return False
        finally:
            temp.unlink()

    def put_if_match(self, key: str, data: bytes, version: Optional[str]) -> Optional[str]:
        path = self._path(key)
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
            temp.unlink(missing_ok=True)

    def upload(self, key: str, path: Path) -> None:
        target = self._path(key)
        temp = self._temp(target)
        try:
            shutil.copyfile(path, temp)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)

    def download(self, key: str, path: Path) -> bool:
        try:
            shutil.copyfile(self._path(key), path)
            return True
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return False

    def list(self, prefix: str) -> list[ObjectInfo]:
        # Half-written temp files are listed too, so pruning can clear those a killed writer left.
        folder = self._path(prefix) if prefix.endswith("/") else self._path(prefix).parent
        infos = []
        for dirpath, _, names in os.walk(folder):
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
        self._path(key).unlink(missing_ok=True)

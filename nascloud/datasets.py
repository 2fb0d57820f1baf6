"""A packed data set in the bucket: fixed-size parts stored by content, and a manifest named by its hash.

The packed folder (nascloud.agent.data) holds a few files (x.npy, y.npy, labels.json). `seal` cuts each into
parts of PART_BYTES and writes the manifest, {format, part_bytes, files: {name: {size, parts: [sha256]}}};
the data set's hash is the manifest's own sha256. In the bucket (beside the jobs, not under one, so a
second job or a re-run launch on the same data sends nothing):

  data/parts/<sha256>   one part, stored once whatever data sets share it
  data/<sha256>.json    the manifest, written last: present means every part is there

A launch interrupted half-way leaves some parts; the next one sends only the rest. Nothing here holds
more than one part in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from nascloud.errors import NascloudError

PART_BYTES = 64 << 20
DATA = "data/"
PARTS = "data/parts/"
FORMAT = 1


def _parts(path: Path, part_bytes: int):
    with open(path, "rb") as f:
        while chunk := f.read(part_bytes):
            yield chunk


def seal(folder: Path, names: list[str], part_bytes: int = PART_BYTES) -> Path:
    """Hash the folder's files part by part and write the manifest as folder/<sha256>.json."""
    files = {name: {"size": (folder / name).stat().st_size,
                    "parts": [hashlib.sha256(part).hexdigest() for part in _parts(folder / name, part_bytes)]}
             for name in sorted(names)}
    data = json.dumps({"format": FORMAT, "part_bytes": part_bytes, "files": files}, sort_keys=True).encode()
    manifest = folder / f"{hashlib.sha256(data).hexdigest()}.json"
    manifest.write_bytes(data)
    return manifest


def bucket_store(job_url: str):
    """The store on the bucket the job's prefix is in: where data sets live."""
    from nascloud.checkpoints import open_store

    return open_store(job_url.rsplit("/", 1)[0])


def object_name(manifest: Path) -> str:
    return f"{DATA}{manifest.name}"


def upload(store, manifest: Path) -> int:
    """Send what the bucket lacks of the sealed data set (one LIST, then a PUT per missing part, the
    manifest last). Returns the number of parts sent: 0 for a data set already there."""
    objects = store.objects
    present = {info.key: info.size for info in objects.list(DATA)}
    name = object_name(manifest)
    if name in present:
        return 0
    raw = manifest.read_bytes()
    described = json.loads(raw)
    part_bytes, sent = described["part_bytes"], 0
    for file_name, entry in described["files"].items():
        with open(manifest.parent / file_name, "rb") as f:
            for index, sha in enumerate(entry["parts"]):
                if present.get(PARTS + sha) == min(part_bytes, entry["size"] - index * part_bytes):
                    continue
                f.seek(index * part_bytes)
                part = f.read(part_bytes)
                if hashlib.sha256(part).hexdigest() != sha:
                    raise NascloudError(f"{manifest.parent / file_name} changed after it was packed; launch again")
                objects.put(PARTS + sha, part)
                present[PARTS + sha] = len(part)
                sent += 1
    objects.put(name, raw)
    return sent


def fetch(store, name: str, dest_root: Path) -> Path:
    """Download the data set `name` (data/<sha256>.json) into dest_root/<sha256>/, part by part, each part
    checked against its sha256. A fetch cut short resumes from the last whole part. Returns the folder."""
    digest = Path(name).stem
    folder = dest_root / digest
    got = store.objects.get(name)
    if got is None:
        raise NascloudError(f"{store.url}/{name} is missing; launch the job again to upload its data")
    if hashlib.sha256(got[0]).hexdigest() != digest:
        raise NascloudError(f"{store.url}/{name} does not match its name's sha256; launch the job again "
                            "to upload its data")
    described = json.loads(got[0])
    part_bytes = described["part_bytes"]
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, entry in described["files"].items():
        target = folder / file_name
        if target.exists() and target.stat().st_size == entry["size"]:
            continue  # renamed into place only once whole
        partial = folder / f".{file_name}.partial"
        done = partial.stat().st_size // part_bytes if partial.exists() else 0
        with open(partial, "ab") as out:
            out.truncate(done * part_bytes)  # drop a half-appended part
            for sha in entry["parts"][done:]:
                part = store.objects.get(PARTS + sha)
                if part is None or hashlib.sha256(part[0]).hexdigest() != sha:
                    state = "missing" if part is None else "damaged (its sha256 differs)"
                    raise NascloudError(f"{store.url}/{PARTS}{sha} of data set {digest} is {state}; launch the "
                                        "job again to upload its data")
                out.write(part[0])
        os.replace(partial, target)
    return folder

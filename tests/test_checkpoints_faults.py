"""A publishing process SIGKILLed at random points never leaves a store whose restore differs, byte for
byte, from the last committed snapshot. Run as a module, this file is that publishing process."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from nascloud.checkpoints import open_store

REPO = Path(__file__).resolve().parents[1]


def version_tree(v: int) -> dict[str, bytes]:
    """The project directory at version v: trials come and go, weights change every third version."""
    files = {"version.txt": str(v).encode(),
             "oracle.json": json.dumps({"version": v, "trials": v % 7}).encode()}
    for k in range(v % 6 + 1):
        files[f"trial_{k}/trial.json"] = json.dumps({"trial": k, "v": v // (k + 1)}).encode()
    files["trial_0/checkpoint.weights.h5"] = random.Random(v // 3).randbytes(40_000)
    return files


def write_version(work: Path, v: int) -> None:
    files = version_tree(v)
    for path in [p for p in work.rglob("*") if p.is_file()]:
        if path.relative_to(work).as_posix() not in files:
            path.unlink()
    for rel, data in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(data)


def writer_main(url: str, work: Path) -> None:
    """An agent's loop: restore, then publish version after version, reporting each commit."""
    store = open_store(url, keep=2, grace_seconds=0)  # prune as hard as possible
    v = int((work / "version.txt").read_text()) if store.restore(work) else 0
    print("ready", flush=True)
    while True:
        v += 1
        write_version(work, v)
        store.publish(work)
        print(v, flush=True)


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def kill_publishers(url: str, tmp_path: Path, kills: int, max_delay: float, seed: int) -> int:
    rng = random.Random(seed)
    work, check = tmp_path / "work", tmp_path / "check"
    committed = 0  # the last version a publisher reported committed
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-m", "tests.test_checkpoints_faults", url, str(work)],
                                cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0, max_delay))
        proc.kill()
        reported = [int(line) for line in proc.communicate()[0].split()]
        committed = max([committed, *reported])

        store = open_store(url)
        restored = store.restore(check)
        assert store.last_restore_warning is None
        assert restored is not None or committed == 0
        if restored is not None:
            v = int((check / "version.txt").read_text())
            # Killed after HEAD moved but before it could say so: one past the last report.
            assert v in (committed, committed + 1)
            assert read_tree(check) == version_tree(v)
            committed = v
    return committed


def test_sigkilled_local_publisher_leaves_last_committed_snapshot(tmp_path):
    url = f"file://{tmp_path}/bucket/job-{uuid.uuid4().hex[:6]}"
    assert kill_publishers(url, tmp_path, kills=25, max_delay=0.15, seed=7) > 25  # it did publish


def test_sigkilled_s3_publisher_leaves_last_committed_snapshot(moto_server, tmp_path):
    import boto3

    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    assert kill_publishers(f"s3://{bucket}/job", tmp_path, kills=20, max_delay=0.4, seed=11) > 10


def test_sigkilled_gcs_publisher_leaves_last_committed_snapshot(gcs_server, tmp_path):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket(bucket)
    assert kill_publishers(f"gs://{bucket}/job", tmp_path, kills=20, max_delay=0.3, seed=13) > 10


if __name__ == "__main__":
    writer_main(sys.argv[1], Path(sys.argv[2]))

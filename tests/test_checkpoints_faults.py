"""Faults a store must survive: a publishing process SIGKILLed at random points inside a publish never
leaves a store whose restore differs, byte for byte, from the last committed snapshot (run as a module,
this file is that publishing process); a full or read-only bucket is a one-line error that keeps it."""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from nascloud.checkpoints import open_store
from nascloud.errors import StorageError

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
    """An agent's loop: restore, then publish version after version, saying when each publish begins
    and when it has committed."""
    store = open_store(url, keep=2, grace_seconds=0)  # prune as hard as possible
    v = int((work / "version.txt").read_text()) if store.restore(work) else 0
    print("ready", flush=True)
    while True:
        v += 1
        write_version(work, v)
        print(f"publishing {v}", flush=True)
        store.publish(work)
        print(f"committed {v}", flush=True)


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def kill_inside_a_publish(proc: subprocess.Popen, rng: random.Random) -> int:
    """SIGKILL the publisher at a random point inside its second or a later publish. Returns the last
    version it reported committed.

    The point is drawn over the length of its last whole publish (so a loaded machine's slower publish
    is covered as much as a fast one's); the publisher is then stopped, and killed only if its
    publish has not reported committed: stopped, it can no longer finish between the look and the kill."""
    assert proc.stdout.readline() == b"ready\n"
    reported, last_seconds = 0, None
    while True:
        publishing = proc.stdout.readline().split()
        assert publishing[:1] == [b"publishing"], publishing
        started, looked = time.monotonic(), False
        if last_seconds is not None and rng.random() < 0.5:
            looked = True
            time.sleep(rng.uniform(0, last_seconds))
            os.kill(proc.pid, signal.SIGSTOP)
            os.waitpid(proc.pid, os.WUNTRACED)  # stopped: all it wrote is in the pipe now
            if not select.select([proc.stdout], [], [], 0)[0]:
                proc.kill()
                proc.wait()
                return reported
            os.kill(proc.pid, signal.SIGCONT)  # it finished first: try a later publish
        assert proc.stdout.readline().split() == [b"committed", publishing[1]]
        reported = int(publishing[1])
        if not looked:
            last_seconds = time.monotonic() - started


def kill_publishers(url: str, tmp_path: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    work, check = tmp_path / "work", tmp_path / "check"
    committed = 0
    for _ in range(kills):
        # Unbuffered, so select() sees every line the publisher wrote.
        proc = subprocess.Popen([sys.executable, "-m", "tests.test_checkpoints_faults", url, str(work)],
                                cwd=REPO, stdout=subprocess.PIPE, bufsize=0)
        reported = kill_inside_a_publish(proc, rng)
        proc.stdout.close()
        assert reported > committed  # each publisher committed at least once before its kill

        store = open_store(url)
        restored = store.restore(check)
        assert store.last_restore_warning is None
        assert restored is not None
        v = int((check / "version.txt").read_text())
        # The killed publish is the one after the last report: it may have swung HEAD already.
        assert v in (reported, reported + 1)
        assert read_tree(check) == version_tree(v)
        committed = v


def test_sigkilled_local_publisher_leaves_last_committed_snapshot(tmp_path):
    url = f"file://{tmp_path}/bucket/job-{uuid.uuid4().hex[:6]}"
    kill_publishers(url, tmp_path, kills=25, seed=7)


def test_sigkilled_s3_publisher_leaves_last_committed_snapshot(moto_server, tmp_path):
    import boto3

    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    kill_publishers(f"s3://{bucket}/job", tmp_path, kills=20, seed=11)


def test_sigkilled_gcs_publisher_leaves_last_committed_snapshot(gcs_server, tmp_path):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket(bucket)
    kill_publishers(f"gs://{bucket}/job", tmp_path, kills=20, seed=13)


@pytest.fixture
def disk(tmp_path):
    """A directory on a file system of its own, a 256 kB tmpfs, when this process may mount one (root):
    real ENOSPC, and remounted read-only a real EROFS, which root cannot write past as it can a chmod.
    Otherwise a plain directory, made read-only by chmod."""
    path = tmp_path / "disk"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    if not mounted and os.geteuid() == 0:
        pytest.skip("root, but cannot mount a tmpfs: no real read-only or full file system to test on")
    yield path
    if mounted:
        subprocess.run(["umount", "-l", str(path)], check=True)
    else:
        path.chmod(0o755)


def make_read_only(disk: Path) -> str:
    """Make disk read-only for this process; the reason a write there now fails."""
    if disk.is_mount():
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        return "read-only file system"
    for folder in [disk, *(p for p in disk.rglob("*") if p.is_dir())]:
        folder.chmod(0o555)
    return "permission denied"


def nascloud(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nascloud", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def test_a_full_bucket_is_a_storage_error_and_keeps_the_last_snapshot(disk, tmp_path):
    if not disk.is_mount():
        pytest.skip("no small file system of its own to fill (needs a tmpfs mount)")
    url = f"file://{disk}/job"
    work = tmp_path / "work"
    write_version(work, 1)
    store = open_store(url)
    first = store.publish(work)

    weights = os.urandom(400_000)  # more than the disk holds
    (work / "trial_0/checkpoint.weights.h5").write_bytes(weights)
    with pytest.raises(StorageError) as raised:
        store.publish(work)
    assert str(raised.value) == (f"cannot write {url}/blobs/{hashlib.sha256(weights).hexdigest()}: "
                                 "no space left on device")
    # The half-written copy is gone, not left filling the disk.
    assert not [p for p in disk.rglob(".tmp-*")]

    check = tmp_path / "check"
    reader = open_store(url)
    assert reader.restore(check) == first and reader.last_restore_warning is None
    assert read_tree(check) == version_tree(1)

    # Once there is room the same writer goes on.
    write_version(work, 2)
    second = store.publish(work)
    assert open_store(url).restore(check) == second and read_tree(check) == version_tree(2)


def test_a_read_only_bucket_is_a_storage_error_and_keeps_the_last_snapshot(disk, tmp_path):
    url = f"file://{disk}/job"
    work = tmp_path / "work"
    write_version(work, 1)
    store = open_store(url)
    first = store.publish(work)
    reason = make_read_only(disk)

    write_version(work, 2)
    changed = hashlib.sha256((work / "oracle.json").read_bytes()).hexdigest()
    with pytest.raises(StorageError, match=f"^cannot write {url}/blobs/{changed}: {reason}$"):
        store.publish(work)
    with pytest.raises(StorageError, match=f"^cannot write {url}/agent/heartbeat.json: {reason}$"):
        store.put_json("agent/heartbeat.json", {"phase": "searching"})

    check = tmp_path / "check"
    assert open_store(url).restore(check) == first and read_tree(check) == version_tree(1)

    # The CLI reads it, and pulling onto the read-only disk is one line naming the folder.
    listed = nascloud("checkpoints", "list", url, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(s["snapshot_id"], s["committed"]) for s in json.loads(listed.stdout)] == [(first, True)]
    pulled = nascloud("checkpoints", "pull", url, str(disk / "mine"))
    assert (pulled.returncode, pulled.stderr) == (1, f"Error: cannot write {disk / 'mine'}: {reason}\n")


def test_an_unreadable_bucket_object_is_one_line_from_the_cli(tmp_path):
    """HEAD a symbolic link to itself: reading it fails for root too (ELOOP)."""
    job = tmp_path / "bucket/job"
    job.mkdir(parents=True)
    (job / "HEAD").symlink_to(job / "HEAD")
    for args in (["list", f"file://{job}"], ["pull", f"file://{job}", str(tmp_path / "out")]):
        result = nascloud("checkpoints", *args)
        assert (result.returncode, result.stderr) == (
            1, f"Error: cannot read file://{job}/HEAD: too many levels of symbolic links\n")


if __name__ == "__main__":
    writer_main(sys.argv[1], Path(sys.argv[2]))

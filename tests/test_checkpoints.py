"""The checkpoint store through its real backends: a local folder, moto's S3 and fake-gcs-server."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from pathlib import Path

import pytest

from nascloud.checkpoints import job_url, open_store, parse_url
from nascloud.errors import CloudError, NascloudError, StaleWriterError, UsageError

S3_BUCKET = "nascloud-test"
GCS_BUCKET = "nascloud-test"


@pytest.fixture(scope="session")
def s3_bucket(moto_server):
    import boto3

    boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
    return S3_BUCKET


@pytest.fixture(scope="session")
def gcs_bucket(gcs_server):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket(GCS_BUCKET)
    return GCS_BUCKET


@pytest.fixture(params=["file", "s3", "gs"])
def store_url(request, tmp_path) -> str:
    """A fresh job prefix on each backend."""
    job = f"job-{uuid.uuid4().hex[:6]}"
    if request.param == "file":
        return f"file://{tmp_path / 'bucket'}/{job}"
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket')}/runs/{job}"
    return f"gs://{request.getfixturevalue('gcs_bucket')}/runs/{job}"


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


V1 = {"oracle.json": b'{"trials": 1}', "trial_0/trial.json": b'{"score": 0.5}',
      "trial_0/checkpoint.weights.h5": os.urandom(300_000)}


def test_publish_restore_round_trip_is_exact_and_incremental(store_url, tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    write_tree(work, V1)
    store = open_store(store_url)
    first = store.publish(work)
    assert store.last_publish.uploaded_files == 3

    # Change one small file, add one, remove one: only the new contents go up.
    (work / "oracle.json").write_bytes(b'{"trials": 2}')
    write_tree(work, {"trial_1/trial.json": b'{"score": 0.7}'})
    (work / "trial_0/trial.json").unlink()
    second = store.publish(work)
    assert second > first
    assert store.last_publish.uploaded_files == 2
    assert store.last_publish.uploaded_bytes < 2_000  # the 300 kB weights were not sent again

    # An unchanged directory publishes nothing and keeps the snapshot id.
    assert store.publish(work) == second
    assert store.last_publish.unchanged

    # Restore makes the target exactly equal: stale files go, changed ones are replaced.
    write_tree(out, {"trial_0/trial.json": b"stale", "oracle.json": b"old", "extra.txt": b"x"})
    reader = open_store(store_url)
    assert reader.restore(out) == second
    assert reader.last_restore_warning is None
    assert read_tree(out) == read_tree(work)

    assert reader.restore(out, first) == first
    assert read_tree(out) == V1
    assert [(s.snapshot_id, s.files, s.committed) for s in reader.list()] == [(first, 3, True), (second, 3, True)]


def test_restore_of_an_empty_job_is_none(store_url, tmp_path):
    store = open_store(store_url)
    assert store.restore(tmp_path / "out") is None
    assert store.list() == []


def test_two_writers_racing_for_head_exactly_one_wins(store_url, tmp_path):
    base = tmp_path / "base"
    write_tree(base, V1)
    open_store(store_url).publish(base)

    writers, results = [], {}
    barrier = threading.Barrier(2)
    for name in ("a", "b"):
        work = tmp_path / name
        store = open_store(store_url)
        store.restore(work)  # both see the same HEAD, like an old and a new agent
        write_tree(work, {"oracle.json": f'{{"writer": "{name}"}}'.encode()})
        writers.append((name, store, work))

    def publish(name, store, work):
        barrier.wait()
        try:
            results[name] = store.publish(work)
        except StaleWriterError as error:
            results[name] = error

    threads = [threading.Thread(target=publish, args=w) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [n for n, r in results.items() if isinstance(r, str)]
    losers = [n for n, r in results.items() if isinstance(r, StaleWriterError)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert "another writer owns the job" in str(results[losers[0]])

    out = tmp_path / "out"
    assert open_store(store_url).restore(out) == results[winners[0]]
    assert json.loads((out / "oracle.json").read_bytes()) == {"writer": winners[0]}
    # The loser stays stale even for an unchanged directory.
    loser = next(store for name, store, _ in writers if name == losers[0])
    with pytest.raises(StaleWriterError):
        loser.publish(tmp_path / losers[0])


def test_a_stale_writer_with_nothing_new_still_learns_it_is_stale(tmp_path):
    url = f"file://{tmp_path}/bucket/job"
    work = tmp_path / "work"
    write_tree(work, V1)
    old = open_store(url)
    old.publish(work)
    new = open_store(url)
    new.restore(tmp_path / "new")
    write_tree(tmp_path / "new", {"oracle.json": b'{"trials": 9}'})
    taken = new.publish(tmp_path / "new")
    with pytest.raises(StaleWriterError, match=f"HEAD now names snapshot {taken}, which this writer did not make"):
        old.publish(work)  # unchanged since its own last snapshot


def test_corrupted_or_missing_blob_falls_back_to_previous_snapshot(store_url, tmp_path):
    work = tmp_path / "work"
    write_tree(work, V1)
    store = open_store(store_url)
    first = store.publish(work)
    write_tree(work, {"trial_1/trial.json": b'{"score": 0.9}', "oracle.json": b'{"trials": 2}'})
    second = store.publish(work)

    sha = hashlib.sha256(b'{"score": 0.9}').hexdigest()
    store.objects.put(f"blobs/{sha}", b'{"score": 1.0}')  # same size, other bytes

    out = tmp_path / "out"
    reader = open_store(store_url)
    assert reader.restore(out) == first
    assert read_tree(out) == V1
    assert reader.last_restore_warning == (
        f"snapshot {second} is damaged (content of trial_1/trial.json does not match its sha256); "
        f"restored snapshot {first} instead")

    only_in_second = hashlib.sha256(b'{"trials": 2}').hexdigest()
    store.objects.delete(f"blobs/{only_in_second}")
    with pytest.raises(NascloudError, match=f"snapshot {second} is damaged \\(content of oracle.json is missing\\)"):
        open_store(store_url).restore(tmp_path / "explicit", second)
    assert list((tmp_path / "explicit").iterdir()) == []  # nothing of a damaged snapshot lands

    # A writer that restored the fallback uploads the damaged content again: the next snapshot is whole.
    write_tree(out, {"trial_1/trial.json": b'{"score": 0.9}'})
    third = reader.publish(out)
    final = tmp_path / "final"
    assert open_store(store_url).restore(final) == third
    assert read_tree(final) == read_tree(out)


def publish_versions(url: str, work: Path, count: int) -> tuple:
    """`count` snapshots, each changing oracle.json; returns the store and their ids, oldest first."""
    store = open_store(url)
    ids = []
    for i in range(count):
        write_tree(work, {**V1, "oracle.json": f'{{"trials": {i}}}'.encode()})
        ids.append(store.publish(work))
    return store, ids


@pytest.mark.parametrize("damage", ["garbage", "truncated", "deleted", "HEAD names one never written"])
def test_a_damaged_newest_manifest_falls_back_to_the_older_intact_snapshots(tmp_path, damage):
    url = f"file://{tmp_path}/bucket/job"
    store, (first, second, third) = publish_versions(url, tmp_path / "work", 3)
    newest = third
    if damage == "garbage":
        store.objects.put(f"manifests/{third}.json", b"\x00\xff not json")
    elif damage == "truncated":
        data, _ = store.objects.get(f"manifests/{third}.json")
        store.objects.put(f"manifests/{third}.json", data[: len(data) // 2])
    elif damage == "deleted":
        store.objects.delete(f"manifests/{third}.json")
    else:
        newest = "000009"
        store.objects.put("HEAD", json.dumps({"snapshot_id": newest}).encode())
    reason = "missing" if damage in ("deleted", "HEAD names one never written") else "unreadable"
    intact = [first, second] if newest == third else [first, second, third]

    out = tmp_path / "out"
    reader = open_store(url)
    assert reader.restore(out) == intact[-1]
    assert read_tree(out) == {**V1, "oracle.json": f'{{"trials": {len(intact) - 1}}}'.encode()}
    assert reader.last_restore_warning == (f"snapshot {newest} is damaged (manifest {newest} is {reason}); "
                                           f"restored snapshot {intact[-1]} instead")
    assert [(s.snapshot_id, s.status) for s in reader.list()] == [
        *((sid, "fallback") for sid in intact), (newest, "damaged")]

    # The writer goes on from the fallback: its next snapshot is whole and the damaged one is pruned.
    write_tree(out, {"trial_1/trial.json": b'{"score": 0.8}'})
    fourth = reader.publish(out)
    assert [(s.snapshot_id, s.status) for s in reader.list()][-1] == (fourth, "committed")
    assert newest not in [s.snapshot_id for s in reader.list()]
    final = tmp_path / "final"
    assert open_store(url).restore(final) == fourth and read_tree(final) == read_tree(out)


def test_the_fallback_verifies_each_older_snapshot_and_names_every_one_skipped(store_url, tmp_path):
    store, (first, second, third) = publish_versions(store_url, tmp_path / "work", 3)
    store.objects.put(f"manifests/{third}.json", b"{}")
    only_in_second = hashlib.sha256(b'{"trials": 1}').hexdigest()
    store.objects.delete(f"blobs/{only_in_second}")

    out = tmp_path / "out"
    reader = open_store(store_url)
    assert reader.restore(out) == first
    assert read_tree(out) == {**V1, "oracle.json": b'{"trials": 0}'}
    assert reader.last_restore_warning == (
        f"snapshot {third} is damaged (manifest {third} is unreadable); snapshot {second} is damaged (content "
        f"of oracle.json is missing); restored snapshot {first} instead")


def test_keep_last_k_prunes_manifests_and_unreferenced_blobs(store_url, tmp_path):
    work = tmp_path / "work"
    store = open_store(store_url, keep=2, grace_seconds=0)
    ids = []
    for i in range(4):
        write_tree(work, {"oracle.json": f'{{"trials": {i}}}'.encode(), f"trial_{i}/w.h5": os.urandom(1000)})
        ids.append(store.publish(work))
    assert [s.snapshot_id for s in store.list()] == ids[-2:]
    blobs = {info.key for info in store.objects.list("blobs/")}
    # The two kept snapshots name 2 oracles + 4 weights (trial_0..3 are all still in the directory).
    assert len(blobs) == 6
    out = tmp_path / "out"
    assert open_store(store_url).restore(out) == ids[-1]
    assert read_tree(out) == read_tree(work)
    assert open_store(store_url).restore(tmp_path / "older", ids[-2]) == ids[-2]


def test_pruning_spares_young_unreferenced_blobs(tmp_path):
    """A blob a publish in progress uploaded but has not named yet survives the grace period."""
    url = f"file://{tmp_path}/bucket/job"
    store = open_store(url, keep=1)
    work = tmp_path / "work"
    write_tree(work, {"a": b"1"})
    store.publish(work)
    store.objects.put("blobs/" + "f" * 64, b"in flight")
    write_tree(work, {"a": b"2"})
    store.publish(work)
    assert "blobs/" + "f" * 64 in {i.key for i in store.objects.list("blobs/")}


def test_small_objects_beside_the_snapshots(store_url, tmp_path):
    store = open_store(store_url)
    assert store.get_json("agent/heartbeat.json") is None
    assert not store.exists("agent/heartbeat.json")
    store.put_json("agent/heartbeat.json", {"time": 1.0, "phase": "searching"})
    store.put_json("agent/heartbeat.json", {"time": 2.0, "phase": "snapshotting"})
    assert store.get_json("agent/heartbeat.json") == {"time": 2.0, "phase": "snapshotting"}
    assert store.exists("agent/heartbeat.json") and not store.exists("agent/heart")

    data = tmp_path / "d.npz"
    data.write_bytes(os.urandom(50_000))
    store.put_file("data/abc.npz", data)
    assert store.get_file("data/abc.npz", tmp_path / "got" / "d.npz")
    assert (tmp_path / "got" / "d.npz").read_bytes() == data.read_bytes()
    assert not store.get_file("data/missing.npz", tmp_path / "none.npz")
    assert not (tmp_path / "none.npz").exists()

    with pytest.raises(UsageError, match="bad object name"):
        store.put_json("HEAD", {})
    with pytest.raises(UsageError, match="bad object name"):
        store.get_json("../other-job/lease.json")


@pytest.mark.parametrize("url, message", [
    ("bucket/job", "not a bucket URL: 'bucket/job'"),
    ("http://host/job", "unknown scheme 'http'"),
    ("s3://Bad_Bucket/job", "'Bad_Bucket' is not a valid bucket name"),
    ("gs://b/job", "'b' is not a valid bucket name"),
    ("s3://bucket/a/../b", "'.' or '..' parts"),
    ("file://", "no path"),
])
def test_malformed_urls_are_usage_errors(url, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        open_store(url)


def test_relative_file_urls_resolve_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_store("file://./nascloud-bucket/job-1").url == f"file://{tmp_path}/nascloud-bucket/job-1"
    assert job_url("file://./nascloud-bucket", "job-1") == f"file://{tmp_path}/nascloud-bucket/job-1"
    assert job_url("s3://bkt/prefix/", "job-1") == "s3://bkt/prefix/job-1"
    assert parse_url("gs://bkt").prefix == ""


def test_missing_buckets_are_named(moto_server, gcs_server, tmp_path):
    write_tree(tmp_path / "work", V1)
    for scheme, cloud in (("s3", "S3"), ("gs", "GCS")):
        store = open_store(f"{scheme}://no-such-bucket/job")
        for operation in (store.list, lambda: store.publish(tmp_path / "work"),
                          lambda: store.put_file("data/x.npz", tmp_path / "work/oracle.json")):
            with pytest.raises(UsageError, match=f"^{cloud} bucket 'no-such-bucket' does not exist"):
                operation()


def test_unreachable_endpoint_is_a_cloud_error(moto_server, monkeypatch):
    from tests.fixtures.servers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(CloudError, match="cannot reach S3"):
        open_store("s3://some-bucket/job").list()


def test_a_file_bucket_is_only_its_user_s_whatever_the_umask(tmp_path):
    from nascloud.jobbucket import JobBucket
    from tests.fixtures.search import make_bundle

    umask = os.umask(0o022)  # a shared machine's usual umask: 0755 folders, 0644 files
    try:
        job = JobBucket.open(make_bundle(tmp_path, "private-a1b2c3"))  # what launch writes: bundle, data, budget
        job.store.put_json("agent/heartbeat.json", {"time": 1.0})
        (tmp_path / "model.npz").write_bytes(os.urandom(1000))
        job.store.put_file("results/model.npz", tmp_path / "model.npz")
    finally:
        os.umask(umask)
    bucket = tmp_path / "bucket"
    modes = {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in [bucket, *bucket.rglob("*")]}
    assert "bucket/private-a1b2c3/bundle/job.json" in modes and "bucket/private-a1b2c3/results/model.npz" in modes
    assert {path: mode for path, mode in modes.items()
            if mode != ("0o700" if (tmp_path / path).is_dir() else "0o600")} == {}

"""`nascloud checkpoints list/pull` as a user runs them: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from nascloud.checkpoints import open_store
from tests.fixtures.servers import free_port

SECRET = "s3cr3t-d0-not-print-me"


def nascloud(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nascloud", *args], capture_output=True, text=True,
                          env=env or dict(os.environ), cwd=cwd, timeout=120)


def test_list_and_pull_a_job_by_url_and_by_id(tmp_path):
    url = f"file://{tmp_path}/bucket/digits-1a2b3c"
    work = tmp_path / "work"
    (work / "trial_0").mkdir(parents=True)
    (work / "trial_0/trial.json").write_text('{"score": 0.5}')
    store = open_store(url)
    first = store.publish(work)
    (work / "oracle.json").write_text("{}")
    second = store.publish(work)

    listed = nascloud("checkpoints", "list", url, "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(s["snapshot_id"], s["files"], s["committed"]) for s in json.loads(listed.stdout)] == [
        (first, 1, True), (second, 2, True)]
    table = nascloud("checkpoints", "list", url).stdout.splitlines()
    assert table[0].split()[:2] == ["SNAPSHOT", "CREATED"] and table[2].startswith(second)

    # A job id this machine's job cache knows stands for its bucket URL.
    from nascloud.state import JobCache

    home = tmp_path / "home"
    env = {**os.environ, "NASCLOUD_HOME": str(home)}
    home.mkdir()
    JobCache(home / "jobs.db").remember("digits-1a2b3c", "digits", url, created_at=0.0)
    pulled = nascloud("checkpoints", "pull", "digits-1a2b3c", str(tmp_path / "mine"), "--snapshot", first, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == f"restored snapshot {first} (1 files, 14 B) into {tmp_path / 'mine'}"
    assert sorted(p.name for p in (tmp_path / "mine").rglob("*") if p.is_file()) == ["trial.json"]

    unknown = nascloud("checkpoints", "list", "nosuch-job", env=env)
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("Error: no job 'nosuch-job' launched from this machine (recent: digits-1a2b3c)")
    assert "give its bucket URL" in unknown.stderr and len(unknown.stderr.splitlines()) == 1

    (tmp_path / "bucket/other").mkdir()  # a job's folder (launch made it) with no snapshot in it yet
    empty = nascloud("checkpoints", "pull", f"file://{tmp_path}/bucket/other", str(tmp_path / "x"))
    assert (empty.returncode, empty.stderr) == (1, f"Error: file://{tmp_path}/bucket/other has no snapshot yet: "
                                                    "the job has not checkpointed; try again later\n")


def test_bad_urls_and_missing_buckets_are_one_line_errors(moto_server, gcs_server):
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": SECRET}
    for args, code, message in [
        (["list", "ftp://host/job"], 2, "Error: unknown scheme 'ftp' in 'ftp://host/job'; use file:///path, "
                                        "file://./relative, s3://bucket/prefix or gs://bucket/prefix"),
        (["list", "s3://no-such-bucket/job"], 2, "Error: S3 bucket 'no-such-bucket' does not exist: create it "
                                                 "or fix the bucket URL (checkpoint.bucket in the job file)"),
        (["pull", "gs://no-such-bucket/job", "out"], 2, "Error: GCS bucket 'no-such-bucket' does not exist: "
                                                        "create it or fix the bucket URL (checkpoint.bucket in the job file)"),
    ]:
        result = nascloud("checkpoints", *args, env=env)
        assert (result.returncode, result.stderr.strip()) == (code, message)
        assert SECRET not in result.stdout + result.stderr


def test_no_credentials_are_cloud_errors(tmp_path):
    """Nothing leaves the machine: metadata servers and endpoints point at a closed local port."""
    closed = f"127.0.0.1:{free_port()}"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "STORAGE_EMULATOR"))}
    base.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path), GCE_METADATA_HOST=closed, GCE_METADATA_IP=closed,
                AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
                AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL=f"http://{closed}", AWS_DEFAULT_REGION="us-east-1")
    s3 = nascloud("checkpoints", "list", "s3://some-bucket/job", env=base)
    assert (s3.returncode, s3.stderr.strip()) == (1, "Error: no AWS credentials found: configure them the standard "
                                                     "way (AWS_PROFILE, ~/.aws/credentials, environment variables "
                                                     "or an instance role)")
    gs = nascloud("checkpoints", "list", "gs://some-bucket/job", env=base)
    assert (gs.returncode, gs.stderr.strip()) == (1, "Error: no Google Cloud credentials found: run `gcloud auth "
                                                     "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS")


def test_list_marks_a_damaged_snapshot_and_the_older_ones_restore_falls_back_to(tmp_path):
    url = f"file://{tmp_path}/bucket/job"
    work = tmp_path / "work"
    work.mkdir()
    store = open_store(url)
    ids = []
    for i in range(3):
        (work / "oracle.json").write_text(f'{{"trials": {i}}}')
        ids.append(store.publish(work))
    store.objects.put(f"manifests/{ids[-1]}.json", b"garbage")

    table = nascloud("checkpoints", "list", url)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ids
    assert [row.split("  ")[-1] for row in rows] == [
        "fallback (older than a damaged snapshot: restore falls back to it)"] * 2 + ["damaged (restore skips it)"]
    listed = json.loads(nascloud("checkpoints", "list", url, "--json").stdout)
    assert [(s["snapshot_id"], s["status"], s["committed"], s["files"]) for s in listed] == [
        (ids[0], "fallback", False, 1), (ids[1], "fallback", False, 1), (ids[2], "damaged", False, None)]

    pulled = nascloud("checkpoints", "pull", url, str(tmp_path / "mine"))
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stderr == (f"Warning: snapshot {ids[2]} is damaged (manifest {ids[2]} is unreadable); "
                             f"restored snapshot {ids[1]} instead\n")
    assert (tmp_path / "mine/oracle.json").read_text() == '{"trials": 1}'

"""Hostile input that was still accepted or crashed (issue 24): each is refused with one `Error:` line naming
the problem and the fix, exit 2, no traceback, before anything is written. In process and fast: no search runs,
nothing reaches a cloud (the `cli` fixture of test_hardening_input points every endpoint at a closed port)."""

from __future__ import annotations

import pytest

from tests.test_hardening_input import Outcome, cli, write_job  # noqa: F401  (cli is the fixture)

DEEP = "[" * 3000 + "]" * 3000


def error_of(outcome: Outcome) -> str:
    assert outcome.refused_cleanly, outcome
    return outcome.err.strip()


@pytest.fixture
def job(tmp_path):
    """A local job whose bucket is a folder under tmp_path."""
    return write_job(tmp_path)


def nothing_written(tmp_path) -> bool:
    """No bucket folder, no local provider's groups."""
    return not (tmp_path / "bucket").exists() and not (tmp_path / "home" / "local").exists()


# ---- 1. --set values: read as the job file is read ------------------------------------------------------

@pytest.mark.parametrize("command", [["estimate"], ["launch", "--dry-run"]])
def test_a_deeply_nested_set_value_is_one_line_not_a_recursion_traceback(cli, job, command):
    """Was: RecursionError traceback, exit 1 (only the job file's YAML was guarded)."""
    outcome = cli(*command, job, "--set", f"search.space.kernel_size={DEEP}")
    assert error_of(outcome) == ("Error: --set search.space.kernel_size: nested too deeply to be a job file's "
                                 "value; write the value as in the job file")


# ---- 2. job files: a bool is not a number, a key is given once ------------------------------------------

@pytest.mark.parametrize("section, field, value", [
    ("search", "max_trials", True), ("search", "epochs", True), ("search", "seed", False),
    ("search", "data_fraction", True), ("search", "samples", True), ("checkpoint", "keep", True),
    ("budget", "usd", True), ("budget", "alerts", [True]), ("compute", "price_per_hour", True),
    ("compute", "workers", True), ("compute", "on_demand_after_preemptions", False),
])
def test_true_or_false_is_not_a_number_in_a_job_file(cli, tmp_path, section, field, value):
    """Was: accepted as 1 or 0 (`max_trials: true` ran one trial)."""
    error = error_of(cli("estimate", write_job(tmp_path, **{section: {field: value}})))
    assert f"{section}.{field}" in error and "must be" in error and error.endswith(("got true", "got false"))


def test_true_is_not_a_number_in_a_set_value_or_a_kernel_list(cli, job):
    assert error_of(cli("estimate", job, "--set", "search.max_trials=true")) == (
        "Error: --set search.max_trials: must be a whole number in [1, 10,000], got true")
    assert error_of(cli("estimate", job, "--set", "search.space.kernel_size=[true]")) == (
        "Error: --set search.space.kernel_size: must be a whole number in [1, 15], got true")


def test_a_key_given_twice_in_a_job_file_is_refused_naming_the_key_and_its_lines(cli, tmp_path):
    """Was: accepted, the later value silently won."""
    job = write_job(tmp_path, "name: digits-x\nsearch:\n  max_trials: 3\n  epochs: 2\n  max_trials: 40\n")
    assert error_of(cli("estimate", job)) == (
        f"Error: {job}: 'max_trials' is given twice (lines 3 and 5) and the later would silently win; keep one")
    flow = write_job(tmp_path, "name: digits-x\nname: digits-y\n")
    assert "'name' is given twice (lines 1 and 2)" in error_of(cli("launch", flow, "--dry-run"))
    assert nothing_written(tmp_path)
    merged = write_job(tmp_path, "name: digits-x\nsearch:\n  <<: {epochs: 2}\n  epochs: 5\n")  # an override
    assert cli("estimate", merged, "--json").code == 0


# ---- 2. bucket URLs: the dry run checks them as every other command does --------------------------------

def test_dry_run_refuses_a_bucket_url_that_status_refuses_with_the_same_words(cli, job):
    """Was: `launch --dry-run --bucket s3://Bad_Bucket!!/p` printed a request, exit 0."""
    url = "s3://Bad_Bucket!!/p"
    dry = error_of(cli("launch", job, "--dry-run", "--bucket", url))
    assert dry == error_of(cli("status", url))
    assert dry.startswith(f"Error: malformed s3:// URL '{url}': 'Bad_Bucket!!' is not a valid bucket name (3-63 ")


@pytest.mark.parametrize("url", ["s3://my-bucket/jobs?x=1", "gs://my-bucket/a?b", "gs://my-bucket/a#b",
                                 "s3://my-bucket/#frag", "file://./bucket?x", "file:///tmp/a#b"])
def test_a_question_mark_or_a_hash_in_a_bucket_url_is_refused(cli, job, tmp_path, url):
    """Was: accepted (a `?` in a GCS object name breaks its URLs; in file:// it named a folder `a?b`)."""
    assert "'?' and '#' cannot be in a bucket URL" in error_of(cli("launch", job, "--dry-run", "--bucket", url))
    assert "'?' and '#' cannot be in a bucket URL" in error_of(cli("checkpoints", "list", url))


# ---- 3. a file:// bucket that can be no folder ---------------------------------------------------------

@pytest.mark.parametrize("url, why", [("file:///etc/passwd/x", "/etc/passwd is not a folder"),
                                      ("file:///dev/null", "/dev/null is not a folder"),
                                      ("file:///proc/x", "cannot make a folder in /proc")])
def test_launch_refuses_a_file_bucket_that_cannot_be_a_folder_before_anything_is_written(cli, job, tmp_path, url,
                                                                                         why):
    """Was: a data warning, then `cannot write file:///...: not a directory`, exit 1, after the launch began."""
    error = error_of(cli("launch", job, "--bucket", url, "--detach"))
    assert error.startswith(f"Error: checkpoint.bucket {url}: {why}") and "--bucket file://./nascloud-bucket" in error
    assert nothing_written(tmp_path)


# ---- 4. checkpoints: a folder that is no job's, a file URL with a host ---------------------------------

def test_checkpoints_list_of_a_folder_that_is_no_job_is_refused_as_status_refuses_it(cli, tmp_path):
    """Was: `no snapshots yet in file:///etc`, exit 0."""
    (tmp_path / "notajob").mkdir()
    (tmp_path / "notajob" / "notes.txt").write_text("mine")
    url = f"file://{tmp_path}/notajob"
    for args in (["checkpoints", "list", url], ["checkpoints", "list", url, "--json"]):
        error = error_of(cli(*args))
        assert error == error_of(cli("status", url))
        assert "has no bundle/job.json: not a job `nascloud launch` made" in error


def test_a_file_url_naming_a_host_is_refused_not_read_as_a_relative_folder(cli, job, tmp_path):
    """Was: file://host/path read as ./host/path (exit 0, `no snapshots yet in file://<cwd>/host/path`)."""
    (tmp_path / "host" / "path").mkdir(parents=True)
    for args in (["checkpoints", "list", "file://host/path"],
                 ["launch", job, "--dry-run", "--bucket", "file://host/path"]):
        assert "names the host 'host': a file:// bucket is a folder on this machine; write file:///host/" in error_of(
            cli(*args))
    assert cli("launch", job, "--dry-run", "--bucket", f"file://localhost{tmp_path}/b").code == 0
    assert cli("launch", job, "--dry-run", "--bucket", "file://./b").code == 0

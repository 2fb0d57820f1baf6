"""The job commands' answers to bad input, as a user sees them: an exit code and one `Error: ...` line,
no traceback, and nothing launched or removed that should not be. Fast: no search runs here."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from nascloud.checkpoints import open_store
from nascloud.job import load_job
from nascloud.provisioners.local import LocalProvisioner
from nascloud.state import State
from tests.fixtures.servers import free_port
from tests.test_e2e_local import JOB, Cli, cli  # noqa: F401  (cli is the fixture)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def error_of(done) -> str:
    """The one line a user error prints, after checking it is the only output on stderr."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


def add_job(cli: Cli, status: str) -> tuple[str, str]:
    """A job recorded as launch records it (bundle in a file:// bucket), now at status; (job_id, job_url)."""
    from nascloud import launching

    spec = load_job(cli.write_job())
    cli.home.mkdir(exist_ok=True)
    state = State(cli.home / "state.db")
    job_id = launching.create_job(state, spec, launching.choose_offer(spec, None), None, 0.01)
    state.set_job(job_id, status=status)
    return job_id, state.job(job_id).job_url


def test_launch_with_an_invalid_job_file_names_the_field(cli):
    path = cli.workdir / "bad.yaml"
    path.write_text(JOB.format(trials=0, epochs=3, budget=5, bucket=cli.workdir / "bucket"))
    done = cli.run("launch", str(path))
    assert done.returncode == 2
    assert "search.max_trials" in error_of(done)
    assert json.loads(cli.run("status", "--json").stdout) == []


def test_a_file_bucket_for_aws_says_which_buckets_fit(cli):
    done = cli.run("launch", str(cli.write_job()), "--cloud", "aws")
    assert done.returncode == 2
    message = error_of(done)
    assert "file://" in message and "s3://" in message and "aws" in message


@pytest.fixture
def no_aws(cli) -> dict:
    """No AWS credentials anywhere, and any request would go to a closed port on this machine."""
    cli.env.pop("AWS_PROFILE", None)
    return {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}


def test_aws_without_credentials_fails_before_anything_exists(cli, no_aws):
    aws_job = str(EXAMPLES / "digits-aws-t4-spot.yaml")
    done = cli.run("launch", aws_job, "--bucket", "s3://bucket/nascloud", extra_env=no_aws)
    assert done.returncode == 1
    assert "credentials" in error_of(done)
    assert json.loads(cli.run("status", "--json").stdout) == []


@pytest.mark.parametrize("command", [("launch", str(EXAMPLES / "digits-aws-t4-spot.yaml")),
                                     ("checkpoints", "list", "s3://my-bucket/nascloud")])
def test_an_aws_profile_that_does_not_exist_is_named(cli, no_aws, command):
    done = cli.run(*command, extra_env={**no_aws, "AWS_PROFILE": "typo-profile"})
    assert done.returncode == 2
    message = error_of(done)
    assert "typo-profile" in message and "AWS_PROFILE" in message


def test_a_budget_below_the_estimate_is_refused_unless_forced(cli, no_aws):
    aws_job = str(EXAMPLES / "digits-aws-t4-spot.yaml")
    refused = cli.run("launch", aws_job, "--bucket", "s3://bucket/nascloud", "--budget", "0.01", extra_env=no_aws)
    assert refused.returncode == 2
    message = error_of(refused)
    assert "P50 cost $" in message and "$0.01" in message and "--force" in message
    # Forced, it goes past the estimate to the next check (the credentials, here).
    forced = cli.run("launch", aws_job, "--bucket", "s3://bucket/nascloud", "--budget", "0.01", "--force",
                     extra_env=no_aws)
    assert forced.returncode == 1 and "credentials" in error_of(forced)


@pytest.mark.parametrize("example, request_key, fields", [
    ("digits-aws-t4-spot.yaml", "RunInstances", ("InstanceType", "UserData")),
    ("digits-gcp-spot.yaml", "instances.insert", ("machineType", "labels")),
])
def test_dry_run_prints_the_cloud_request_without_network_or_credentials(cli, no_aws, example, request_key, fields):
    done = cli.run("launch", str(EXAMPLES / example), "--dry-run",
                   extra_env={**no_aws, "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent"})
    assert done.returncode == 0, done.stderr
    request = json.loads(done.stdout)[request_key]
    assert all(request[field] for field in fields)
    assert json.loads(cli.run("status", "--json").stdout) == []


@pytest.mark.parametrize("command", ["status", "logs", "stop", "results"])
def test_an_unknown_job_lists_the_recent_ones(cli, command):
    job_id, _ = add_job(cli, "finished")
    done = cli.run(command, "nosuchjob")
    assert done.returncode == 2
    message = error_of(done)
    assert "nosuchjob" in message and job_id in message


@pytest.mark.parametrize("budget", ["-5", "abc"])
def test_resume_refuses_a_budget_that_is_not_a_positive_amount(cli, budget):
    job_id, _ = add_job(cli, "budget")
    done = cli.run("resume", job_id, "--budget", budget)
    assert done.returncode == 2
    assert budget in error_of(done)
    assert cli.status(job_id)["status"] == "budget"  # nothing changed


def put_lease(job_url: str, age_seconds: float) -> None:
    open_store(job_url).put_json("lease.json", {"renewed_at": time.time() - age_seconds, "ttl_seconds": 600})


def test_gc_removes_only_instances_whose_job_is_over_or_whose_lease_lapsed(cli):
    provisioner = LocalProvisioner(home=cli.home / "local", use_ssh=False)
    spec = load_job(cli.write_job())

    def job_with_instance(status: str, lease_age: float | None) -> str:
        job_id, job_url = add_job(cli, status)
        if lease_age is not None:
            put_lease(job_url, lease_age)
        return provisioner.launch(job_id, None, spec).instance_id

    finished = job_with_instance("finished", None)
    lapsed = job_with_instance("running", lease_age=3600)
    fresh = job_with_instance("running", lease_age=5)
    # Another machine's job: this database does not know it, the instance carries its job_url (as a
    # cloud instance's tags do) and its lease is fresh.
    stranger = provisioner.launch("other-dddddd", None, spec).instance_id
    record_path = cli.home / "local" / "instances" / stranger / "state.json"
    record = json.loads(record_path.read_text())
    stranger_url = f"file://{cli.workdir / 'elsewhere' / 'other-dddddd'}"
    record["instance"]["extra"]["job_url"] = stranger_url
    record_path.write_text(json.dumps(record))
    put_lease(stranger_url, 5)

    kept = {fresh, stranger}
    declined = cli.run("gc", input="n\n")
    assert declined.returncode == 1
    listed = {line.split()[0] for line in declined.stdout.splitlines() if line.startswith("local-")}
    assert listed == {finished, lapsed}, declined.stdout
    assert "job is finished" in declined.stdout and "lease lapsed 60 min ago" in declined.stdout
    assert {i.instance_id for i in provisioner.list_owned()} == {finished, lapsed} | kept

    removed = cli.run("gc", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert "removed 2 instance(s)" in removed.stdout
    assert {i.instance_id for i in provisioner.list_owned()} == kept
    assert cli.run("gc", "--yes").stdout.strip() == "nothing to collect"

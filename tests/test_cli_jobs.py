"""The job commands' answers to bad input, as a user sees them: an exit code and one `Error: ...` line,
no traceback, and nothing launched, stopped or removed that should not be; and `gc`, which judges each
group nascloud made by its own job's bucket. Fast: no search runs here (a host runs `sleep`)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nascloud.jobbucket import JobBucket
from nascloud.provisioners.local import LocalProvisioner, instance_pids
from tests.fixtures.search import make_bundle
from tests.fixtures.servers import free_port
from tests.test_e2e_local import JOB, Cli, cli, wait_for  # noqa: F401  (cli is the fixture)
from tests.test_provisioners_local import run_group

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
JOB_COMMANDS = [("status",), ("watch",), ("logs",), ("stop",), ("resume",), ("results",), ("drill",)]


@pytest.fixture(autouse=True)
def this_home(cli, monkeypatch):
    """Groups made here belong to the cli's home, so that its fixture ends their hosts with the test."""
    monkeypatch.setenv("NASCLOUD_HOME", str(cli.home))


def error_of(done) -> str:
    """The one line a user error prints, after checking it is the only output on stderr."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


def refused(done) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    return error_of(done)


def make_job(cli: Cli, job_id: str) -> JobBucket:
    """A job as launch leaves it in its bucket (bundle, data set, budget record), but no group yet: what a
    machine that never saw it finds by its URL."""
    return JobBucket.open(make_bundle(cli.workdir, job_id, budget={"usd": 5}))


def with_group(cli: Cli, job: JobBucket, size: int) -> LocalProvisioner:
    """The job's search group on the local provider that `cli`'s commands use, at `size` hosts that sleep."""
    from nascloud import launching

    provider = LocalProvisioner(root=cli.home / "local")
    provider.create_groups([dataclasses.replace(s, size=0) for s in launching.group_specs(job.bundle())])
    if size:
        run_group(provider, job.bundle().job_id, "sleep 600", size)
        wait_for(lambda: len(provider.groups(job.bundle().job_id)[0].live) == size, 30, "the group's hosts")
    return provider


def live_ids(provider: LocalProvisioner, job_id: str) -> set[str]:
    return {i.instance_id for g in provider.groups(job_id) for i in g.live}


# --- launch -------------------------------------------------------------------------------------------

def test_launch_with_an_invalid_job_file_names_the_field(cli):
    path = cli.workdir / "bad.yaml"
    path.write_text(JOB.format(trials=0, epochs=3, budget=5, bucket=cli.workdir / "bucket", webhook=""))
    assert "search.max_trials" in refused(cli.run("launch", str(path)))
    assert json.loads(cli.run("status", "--json").stdout) == []


def test_a_file_bucket_for_aws_says_which_buckets_fit(cli):
    message = refused(cli.run("launch", str(cli.write_job()), "--cloud", "aws"))
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


@pytest.mark.parametrize("command", [("launch", str(EXAMPLES / "digits-aws-t4-spot.yaml"), "--bucket", "s3://bkt/nascloud"),
                                     ("checkpoints", "list", "s3://my-bucket/nascloud")])
def test_an_aws_profile_that_does_not_exist_is_named(cli, no_aws, command):
    message = refused(cli.run(*command, extra_env={**no_aws, "AWS_PROFILE": "typo-profile"}))
    assert "typo-profile" in message and "AWS_PROFILE" in message


def test_a_budget_below_the_estimate_is_refused_unless_forced(cli, no_aws):
    aws_job = str(EXAMPLES / "digits-aws-t4-spot.yaml")
    message = refused(cli.run("launch", aws_job, "--bucket", "s3://bucket/nascloud", "--budget", "0.01",
                              extra_env=no_aws))
    assert "P50 cost $" in message and "$0.01" in message and "--force" in message
    # Forced, it goes past the estimate to the next check (the credentials, here).
    forced = cli.run("launch", aws_job, "--bucket", "s3://bucket/nascloud", "--budget", "0.01", "--force",
                     extra_env=no_aws)
    assert forced.returncode == 1 and "credentials" in error_of(forced)


@pytest.mark.parametrize("example, template_of, fields", [
    ("digits-aws-t4-spot.yaml", lambda r: r["CreateLaunchTemplate"]["LaunchTemplateData"], ("InstanceType", "UserData")),
    ("digits-gcp-spot.yaml", lambda r: r["instanceTemplates.insert"][0]["properties"], ("machineType", "labels")),
])
def test_dry_run_prints_the_cloud_request_without_network_or_credentials(cli, no_aws, example, template_of, fields):
    done = cli.run("launch", str(EXAMPLES / example), "--dry-run",
                   extra_env={**no_aws, "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent"})
    assert done.returncode == 0, done.stderr
    template = template_of(json.loads(done.stdout))
    assert all(template[field] for field in fields)
    assert json.loads(cli.run("status", "--json").stdout) == []


# --- the job commands on a job that cannot do what they ask -------------------------------------------

def test_an_unknown_job_lists_the_recent_ones_and_a_url_without_a_bundle_says_so(cli):
    job = make_job(cli, "digits-e2e-aaaaaa")
    assert cli.run("status", job.url).returncode == 0  # a job looked at here is one this machine knows
    empty = cli.workdir / "bucket" / "nojob-000000"
    empty.mkdir()
    for command in [*JOB_COMMANDS, ("checkpoints", "list")]:
        message = refused(cli.run(*command, "nosuchjob"))
        assert "nosuchjob" in message and "digits-e2e-aaaaaa" in message, (command, message)
    for command in JOB_COMMANDS:
        message = refused(cli.run(*command, f"file://{empty}"))
        assert f"file://{empty} has no bundle/job.json" in message, (command, message)


def test_a_job_that_has_ended_cannot_be_stopped_resumed_or_drilled_and_has_no_results_yet(cli):
    job = make_job(cli, "digits-e2e-bbbbbb")
    job.write_exit("finished", "search finished", "local-00000000")
    assert "has already ended; nothing to stop" in refused(cli.run("stop", job.url))
    assert "has finished; see `nascloud results" in refused(cli.run("resume", job.url))
    assert "has no instance training now to preempt" in refused(cli.run("drill", job.url))
    assert "has no results yet" in refused(cli.run("results", job.url))
    assert job.exit_record()["status"] == "finished" and job.stop_request() is None  # nothing written


def test_a_running_job_is_not_resumed_and_a_booting_one_is_not_drilled(cli):
    job = make_job(cli, "digits-e2e-cccccc")
    provider = with_group(cli, job, size=1)
    hosts = live_ids(provider, job.bundle().job_id)
    assert "is launching; `nascloud stop digits-e2e-cccccc` it first" in refused(cli.run("resume", job.url))
    # Its host has not reported training yet: a drill would time nothing.
    assert "has no instance training now to preempt" in refused(cli.run("drill", job.url))
    assert live_ids(provider, job.bundle().job_id) == hosts  # nobody preempted


@pytest.mark.parametrize("budget", ["-5", "abc"])
def test_resume_refuses_a_budget_that_is_not_a_positive_amount(cli, budget):
    job = make_job(cli, "digits-e2e-dddddd")
    job.write_exit("budget", "the budget is spent", "local-00000000")
    before = job.budget()
    assert budget in refused(cli.run("resume", job.url, "--budget", budget))
    assert job.budget() == before and job.exit_record()["status"] == "budget"  # nothing changed


# --- gc -----------------------------------------------------------------------------------------------

def test_gc_collects_ended_empty_and_silent_groups_and_never_one_whose_agent_beats(cli, monkeypatch):
    now = time.time()
    jobs = {name: make_job(cli, f"digits-e2e-{name}") for name in ("ended", "empty", "silent", "beating", "booting")}
    providers = {name: with_group(cli, job, size=0 if name == "empty" else 1) for name, job in jobs.items()}
    jobs["ended"].write_exit("finished", "search finished", "local-00000000")
    jobs["silent"].store.put_json("agent/heartbeat.json", {"time": now - 7200, "phase": "searching"})
    jobs["beating"].store.put_json("agent/heartbeat.json", {"time": now, "phase": "searching"})
    # "booting": its agent has not reported yet (no heartbeat at all).
    kept = {name: live_ids(providers[name], jobs[name].bundle().job_id) for name in ("beating", "booting")}

    # Judged from a machine that never saw these jobs: only each group's own bucket URL says whose it is.
    monkeypatch.setenv("NASCLOUD_HOME", str(cli.workdir.parent / "elsewhere"))
    from nascloud import launching

    provider = LocalProvisioner(root=cli.home / "local")
    garbage = {group.job_id: why for group, why in launching.find_garbage(provider)}
    assert garbage == {"digits-e2e-ended": "its job is finished", "digits-e2e-empty": "it is at size 0",
                       "digits-e2e-silent": "its agent has been silent for 120 min"}

    # This home's job cache never saw them either. A pipe is no terminal to ask on: even a piped "y" removes
    # nothing, and gc says what it would have removed.
    piped = subprocess.run([sys.executable, "-m", "nascloud", "gc"], input="y\n", env=cli.env, cwd=cli.workdir,
                           capture_output=True, text=True, timeout=120)
    assert piped.returncode == 2 and "--yes" in piped.stderr.splitlines()[-1]
    assert "group search of job digits-e2e-silent (1 running): its agent has been silent for 120 min" in piped.stderr
    assert sum(line.startswith("group search of job") for line in piped.stderr.splitlines()) == 3

    removed = cli.run("gc", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert "removed 3 group(s)" in removed.stdout
    for name in ("ended", "silent"):
        wait_for(lambda: not live_ids(provider, jobs[name].bundle().job_id), 30, f"the {name} group's hosts to end")
    assert all(instance_pids(i.instance_id) == [] for name in ("ended", "silent")
               for g in provider.groups(jobs[name].bundle().job_id) for i in g.instances)
    for name, hosts in kept.items():
        assert live_ids(provider, jobs[name].bundle().job_id) == hosts, name  # untouched
        assert provider.groups(jobs[name].bundle().job_id)[0].size == 1

    # The collected groups are gone with their hosts, in one pass.
    assert sorted(g.job_id for g in provider.list_owned()) == ["digits-e2e-beating", "digits-e2e-booting"]
    assert cli.run("gc", "--yes").stdout.strip() == "nothing to collect"


def test_the_home_and_its_jobs_db_are_only_the_user_s_whatever_the_umask(cli):
    """They hold every job's bucket URL, and the home the local hosts' scripts and the SSH keys."""
    def mode(path: Path) -> str:
        return oct(path.stat().st_mode & 0o777)

    umask = os.umask(0o022)  # a shared machine's usual umask, inherited by the CLI
    try:
        assert cli.run("status").returncode == 0
        assert (mode(cli.home), mode(cli.home / "jobs.db")) == ("0o700", "0o600")

        # A home an older nascloud left open is closed; a folder of the user's that NASCLOUD_HOME names keeps
        # its mode.
        cli.home.chmod(0o755)
        (cli.home / "jobs.db").chmod(0o644)
        shared = cli.workdir / "shared"
        shared.mkdir()
        for home in (cli.home, shared):
            assert cli.run("status", home=home).returncode == 0
    finally:
        os.umask(umask)
    assert (mode(cli.home), mode(cli.home / "jobs.db")) == ("0o700", "0o600")
    assert (mode(shared), mode(shared / "jobs.db")) == ("0o755", "0o600")

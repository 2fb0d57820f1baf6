"""The conventions every command keeps, as a user meets them: --version, -h, shell completion, one notation
for arguments, an example in every help, a cloud launch that says what it will spend and asks first,
`--set` validated like the job file, and `nascloud check`. Fast: no search runs here."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import boto3
import pytest
import yaml

from nascloud.cli import main
from nascloud.cli.app import EXAMPLES

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "examples"
AWS_JOB = str(EXAMPLES_DIR / "digits-aws-t4-spot.yaml")
LOCAL_JOB = str(EXAMPLES_DIR / "digits-local.yaml")
SPOT_G_QUOTA = "L-3819A6DF"  # All G and VT Spot Instance Requests, in vCPUs


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """`nascloud ARGS` in this process, stdin not a terminal; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NASCLOUD_CATALOG", raising=False)
    monkeypatch.chdir(tmp_path)

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["nascloud", *map(str, args)])
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        with pytest.raises(SystemExit) as stop:
            main()
        out = capsys.readouterr()
        return stop.value.code or 0, out.out, out.err

    return run


def one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("Error: ") and "Traceback" not in err, err
    return lines[-1]


def commands() -> list[list[str]]:
    """Every visible command path, from the application itself (a new command is covered without a list)."""
    from typer.main import get_command

    from nascloud.cli.app import app

    found = []

    def walk(group, path):
        for name in group.list_commands(None):
            command = group.get_command(None, name)
            if command.hidden:
                continue
            if hasattr(command, "list_commands"):
                walk(command, [*path, name])
            else:
                found.append([*path, name])

    walk(get_command(app), [])
    return found


# ---- --version, -h, completion ------------------------------------------------------------------------

def test_version_prints_the_installed_version(cli):
    assert cli("--version") == (0, f"nascloud {version('nascloud')}\n", "")


@pytest.mark.parametrize("path", [[], ["launch"], ["checkpoints", "pull"]])
def test_dash_h_is_help(cli, path):
    short, long = cli(*path, "-h"), cli(*path, "--help")
    assert short == long and short[0] == 0 and short[1].startswith("Usage: nascloud")


def test_every_command_has_an_example_and_one_argument_notation(cli):
    found = commands()
    # No example for a command that is gone; the others are the groups' ("" is nascloud's) and the hidden agent's.
    assert {" ".join(path) for path in found} == set(EXAMPLES) - {"", "checkpoints", "agent"}
    for path in found:
        code, out, _ = cli(*path, "--help")
        assert code == 0
        usage = out.splitlines()[0]
        # Arguments read JOB (an id, a name or a bucket URL) or JOB.yaml (a job file), [JOB] when optional.
        arguments = re.fullmatch(r"Usage: nascloud [a-z ]+ \[OPTIONS\]((?: \S+)*)", usage).group(1).split()
        assert {a.strip("[]") for a in arguments} <= {"JOB", "JOB.yaml", "DIR"}, usage
        example = out.split("Example:\n", 1)[1].strip()
        assert example == EXAMPLES[" ".join(path)] and example.startswith("nascloud " + " ".join(path))
        # A flag is the one a user types: --detach, not --detach / --no-detach.
        pairs = re.findall(r"--[a-z-]+ / --[a-z-]+|--[a-z-]+/--[a-z-]+", out)
        assert set(pairs) <= {"--spot / --on-demand"}, (path, pairs)  # two choices, each a flag


def test_the_command_list_shows_each_description_whole(cli):
    code, out, _ = cli("--help")
    listing = " ".join(out.split("Commands:", 1)[1].split())
    assert code == 0 and "..." not in listing
    assert "Run the search on a group of (spot) instances that replaces a preempted one and stops at the budget, " \
           "all without this machine; then follow it live (Ctrl-C leaves it running)." in listing


def test_completion_scripts_and_completing_a_command_and_a_job(tmp_path, monkeypatch):
    def nascloud(*args, **env):
        # Typer's switch for naming the shell instead of detecting the one that runs these tests.
        return subprocess.run([sys.executable, "-m", "nascloud", *args], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "HOME": str(tmp_path),
                                   "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1", **env})

    bash = nascloud("--show-completion", "bash")
    assert bash.returncode == 0
    assert "complete -o default -F _nascloud_completion nascloud" in bash.stdout
    assert "_NASCLOUD_COMPLETE=complete_bash" in bash.stdout
    assert "compdef _nascloud_completion nascloud" in nascloud("--show-completion", "zsh").stdout
    # What the script asks nascloud for, nascloud answers: `nascloud la<TAB>` completes to launch.
    assert nascloud(_NASCLOUD_COMPLETE="complete_bash", COMP_WORDS="nascloud la", COMP_CWORD="1").stdout.split() \
        == ["launch"]
    # A JOB argument completes to the jobs this machine knows.
    from nascloud.state import JobCache

    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path / "home"))
    cache = JobCache()
    for n, job_id in enumerate(("digits-0a1b2c", "digits-3d4e5f", "wine-6a7b8c")):
        cache.remember(job_id, job_id.rsplit("-", 1)[0], f"file:///b/{job_id}", 1000.0 + n)
    assert nascloud(_NASCLOUD_COMPLETE="complete_bash", COMP_WORDS="nascloud watch dig",
                    COMP_CWORD="2").stdout.split() == ["digits-3d4e5f", "digits-0a1b2c"]  # newest first
    installed = nascloud("--install-completion", "bash")
    assert installed.returncode == 0, installed.stderr
    assert "_nascloud_completion" in (tmp_path / ".bash_completions" / "nascloud.sh").read_text()
    assert ".bash_completions/nascloud.sh" in (tmp_path / ".bashrc").read_text()


# ---- --set ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["estimate", LOCAL_JOB], ["plan", LOCAL_JOB, "--budget", "50"],
                                     ["launch", LOCAL_JOB, "--dry-run"]])
@pytest.mark.parametrize("setting, named", [("search.max_trails=40", "--set search.max_trails: unknown field"),
                                            ("search.max_trials=0", "--set search.max_trials: must be"),
                                            ("name.first=x", "--set name.first: name is a value"),
                                            ("max_trials", "--set expects KEY=VALUE")])
def test_a_bad_setting_is_a_usage_error_naming_it(cli, command, setting, named):
    code, out, err = cli(*command, "--set", setting)
    assert code == 2 and out == ""
    assert named in one_error(err)


def trials(out: str) -> int:
    """The trials of `estimate --json`'s workload ("40 trials × 3 epochs × ...", "3 seeds × 20 trials × ...")."""
    found = re.match(r"(?:(\d+) seeds × )?(\d+) trials", json.loads(out)["workload"]["description"])
    return int(found.group(1) or 1) * int(found.group(2))


def test_settings_change_the_job_as_its_file_would(cli):
    def work(*settings):
        code, out, err = cli("estimate", LOCAL_JOB, "--json", *settings)
        assert code == 0, err
        return trials(out)

    assert work() == 3
    assert work("--set", "search.max_trials=40", "--set", "search.space.block_type=[vanilla, resnet]") == 40


def test_the_runs_plan_prints_paste_into_set(cli, tmp_path):
    code, out, err = cli("plan", AWS_JOB, "--budget", "40")
    assert code == 0, err
    runs = re.findall(r"(?:--set \S+=\S+ ?)+", out)
    assert len(runs) >= 3
    for run in runs:
        settings = shlex.split(run)  # as the shell reads the pasted line
        code, out, err = cli("estimate", AWS_JOB, *settings, "--json")
        assert code == 0, (run, err)
        values = dict(s.split("=", 1) for s in settings[1::2])
        seeds = len(yaml.safe_load(values.get("search.seeds", "[1]")))
        assert trials(out) == int(values["search.max_trials"]) * seeds  # every seed's search priced


# ---- launch: what it will spend, and asking first on a cloud --------------------------------------------

def test_dry_run_says_what_it_would_spend_on_stderr_beside_the_json(cli):
    code, out, err = cli("launch", AWS_JOB, "--dry-run")
    assert code == 0
    assert json.loads(out)["CreateAutoScalingGroup"]
    lines = err.splitlines()
    assert lines[0] == "dry run, nothing launched:"
    assert re.fullmatch(r"aws g4dn\.xlarge \(T4, spot\) in us-east-1 at \$0\.\d{4}/h", lines[1])
    assert re.fullmatch(r"estimate \$\d+\.\d\d for compute \(P90 \$\d+\.\d\d\), \$\d+\.\d\d expected in all with "
                        r"extras, in \d+ min", lines[2])
    assert lines[3] == "budget $25.00, deadline 12 h 00 min"
    assert lines[4] == "bucket s3://YOUR-BUCKET/nascloud (the example's placeholder: set your own)"


def test_the_examples_placeholder_bucket_is_refused(cli):
    code, _, err = cli("launch", AWS_JOB)
    assert code == 2 and "YOUR-BUCKET" in one_error(err) and "--bucket" in one_error(err)


@pytest.fixture
def aws_bucket(moto_reset, ec2_quotas):
    """An S3 bucket in the session's moto server, in an account whose spot G-family quota allows a T4
    instance and whose region publishes the Deep Learning AMI's parameter; returns its URL and a count of
    what it holds."""
    from nascloud.provisioners.aws import DLAMI_PARAMETER
    from tests.fixtures.moto_ec2 import publish_ssm_parameter

    ec2_quotas[SPOT_G_QUOTA] = 8
    ec2_quotas["L-DB2E81BA"] = 8  # on-demand G too: the example job may fall back to on-demand
    publish_ssm_parameter(DLAMI_PARAMETER, "ami-0dlami0000000001")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="nascloud-conventions")
    return "s3://nascloud-conventions/jobs", lambda: s3.list_objects_v2(Bucket="nascloud-conventions").get("KeyCount")


def test_a_cloud_launch_without_a_terminal_refuses_unless_yes(cli, aws_bucket):
    url, held = aws_bucket
    code, out, err = cli("launch", AWS_JOB, "--bucket", url)
    assert code == 2 and out == ""
    assert "--yes" in one_error(err) and "no terminal" in one_error(err)
    # What it would have spent was said first, on stderr.
    assert "aws g4dn.xlarge (T4, spot) in us-east-1 at $" in err and f"bucket {url}" in err
    assert held() == 0 and boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"] == []


def test_a_cloud_launch_asks_on_a_terminal_and_no_launches_nothing(aws_bucket, moto_server, tmp_path):
    url, held = aws_bucket
    controller, terminal = pty.openpty()
    done = subprocess.Popen([sys.executable, "-m", "nascloud", "launch", AWS_JOB, "--bucket", url],
                            stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NASCLOUD_HOME": str(tmp_path / "home")})
    os.close(terminal)
    os.write(controller, b"n\n")
    out, err = done.communicate(timeout=120)
    os.close(controller)
    assert done.returncode == 1, err
    assert "Launch, and start spending? [y/N]" in err and "nothing done" in err and out.strip() == ""
    assert held() == 0


def test_the_local_provider_costs_nothing_and_never_asks(monkeypatch, tmp_path):
    from nascloud import launching
    from nascloud.job import load_job

    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert launching.prepare(load_job(LOCAL_JOB)).costs_money is False


# ---- nascloud check ---------------------------------------------------------------------------------------

@pytest.fixture
def iam_simulator(monkeypatch, moto_reset):
    """iam:SimulatePrincipalPolicy at the moto server (moto has none), evaluated as IAM does for a user's own
    inline policies with moto's policy engine: the caller must itself be allowed the call, else AccessDenied.
    Returns a function that makes a user with an inline policy of (action, resource) statements, and sets
    this process's AWS keys to that user's."""
    from moto.iam.access_control import IAMPolicy, PermissionResult
    from moto.iam.exceptions import IAMException
    from moto.iam.responses import IamResponse

    from moto.core.responses import ActionResult

    def decide(user, action: str, resource: str) -> str:
        results = [IAMPolicy(document).is_action_permitted(action, resource) for document in user.policies.values()]
        if PermissionResult.DENIED in results:
            return "explicitDeny"
        return "allowed" if PermissionResult.PERMITTED in results else "implicitDeny"

    def simulate_principal_policy(self):
        key = re.search(r"Credential=([^/]+)/", self.headers.get("Authorization", "")).group(1)
        caller = self.backend.get_user_from_access_key_id(key)
        if caller is None or decide(caller, "iam:SimulatePrincipalPolicy", "*") != "allowed":
            raise IAMException("AccessDenied", "User is not authorized to perform: iam:SimulatePrincipalPolicy")
        user = self.backend.get_user(self._get_param("PolicySourceArn").rsplit("/", 1)[1])
        resources = self._get_param("ResourceArns") or ["*"]
        return ActionResult({"IsTruncated": False, "EvaluationResults": [
            {"EvalActionName": action, "EvalResourceName": resource, "EvalDecision": decide(user, action, resource)}
            for action in self._get_param("ActionNames") for resource in resources]})

    monkeypatch.setattr(IamResponse, "simulate_principal_policy", simulate_principal_policy, raising=False)

    def user(name: str, statements: list[tuple[list[str], str]]) -> str:
        iam = boto3.client("iam")
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="launch", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": resource}
                          for actions, resource in statements]}))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        return f"arn:aws:iam::123456789012:user/{name}"

    return user


def test_check_says_each_thing_a_launch_needs_in_one_line(cli, aws_bucket, iam_simulator):
    url, held = aws_bucket
    code, out, err = cli("check", "--cloud", "aws", "--bucket", url)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[:2] == [
        "ok    credentials: aws accepts them in us-east-1",
        "ok    offer and GPU quota: g4dn.xlarge (T4, spot) in us-east-1: the type, its zones and your GPU quota "
        "allow the job's group",
    ]
    # moto's default caller is no IAM user that may ask: the permissions are not known, which fails nothing.
    assert re.fullmatch(r"skip  permissions: could not check: .* iam:SimulatePrincipalPolicy .*; a launch refused "
                        r"for a permission leaves nothing behind \(README: Providers and permissions\)", lines[2])
    assert lines[3:] == [f"ok    bucket: {url} is reachable and writable"]
    assert held() == 0  # the probe is gone


def test_check_names_the_permissions_the_caller_lacks_on_the_resources_launch_uses(cli, aws_bucket, iam_simulator):
    from nascloud.checking import AWS_ACTIONS

    url, _ = aws_bucket
    everything_but = [a for a in AWS_ACTIONS if a not in ("ec2:RunInstances", "iam:PassRole")]
    # iam:PassRole only on other roles than the job's: the simulation asks about nascloud-<job>'s role.
    statements = [([*everything_but, "iam:SimulatePrincipalPolicy"], "*"),
                  (["iam:PassRole"], "arn:aws:iam::123456789012:role/other-*")]
    alice = iam_simulator("alice", statements)
    code, out, _ = cli("check", "--cloud", "aws", "--bucket", url)
    assert code == 1
    assert out.splitlines()[2] == (f"FAIL  permissions: {alice} may not call ec2:RunInstances, iam:PassRole; grant "
                                   "them (README: Providers and permissions lists each with why)")
    bob = iam_simulator("bob", [*statements, (["ec2:RunInstances"], "*"),
                                (["iam:PassRole"], "arn:aws:iam::*:role/nascloud-*")])
    code, out, _ = cli("check", "--cloud", "aws", "--bucket", url)
    assert code == 0, out
    assert out.splitlines()[2] == f"ok    permissions: {bob} may call all {len(AWS_ACTIONS)} actions the launch uses"


def test_check_names_each_failure_and_exits_1(cli, aws_bucket, ec2_quotas):
    ec2_quotas[SPOT_G_QUOTA] = 0  # no spot G-family vCPUs, as in a new account
    code, out, _ = cli("check", AWS_JOB, "--set", "checkpoint.bucket=s3://no-such-bucket-here/jobs")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("ok    credentials")
    assert lines[1].startswith("FAIL  offer and GPU quota: ") and "no-such-bucket-here" in lines[1]
    assert lines[3].startswith("FAIL  bucket: ") and "no-such-bucket-here" in lines[3]
    code, out, _ = cli("check", AWS_JOB, "--bucket", aws_bucket[0])
    assert code == 1 and re.search(r"FAIL  offer and GPU quota: .*quota.*0 vCPUs", out), out


def test_check_without_a_cloud_or_bucket_says_what_to_give(cli):
    code, _, err = cli("check")
    assert code == 2 and "--cloud" in one_error(err) and "--bucket" in one_error(err)


# ---- nascloud rm ------------------------------------------------------------------------------------------

def test_rm_refuses_a_live_job_then_deletes_an_ended_one_after_saying_what_it_holds(cli, aws_bucket):
    from nascloud import launching
    from nascloud.checkpoints import open_store
    from nascloud.jobbucket import JobBucket
    from nascloud.job import load_job
    from nascloud.provisioners import provisioner_for
    from nascloud.state import JobCache

    url, held = aws_bucket
    spec = load_job(AWS_JOB, [f"checkpoint.bucket={url}", "compute.image=ami-03cf127a"])
    bundle = launching.new_bundle(launching.quote(spec), "digits-aws-0a1b2c", "data/none")
    store = open_store(bundle.job_url)
    store.put_json("bundle/job.json", bundle.to_json())
    JobBucket(store).add_event("created", "job created")
    JobCache().remember(bundle.job_id, spec.name, bundle.job_url, bundle.created_at)
    provisioner_for(bundle).create_groups(launching.group_specs(bundle))  # its group, at size 1

    code, _, err = cli("rm", bundle.job_id, "--yes")
    assert code == 2 and "nascloud stop digits-aws-0a1b2c" in one_error(err)
    assert held() == 2

    JobBucket(store).write_exit("stopped", "stopped by `nascloud stop`", "observer")
    code, _, err = cli("rm", bundle.job_id)  # no terminal to ask on
    assert code == 2 and "--yes" in one_error(err)
    assert re.match(rf"job digits-aws-0a1b2c \(stopped\) holds 3 objects, [\d.]+ k?B, in {bundle.job_url}\n", err)
    assert held() == 3

    code, out, err = cli("rm", bundle.job_id, "--yes")
    assert code == 0, err
    assert re.fullmatch(r"removed job digits-aws-0a1b2c: 3 objects, [\d.]+ k?B\n", out)
    assert held() == 0 and JobCache().jobs() == []
    assert boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"] == []


def test_rm_of_a_job_in_a_folder_leaves_no_folder_behind(cli, tmp_path):
    from nascloud.jobbucket import JobBucket
    from tests.fixtures.search import make_bundle

    url = make_bundle(tmp_path, "digits-0a1b2c")
    JobBucket.open(url).write_exit("finished", "3 trials completed", "local-0001")
    code, out, err = cli("rm", url, "--yes")
    assert code == 0, err
    assert out.startswith("removed job digits-0a1b2c: ")
    assert not (tmp_path / "bucket" / "digits-0a1b2c").exists()


# ---- nascloud gc ------------------------------------------------------------------------------------------

def test_gc_asks_as_launch_does_and_without_a_terminal_refuses_unless_yes(cli, tmp_path):
    import dataclasses

    from nascloud import launching
    from nascloud.jobbucket import JobBucket
    from nascloud.provisioners.local import LocalProvisioner
    from tests.fixtures.search import make_bundle

    job = JobBucket.open(make_bundle(tmp_path, "digits-0a1b2c"))
    provider = LocalProvisioner(root=tmp_path / "home" / "local")  # the cli's NASCLOUD_HOME
    provider.create_groups([dataclasses.replace(s, size=0) for s in launching.group_specs(job.bundle())])
    found = "group search of job digits-0a1b2c (0 running): it is at size 0"

    code, out, err = cli("gc")  # stdin is no terminal: what a pipe says is no answer
    assert code == 2 and out == "" and "--yes" in one_error(err) and "no terminal" in one_error(err)
    assert err.splitlines()[0] == found
    assert [g.job_id for g in provider.list_owned()] == ["digits-0a1b2c"]

    controller, terminal = pty.openpty()
    done = subprocess.Popen([sys.executable, "-m", "nascloud", "gc"], stdin=terminal, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "NASCLOUD_HOME": str(tmp_path / "home")})
    os.close(terminal)
    os.write(controller, b"n\n")
    out, err = done.communicate(timeout=120)
    os.close(controller)
    assert done.returncode == 1 and out.strip() == "", err  # (click's prompt leaves its space on stdout)
    assert found in err and "End and delete these 1 group(s)? [y/N]" in err and "nothing done" in err
    assert [g.job_id for g in provider.list_owned()] == ["digits-0a1b2c"]

    code, out, err = cli("gc", "--yes")
    assert code == 0 and out == f"{found}\nremoved 1 group(s)\n", err
    assert provider.list_owned() == []


def test_check_on_gcp_against_the_compute_engine_fake_and_fake_gcs(cli, gce, gcs_server, monkeypatch):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from nascloud.checking import GCP_PERMISSIONS

    monkeypatch.setenv("NASCLOUD_GCP_PROJECT", gce.project)
    monkeypatch.delenv("NASCLOUD_GCP_SERVICE_ACCOUNT", raising=False)
    storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket("nascloud-check-gcp")
    job = str(EXAMPLES_DIR / "digits-gcp-spot.yaml")
    code, out, _ = cli("check", job, "--bucket", "gs://nascloud-check-gcp/jobs")
    lines = out.splitlines()
    # Without a service account for the VM, the preflight says so (a VM would boot and never reach the bucket).
    assert code == 1 and lines[0] == "ok    credentials: gcp accepts them in us-central1"
    assert lines[1].startswith("FAIL  offer and GPU quota: ") and "NASCLOUD_GCP_SERVICE_ACCOUNT" in lines[1]
    assert lines[3] == "ok    bucket: gs://nascloud-check-gcp/jobs is reachable and writable"
    monkeypatch.setenv("NASCLOUD_GCP_SERVICE_ACCOUNT", f"nascloud-vm@{gce.project}.iam.gserviceaccount.com")
    code, out, _ = cli("check", job, "--bucket", "gs://nascloud-check-gcp/jobs")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[1].startswith("ok    offer and GPU quota: n1-standard-4 (T4, spot) in us-central1")
    assert lines[2] == (f"ok    permissions: your identity in project {gce.project} may call all "
                        f"{len(GCP_PERMISSIONS)} permissions the launch uses")
    # The project grants all but two: check names them, and fails.
    gce.granted = set(GCP_PERMISSIONS) - {"compute.instances.create", "compute.disks.create"}
    code, out, _ = cli("check", job, "--bucket", "gs://nascloud-check-gcp/jobs")
    assert code == 1 and out.splitlines()[2] == (
        f"FAIL  permissions: your identity in project {gce.project} may not call compute.instances.create, "
        "compute.disks.create; grant them (README: Providers and permissions lists each with why)")


# ---- estimate --plot -------------------------------------------------------------------------------------

def test_the_plot_has_the_budget_line_axes_from_zero_and_labels_that_do_not_overlap(cli, monkeypatch, tmp_path):
    from nascloud.cli import planning

    drawn = []
    monkeypatch.setattr(planning, "estimate_figure",
                        lambda *args, real=planning.estimate_figure: drawn.append(real(*args)) or drawn[-1])
    code, _, err = cli("estimate", AWS_JOB, "--all", "--budget", "0.15", "--plot", tmp_path / "cost.png")
    assert code == 0, err
    assert (tmp_path / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (figure,) = drawn
    (ax,) = figure.axes
    assert ax.get_xlim()[0] == 0 and ax.get_ylim()[0] == 0  # a spread is not magnified
    budget_lines = [line for line in ax.get_lines() if list(line.get_ydata()) == [0.15, 0.15]]
    assert budget_lines and any(t.get_text() == "budget $0.15" for t in ax.texts)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()  # the command closed the figure's own canvas
    labels = [t.get_window_extent(renderer) for t in ax.texts if t.get_text()[:1].isdigit()]
    assert len(labels) >= 3
    assert not [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:] if a.overlaps(b)]


def test_plan_without_a_search_says_what_to_give_and_names_no_flag_it_lacks(cli):
    code, _, err = cli("plan", "--budget", "800")
    assert code == 2 and "--trials N --epochs E" in one_error(err) and "--hours" not in one_error(err)
    assert cli("plan", "--trials", "20", "--epochs", "10", "--budget", "800")[0] == 0

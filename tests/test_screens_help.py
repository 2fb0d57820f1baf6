"""What the help screens say is true (issue 25): every example at the end of a command's or group's help runs as
printed, each flag a help names is one its command takes, commands nobody types are not listed, and the
things a launch or an estimate only needed for a moment do not stay behind (a wheel's folder, pip's `build/`,
a second of sleep). Fast: no search runs here (the test's hosts run `sleep`)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer.main

from nascloud.checkpoints import open_store
from nascloud.cli import app
from tests.test_cli_conventions import AWS_JOB, aws_bucket  # noqa: F401  (aws_bucket is the fixture)
from tests.test_cli_jobs import live_ids, make_job, with_group
from tests.test_docs import walk
from tests.test_e2e_local import Cli, cli, wait_for  # noqa: F401  (cli is the fixture)
from tests.test_provisioners_local import run_group

ROOT = Path(__file__).resolve().parents[1]
TREE = typer.main.get_command(app)
COMMANDS = sorted(name for name, _ in walk(TREE))
GROUPS = ["", "checkpoints"]  # `nascloud` itself and its sub-apps
PLACEHOLDER = "digits-1a2b3c"  # the examples' job id
# An example that needs more than this test's jobs can give is parsed, not run: calibrate trains a real trial,
# ssh needs a job launched with compute.ssh_cidr and an SSH server.
PARSED_ONLY = {"calibrate", "ssh"}
# `check` is for the clouds only; without credentials it fails each line (exit 1), a usage error would be 2.
EXIT_CODES = {"check": 1}
# Each host of the running job says it trains, as an agent's heartbeat would: `drill` then times a replacement.
BEAT = """import os, sys, time
from nascloud.jobbucket import JobBucket
JobBucket.open(sys.argv[1]).store.put_json("agent/heartbeat.json", {
    "time": time.time(), "phase": "searching", "instance_id": os.environ["NASCLOUD_LOCAL_INSTANCE"]})
"""


def help_of(cli: Cli, path: str) -> str:
    shown = cli.run(*path.split(), "-h")
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def example_of(cli: Cli, path: str) -> str:
    """The example its help ends with, as the user reads it."""
    text = help_of(cli, path)
    found = re.search(r"\nExample:\n  (.+)\n\Z", text)
    assert found, f"`nascloud {path} -h` does not end with an example:\n{text}"
    return found.group(1)


def test_every_group_help_ends_with_an_example(cli):
    """Before, `nascloud -h` and `nascloud checkpoints -h` ended with their command list: no example."""
    for path in GROUPS:
        assert example_of(cli, path).startswith(f"nascloud {path}".rstrip())


def test_gc_takes_y_as_rm_and_launch_do(cli):
    """Before, `gc -y` was `Error: No such option: -y` (exit 2), though `rm -y` and `launch -y` work."""
    done = cli.run("gc", "-y")
    assert done.returncode == 0 and done.stdout.strip() == "nothing to collect", done.stderr


@pytest.mark.parametrize("path", COMMANDS)
def test_each_flag_a_help_names_is_one_its_command_takes(cli, path):
    """Before, `prices -h` and `plan -h` said "with --hours, the hours are on it": neither takes --hours."""
    command = TREE
    for name in path.split():
        command = command.commands[name]
    takes = {flag for param in command.params for flag in (*param.opts, *param.secondary_opts)}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", help_of(cli, path).split("\nExample:\n")[0]))
    assert named <= takes | {"--help"}, f"`nascloud {path} -h` names {sorted(named - takes)}, which it does not take"


def test_the_commands_only_an_instance_runs_are_not_listed_but_still_run(cli):
    """Before, `nascloud --help` listed `agent` (what the bootstrap runs) among the user's commands."""
    listed = re.findall(r"^  ([a-z]+) ", help_of(cli, "").split("\nCommands:\n")[1], flags=re.MULTILINE)
    assert "launch" in listed and "agent" not in listed and "instance" not in listed
    for hidden in ("agent", "instance"):
        assert help_of(cli, hidden).startswith(f"Usage: nascloud {hidden} ")
    # It still runs: a job folder without a bundle is the agent's own error (exit 2), not an unknown command.
    done = cli.run("agent", f"file://{cli.workdir}/nojob")
    assert done.returncode == 2 and "No such command" not in done.stderr and "job.json" in done.stdout + done.stderr


def running_job(cli: Cli, job_id: str):
    """A job whose one host says it trains (and beats again on each replacement), with a snapshot and a
    leaderboard in its bucket, known to this machine."""
    job = make_job(cli, job_id)
    beat = cli.workdir / "beat.py"
    beat.write_text(BEAT)
    provider = with_group(cli, job, size=0)
    run_group(provider, job_id, f"{shlex.quote(sys.executable)} {beat} {job.url} && exec sleep 600", 1)
    wait_for(lambda: job.heartbeat().get("phase") == "searching", 30, "the host's heartbeat")
    state = cli.workdir / "state"
    (state / "search").mkdir(parents=True)
    (state / "search" / "oracle.json").write_text("{}")
    open_store(job.url).publish(state)
    job.store.put_json("results/leaderboard.json", {
        "objective": "val_accuracy", "best_trial_id": "0", "test_accuracy": 0.9, "test_samples": 360,
        "trials": [{"trial_id": "0", "score": 0.91, "status": "COMPLETED", "hyperparameters": {}}]})
    assert cli.run("status", job.url).returncode == 0  # a job looked at here is one this machine knows
    return job, provider


def parses(words: list[str]) -> None:
    """The words as the shell gives them to nascloud, parsed as it parses them (a usage error raises)."""
    context = TREE.make_context("nascloud", words[1:])
    command = TREE.get_command(context, words[1])
    command.make_context(words[1], words[2:], parent=context)


def test_every_example_runs_as_printed_on_the_local_provider(cli):
    """Before, `nascloud -h` and `nascloud checkpoints -h` had no example, `rm`'s asked for a terminal (exit 2
    from a script), and `launch`'s and `gc`'s needed AWS credentials (exit 1). Each example is run as its help
    prints it, in order on two jobs of the local provider (the placeholder job id replaced by theirs)."""
    (cli.workdir / "examples").symlink_to(ROOT / "examples")
    running, provider = running_job(cli, "digits-e2e-a1b2c3")
    stopped = make_job(cli, "digits-e2e-d4e5f6")
    run_group(with_group(cli, stopped, size=0), "digits-e2e-d4e5f6", "exec sleep 600", 0)
    stopped.write_exit("budget", "the budget is spent", "local-00000000")
    # In order: what reads the running job, then what ends it; resume on the job stopped at its budget.
    order = ["", "prices", "estimate", "plan", "check", "history", "calibrate", "launch", "status", "checkpoints",
             "checkpoints list", "checkpoints pull", "results", "ssh", "drill", "stop", "watch", "logs", "rm",
             "resume", "gc"]
    assert set(COMMANDS) <= set(order) | {"agent"}  # a new command needs its place here (agent: an instance's)
    failed = []
    for path in order:
        try:
            example = example_of(cli, path)
        except AssertionError:
            failed.append(f"`nascloud {path} -h` ends with no example")
            continue
        # By its URL, the stopped job: an observer that looked at it would delete its group at 0, and resume
        # would make a new one that runs a real search instead of `sleep`.
        job = stopped.url if path == "resume" else running.bundle().job_id
        words = shlex.split(example.replace(PLACEHOLDER, job), comments=True)
        if path in PARSED_ONLY:
            parses(words)
            continue
        done = cli.run(*words[1:], timeout=120, extra_env={"NASCLOUD_STOP_TIMEOUT": "2"})
        if done.returncode != EXIT_CODES.get(path, 0) or "Traceback" in done.stderr:
            failed.append(f"`{example}`: exit {done.returncode}\n{done.stderr.strip()}")
    assert not failed, "\n".join(failed)
    assert not (cli.workdir / "bucket" / "digits-e2e-a1b2c3" / "bundle").exists()  # rm removed it
    assert (cli.workdir / "search-state" / "search" / "oracle.json").exists()
    assert (cli.workdir / "results" / "leaderboard.json").exists()
    wait_for(lambda: live_ids(provider, "digits-e2e-d4e5f6"), 30, "the resumed job's host")
    resumed = json.loads((cli.home / "local" / "groups" / "digits-e2e-d4e5f6" / "search" / "group.json").read_text())
    assert resumed["script"] == "exec sleep 600"  # no real search started


def test_estimate_of_a_local_job_waits_for_nothing(monkeypatch, capsys, tmp_path):
    """Before, `estimate` of a local job slept a second to sample this machine's load (1.3-1.9 s against
    0.4-0.6 s for a cloud's job), though the load scales only a calibration's or a history's times, and the job
    had neither. Now it answers as fast as for a cloud's job, and shows no load it did not use."""
    from nascloud import history
    from nascloud.cli import main

    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path / "home"))
    sampled = []  # the one-second sample (its wall time is the benchmarks' to measure, not a test's)
    monkeypatch.setattr(history, "host_load_now", lambda *a, **k: sampled.append(1) or history.host_load())
    monkeypatch.setattr(sys, "argv", ["nascloud", "estimate", str(ROOT / "examples" / "digits-local.yaml"), "--json"])
    with pytest.raises(SystemExit) as stop:
        main()
    out = capsys.readouterr()
    assert not stop.value.code, out.err
    assert "host_load" not in json.loads(out.out)["workload"]["terms"] and not sampled


def test_a_cloud_launch_leaves_neither_its_wheel_nor_a_build_folder_behind(aws_bucket, tmp_path):
    """Before, every cloud launch left a `nascloud-wheel-*` folder with the wheel in the system's temporary
    folder, and pip's `build/` (and `nascloud.egg-info`) in a source checkout. Launched from a fresh checkout
    (into the moto server's S3 and Auto Scaling), the wheel is in the bucket and nothing of its build is left."""
    import boto3

    url, _ = aws_bucket
    checkout = tmp_path / "checkout"
    for part in ("nascloud", "provisioners", "pricing"):
        shutil.copytree(ROOT / part, checkout / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, checkout / part)
    for part in ("provisioners", "pricing"):  # imported from the checkout as the installed package maps them
        if not (checkout / "nascloud" / part).is_symlink():
            (checkout / "nascloud" / part).symlink_to(f"../{part}")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**os.environ, "PYTHONPATH": str(checkout), "TMPDIR": str(temporary), "NASCLOUD_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "nascloud", "launch", AWS_JOB, "--bucket", url, "--yes", "--detach"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    listed = boto3.client("s3").list_objects_v2(Bucket="nascloud-conventions")["Contents"]
    assert [o["Key"] for o in listed if o["Key"].endswith(".whl")], "no wheel in the bucket"
    left = [p.name for p in temporary.iterdir() if p.name.startswith("nascloud-wheel-")]
    left += [name for name in ("build", "nascloud.egg-info") if (checkout / name).exists()]
    assert not left, f"left behind: {left}"

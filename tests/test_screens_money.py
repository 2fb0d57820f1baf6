"""Screens that lose files or money (issue 25): each refused before anything is lost or created."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nascloud.checkpoints import open_store
from nascloud.state import JobCache
from tests.test_e2e_local import cli  # noqa: F401


def nascloud(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nascloud", *args], capture_output=True, text=True,
                          env=env or dict(os.environ), cwd=cwd, timeout=120, stdin=subprocess.DEVNULL)


def test_a_pull_into_a_folder_with_other_files_is_refused_unless_forced(tmp_path):
    """Before, `checkpoints pull JOB DIR` made DIR equal to the snapshot without asking: the user's own files
    there were deleted, and a changed one replaced."""
    url = f"file://{tmp_path}/bucket/digits-1a2b3c"
    work = tmp_path / "work"
    (work / "trial_0").mkdir(parents=True)
    (work / "trial_0/trial.json").write_text('{"score": 0.5}')
    snapshot = open_store(url).publish(work)
    mine = tmp_path / "mine"
    (mine / "trial_0").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    (mine / "trial_0/trial.json").write_text('{"score": 0.9}')

    refused = nascloud("checkpoints", "pull", url, str(mine))
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.splitlines()[-1].startswith(
        f"Error: {mine} is not empty: the pull would remove or replace 2 file(s) there (notes.txt, "
        "trial_0/trial.json)") and "pass --force" in refused.stderr
    assert (mine / "notes.txt").read_text() == "my notes"
    assert (mine / "trial_0/trial.json").read_text() == '{"score": 0.9}'

    again = nascloud("checkpoints", "pull", url, str(work))  # the folder holds the snapshot as it is: nothing lost
    assert again.returncode == 0, again.stderr
    forced = nascloud("checkpoints", "pull", url, str(mine), "--force")
    assert forced.returncode == 0 and f"restored snapshot {snapshot}" in forced.stdout, forced.stderr
    assert not (mine / "notes.txt").exists() and (mine / "trial_0/trial.json").read_text() == '{"score": 0.5}'


def test_a_budget_the_cap_cannot_keep_is_refused_at_launch_whatever_the_flags(tmp_path):
    """Before, $0.50 at $36/h was accepted with --yes --detach (and --force): the cap's own reserve (its next check
    and the shutdown, at least local's billing minimum) costs more than that, so the job started, billed and
    stopped with no trial done."""
    from tests.test_e2e_local import JOB

    job = tmp_path / "job.yaml"
    job.write_text(JOB.format(trials=2, epochs=2, budget=0.5, bucket=tmp_path / "bucket", webhook=""))
    env = {**os.environ, "NASCLOUD_HOME": str(tmp_path / "home")}
    refused = nascloud("launch", str(job), "--price-per-hour", "36", "--yes", "--detach", "--force", env=env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    [line] = refused.stderr.splitlines()
    assert line.startswith("Error: a budget of $0.50 cannot buy one trial at $36.00/h: the cap keeps $0.60 in "
                           "reserve for its next check and the shutdown, and a trial takes about "), line
    least = float(line.rsplit("--budget ", 1)[1].split()[0])
    assert least >= 36 * 60 / 3600  # the local billing minimum alone is $0.60 at this price
    assert not (tmp_path / "bucket").exists() and not (tmp_path / "home" / "local" / "groups").exists()
    enough = nascloud("launch", str(job), "--price-per-hour", "36", "--budget", str(least), "--yes", "--detach",
                      "--force", env=env)  # the least it names is taken
    assert enough.returncode == 0, enough.stdout + enough.stderr
    job_id = enough.stdout.split()[1].rstrip(":")
    assert nascloud("stop", job_id, env={**env, "NASCLOUD_STOP_TIMEOUT": "120"}).returncode == 0


def test_a_second_launch_of_a_job_file_whose_job_runs_is_refused_without_a_terminal_unless_asked_for(cli):
    """Before, it started a second search silently, billed beside the first."""
    job = cli.write_job(trials=2, epochs=300)
    first = cli.launch(job).rsplit("/", 1)[1]
    refused = cli.run("launch", str(job), "--detach", timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.splitlines()[-1] == (
        f"Error: job {first} of this job file is still running (`nascloud status {first}`), and there is no "
        "terminal to ask on; pass --another to go ahead without asking")
    assert len(JobCache(cli.home / "jobs.db").jobs()) == 1
    second = cli.launch(job, "--another").rsplit("/", 1)[1]
    assert second != first
    for job_id in (first, second):
        assert cli.run("stop", job_id, timeout=300).returncode == 0

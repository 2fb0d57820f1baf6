"""End to end on the local provider over real SSH (a private sshd per instance): `nascloud launch`
runs a real AutoKeras search that is preempted several times and still completes every trial once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.servers import requires_sshd

pytestmark = [pytest.mark.e2e, requires_sshd]

JOB = """\
name: digits-e2e
search:
  data: "sklearn:digits"
  max_trials: {trials}
  epochs: {epochs}
  space: {{block_type: [vanilla], num_blocks: [1, 1], dropout: [0.0, 0.25]}}
compute: {{cloud: local, gpu: null}}
checkpoint: {{bucket: "file://{bucket}", interval_minutes: 0.01, lease_minutes: 30}}
budget: {{usd: {budget}}}
"""


class Cli:
    """`nascloud` run as a user runs it, in a subprocess, with its own NASCLOUD_HOME."""

    def __init__(self, home: Path, workdir: Path):
        self.home = home
        self.workdir = workdir
        self.env = {**os.environ, "NASCLOUD_HOME": str(home), "NASCLOUD_POLL_SECONDS": "0.5",
                    "NASCLOUD_HEARTBEAT_SECONDS": "1", "NASCLOUD_HEARTBEAT_DEADLINE": "60",
                    "TF_CPP_MIN_LOG_LEVEL": "3"}

    def run(self, *args: str, timeout: float = 600, extra_env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nascloud", *args], cwd=self.workdir,
                              env={**self.env, **(extra_env or {})}, capture_output=True, text=True,
                              timeout=timeout, input=input)

    def status(self, job: str) -> dict:
        done = self.run("status", job, "--json", timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def write_job(self, trials: int = 3, epochs: int = 3, budget: float = 5) -> Path:
        path = self.workdir / "job.yaml"
        path.write_text(JOB.format(trials=trials, epochs=epochs, budget=budget, bucket=self.workdir / "bucket"))
        return path


@pytest.fixture
def cli(tmp_path) -> Cli:
    work = tmp_path / "work"
    work.mkdir()
    return Cli(tmp_path / "home", work)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def job_id_of(launch_output: str) -> str:
    return launch_output.split()[1].rstrip(":")


def local_provisioner(cli: Cli):
    from nascloud.provisioners.local import LocalProvisioner

    return LocalProvisioner(home=cli.home / "local")


def live_instances(cli: Cli, job_id: str):
    provisioner = local_provisioner(cli)
    owned = provisioner.list_owned(job_id)
    states = provisioner.status(owned) if owned else {}
    return [i for i in owned if states[i.instance_id].value in ("pending", "running")]


def progress(cli: Cli, job_id: str) -> dict:
    from nascloud.checkpoints import open_store

    return open_store(cli.status(job_id)["job_url"]).get_json("agent/progress.json") or {}


def test_search_survives_three_preemptions_and_finishes_every_trial_once(cli):
    # Long enough epochs-wise that the third preemption lands inside the second trial.
    launched = cli.run("launch", str(cli.write_job(trials=3, epochs=10)), "--detach", timeout=120)
    assert launched.returncode == 0, launched.stderr
    job_id = job_id_of(launched.stdout)
    provisioner = local_provisioner(cli)
    preempted = []

    def preempt(moment: str) -> None:
        (instance,) = wait_for(lambda: live_instances(cli, job_id), 120, f"an instance to preempt {moment}")
        provisioner.preempt(instance)
        preempted.append((moment, instance.instance_id))

    # 1. During bootstrap: the instance exists, the agent has not reported yet.
    preempt("during bootstrap")
    # 2. Mid-trial: the first trial is past its first epoch.
    wait_for(lambda: (progress(cli, job_id).get("running") or {}).get("epoch", 0) >= 1, 300, "a trial mid-way")
    preempt("mid-trial")
    # 3. At a random moment of the second trial.
    wait_for(lambda: progress(cli, job_id).get("trials_done", 0) >= 1 and progress(cli, job_id).get("running"),
             300, "the second trial")
    time.sleep(random.uniform(0, 1))
    preempt("random")

    final = wait_for(lambda: (s := cli.status(job_id))["status"] in ("finished", "failed") and s, 600,
                     "the job to finish", interval=1)
    assert final["status"] == "finished", cli.run("logs", job_id).stdout
    assert final["preemptions"] == len(preempted) == 3, final["instances"]
    assert final["progress"]["trials_done"] == 3
    assert not live_instances(cli, job_id), "an instance was left running"

    results = cli.run("results", job_id, "--json", "--download", str(cli.workdir / "results"))
    assert results.returncode == 0, results.stderr
    board = json.loads(results.stdout)
    trials = [t for t in board["trials"] if t["status"] == "COMPLETED"]
    assert len(trials) == 3 and len({t["trial_id"] for t in trials}) == 3
    assert (cli.workdir / "results" / "best_model.keras").stat().st_size > 0
    shown = cli.run("results", job_id).stdout
    assert all(str(t["trial_id"]) in shown for t in trials)


def only_job(cli: Cli) -> str:
    done = cli.run("status", "--json", timeout=60)
    (job,) = json.loads(done.stdout)
    return job["job_id"]


def crash(cli: Cli, point: str, *args: str) -> None:
    """Run a command that SIGKILLs itself at `point`, the way a laptop dies mid-step."""
    done = cli.run(*args, extra_env={"NASCLOUD_TEST_CRASH_AT": point}, timeout=300)
    assert done.returncode == -signal.SIGKILL, f"{args} did not reach {point}: {done.stdout}{done.stderr}"


def test_orchestrator_killed_at_each_step_of_launch_and_recovery_leaves_no_orphan(cli):
    job_file = cli.write_job(trials=3, epochs=4)
    crash(cli, "launch-intent", "launch", str(job_file))
    job_id = only_job(cli)
    assert not live_instances(cli, job_id)
    crash(cli, "launch-created", "watch", job_id)
    assert len(live_instances(cli, job_id)) == 1
    crash(cli, "agent-started", "watch", job_id)
    (first,) = live_instances(cli, job_id)
    wait_for(lambda: (progress(cli, job_id).get("running") or {}).get("epoch", 0) >= 1, 300, "training")
    local_provisioner(cli).preempt(first)
    crash(cli, "recover-recorded", "watch", job_id)
    crash(cli, "recover-terminated", "watch", job_id)
    crash(cli, "launch-created", "watch", job_id)  # the replacement, recorded only as an intent
    assert len(live_instances(cli, job_id)) == 1

    done = cli.run("watch", job_id, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    final = cli.status(job_id)
    assert final["status"] == "finished"
    assert final["progress"]["trials_done"] == 3
    assert not live_instances(cli, job_id)
    launched = [i["instance_id"] for i in final["instances"]]
    assert len(launched) == len(set(launched)) == 2, final["instances"]  # no duplicate, none forgotten
    assert all(i["ended_at"] for i in final["instances"])


def test_stop_killed_midway_then_resumed_completes(cli):
    launched = cli.run("launch", str(cli.write_job(trials=3, epochs=4)), "--detach", timeout=120)
    assert launched.returncode == 0, launched.stderr
    job_id = job_id_of(launched.stdout)
    wait_for(lambda: (progress(cli, job_id).get("running") or {}).get("epoch", 0) >= 1, 300, "training")
    crash(cli, "stop-snapshotted", "stop", job_id)
    crash(cli, "stop-terminated", "stop", job_id)
    stopped = cli.run("stop", job_id, timeout=300)
    assert stopped.returncode == 0, stopped.stderr
    assert cli.status(job_id)["status"] == "stopped"
    assert not live_instances(cli, job_id)
    done_before = progress(cli, job_id).get("trials_done", 0)

    resumed = cli.run("resume", job_id, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    final = cli.status(job_id)
    assert final["status"] == "finished" and final["progress"]["trials_done"] == 3 >= done_before
    assert not live_instances(cli, job_id)


def test_budget_cap_stops_mid_search_then_resume_with_more_budget_completes(cli):
    """A rehearsal of a budget on the local provider: $36/h (a cent a second), a budget the search
    cannot finish in. The job stops at the cap with a final snapshot (exit 3), then resumes and ends."""
    price, budget = 36.0, 0.90
    cli.env["NASCLOUD_STOP_TIMEOUT"] = "10"  # the shutdown the cap leaves room for: 10 s + 10 s
    job = cli.write_job(trials=5, epochs=150, budget=budget)  # about 110 s of search; the cap comes at 70 s
    stopped = cli.run("launch", str(job), "--price-per-hour", str(price), "--force", timeout=600)
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr
    job_id = only_job(cli)
    at_cap = cli.status(job_id)
    assert at_cap["status"] == "budget"
    assert at_cap["spent_usd"] <= budget + price / 3600 * 1, at_cap  # at most one billing increment over
    assert sum(r["price_per_hour"] * max(60, r["ended_at"] - r["launched_at"]) / 3600
               for r in at_cap["instances"]) == pytest.approx(at_cap["spent_usd"])
    kept = progress(cli, job_id)
    assert not kept.get("finished") and not live_instances(cli, job_id)
    alerts = [a["message"] for a in at_cap["alerts"]]
    assert alerts[0].startswith("50% of the $0.90 budget spent"), alerts
    assert any(a.startswith("at this rate the search will cost") for a in alerts), alerts

    resumed = cli.run("resume", job_id, "--budget", "+5", timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    final = cli.status(job_id)
    assert final["status"] == "finished" and final["budget_usd"] == pytest.approx(budget + 5)
    assert final["progress"]["trials_done"] == 5
    assert final["progress"]["trials_done"] >= kept.get("trials_done", 0)  # nothing completed was lost
    assert final["estimate"]["cost_usd"]["p50"] is not None and final["actual"]["cost_usd"] > budget


def test_a_host_key_other_than_the_pinned_one_is_refused_and_nothing_left_running(cli):
    crash(cli, "launch-created", "launch", str(cli.write_job()))
    job_id = only_job(cli)
    (instance,) = live_instances(cli, job_id)
    # A decoy: the address now answers with another host key than the one the provider pinned.
    from nascloud.provisioners.common import ensure_key, host_key_line

    state_file = cli.home / "local" / "instances" / instance.instance_id / "state.json"
    record = json.loads(state_file.read_text())
    record["host_key"] = host_key_line(ensure_key(cli.workdir / "decoy", "decoy"))
    state_file.write_text(json.dumps(record))

    refused = cli.run("watch", job_id, extra_env={"NASCLOUD_REACH_TIMEOUT": "3"}, timeout=120)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith("Error: 127.0.0.1:")
    assert "host key other than the one pinned" in refused.stderr and "Traceback" not in refused.stderr
    assert cli.status(job_id)["status"] == "failed"
    assert not live_instances(cli, job_id)

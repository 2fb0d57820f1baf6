"""End to end on the local provider with the laptop gone: `nascloud launch --detach` returns, nothing of the
launching side stays up, and the job's group (the local supervisor) and its instances (the real bootstrap,
then the governor and the agent) run the search, replace preempted hosts, hold the budget, stop on request,
tell the webhook, and end their own billing. Every observation is made the way a user on another machine
would: from a fresh NASCLOUD_HOME, by the job's bucket URL."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fixtures.search import check_chain

pytestmark = [pytest.mark.e2e]

JOB = """\
name: digits-e2e
search:
  data: "sklearn:digits"
  max_trials: {trials}
  epochs: {epochs}
  space: {{block_type: [vanilla], num_blocks: [1, 1], dropout: [0.0, 0.25]}}
compute: {{cloud: local, gpu: null}}
checkpoint: {{bucket: "file://{bucket}", interval_minutes: 0.01}}
budget: {{usd: {budget}, alerts: [0.25, 0.5, 0.8]{webhook}}}
"""


class Cli:
    """`nascloud` run as a user runs it, in a subprocess, with its own NASCLOUD_HOME."""

    def __init__(self, home: Path, workdir: Path):
        self.home = home
        self.workdir = workdir
        self.env = {**os.environ, "NASCLOUD_HOME": str(home), "NASCLOUD_HEARTBEAT_SECONDS": "1",
                    "NASCLOUD_NOTICE_POLL_SECONDS": "0.5", "NASCLOUD_SHUTDOWN_SECONDS": "5",
                    "NASCLOUD_STOP_TIMEOUT": "120", "TF_CPP_MIN_LOG_LEVEL": "3"}

    def run(self, *args: str, timeout: float = 600, home: Path | None = None,
            extra_env: dict | None = None) -> subprocess.CompletedProcess:
        env = {**self.env, **(extra_env or {}), "NASCLOUD_HOME": str(home or self.home)}
        return subprocess.run([sys.executable, "-m", "nascloud", *args], cwd=self.workdir, env=env,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def write_job(self, trials: int = 3, epochs: int = 3, budget: float = 5, webhook: str | None = None) -> Path:
        path = self.workdir / "job.yaml"
        path.write_text(JOB.format(trials=trials, epochs=epochs, budget=budget, bucket=self.workdir / "bucket",
                                   webhook=f", webhook: {webhook!r}" if webhook else ""))
        return path

    def launch(self, job: Path, *flags: str, **env: str) -> str:
        launched = self.run("launch", str(job), "--detach", *flags, timeout=120, extra_env=env)
        assert launched.returncode == 0, launched.stdout + launched.stderr
        job_id = launched.stdout.split()[1].rstrip(":")
        return f"file://{self.workdir / 'bucket'}/{job_id}"


@pytest.fixture
def cli(tmp_path) -> Cli:
    work = tmp_path / "work"
    work.mkdir()
    yield Cli(tmp_path / "home", work)
    # A test's machines end with the test, whatever it asserted.
    from nascloud.provisioners.local import LocalProvisioner

    provisioner = LocalProvisioner(root=tmp_path / "home" / "local")
    for group in provisioner.list_owned():
        provisioner.resize(group.job_id, group.name, 0)
    wait_for(lambda: not running_hosts(tmp_path / "home"), 30, "the test's hosts to end")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def bucket(url: str):
    from nascloud.jobbucket import JobBucket

    return JobBucket.open(url)


def group(cli: Cli, url: str):
    from nascloud.provisioners.local import LocalProvisioner

    found = LocalProvisioner(root=cli.home / "local").groups(url.rsplit("/", 1)[1])
    return found[0] if found else None


def live_host(cli: Cli, url: str):
    found = group(cli, url)
    return found.live[0] if found and found.live else None


def running_hosts(home: Path) -> list[int]:
    """Processes of any local host or group supervisor under this home (what would still bill)."""
    mine = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"NASCLOUD_HOME={home}".encode() in environ.split(b"\0") and (
                b"NASCLOUD_LOCAL_INSTANCE=" in environ or b"supervise" in cmdline):
            mine.append(int(entry.name))
    return mine


def launching_side(home: Path) -> list[str]:
    """`nascloud launch/watch/status` processes of this home still up: there must be none."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"NASCLOUD_HOME={home}".encode() in environ.split(b"\0") and b"NASCLOUD_LOCAL_INSTANCE=" not in environ \
                and b"nascloud" in cmdline and not any(b"supervise" == part for part in cmdline):
            found.append(b" ".join(cmdline).decode())
    return found


def ended(url: str) -> dict:
    return (bucket(url).exit_record() or {}) if (bucket(url).exit_record() or {}).get("status") in (
        "finished", "stopped", "budget", "deadline", "failed") else {}


def host_records(cli: Cli, url: str) -> dict[str, dict]:
    """What the provider itself recorded of each host (its own launch and end times)."""
    folder = cli.home / "local" / "groups" / url.rsplit("/", 1)[1] / "search" / "hosts"
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/host.json")}


def agent_logs(url: str) -> list[str]:
    """The agents' logs in the bucket, oldest instance first (what `logs --agent` reads)."""
    job = bucket(url)
    return [job.store.objects.get(f"logs/{e.instance_id}.log")[0].decode() for e in job.ledger()
            if job.store.objects.get(f"logs/{e.instance_id}.log")]


class Webhook(BaseHTTPRequestHandler):
    received: list[str] = []

    def do_POST(self):
        type(self).received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"])
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    Webhook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", Webhook.received
    server.shutdown()


def test_laptop_gone_two_preemptions_the_group_recovers_and_the_webhook_hears_each_notice_once(cli, webhook):
    hook_url, received = webhook
    url = cli.launch(cli.write_job(trials=3, epochs=8, budget=5, webhook=hook_url), "--price-per-hour", "36", "--force")
    assert launching_side(cli.home) == [], "the launching side stayed up"
    from nascloud.provisioners.local import LocalProvisioner

    provisioner = LocalProvisioner(root=cli.home / "local")
    preempted = []

    def preempt(moment: str) -> None:
        host = wait_for(lambda: live_host(cli, url), 120, f"a host to preempt {moment}")
        provisioner.preempt(host)
        preempted.append(host.instance_id)

    # 1. While it boots: the host exists, its agent has not reported yet.
    preempt("while it boots")
    # 2. At a random moment of the second trial, by a fire drill from another machine.
    wait_for(lambda: bucket(url).progress().get("trials_done", 0) >= 1 and bucket(url).progress().get("running"),
             300, "the second trial")
    time.sleep(random.uniform(0, 1.5))
    victim = live_host(cli, url)
    drilled = cli.run("drill", url, home=cli.workdir.parent / "elsewhere", timeout=300)
    assert drilled.returncode == 0 and "training again" in drilled.stdout, drilled.stdout + drilled.stderr
    preempted.append(victim.instance_id)

    final = wait_for(lambda: ended(url), 600, "the job to end", interval=1)
    assert final["status"] == "finished", final
    wait_for(lambda: not running_hosts(cli.home), 30, "every host and the group's supervisor to end")
    hosts = host_records(cli, url)  # the provider's own times, read before an observer tidies them away

    fresh = cli.workdir.parent / "elsewhere"
    shown = cli.run("status", url, "--json", home=fresh)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["status"] == "finished" and status["progress"]["trials_done"] == 3
    assert status["preemptions"] == 2 and len(status["instances"]) == 3 == len(hosts)
    for entry in status["instances"]:
        real = hosts[entry["instance_id"]]
        assert abs(entry["launched_at"] - real["launched_at"]) <= 1.0, (entry, real)  # one heartbeat
        assert abs(entry["ended_at"] - real["ended_at"]) <= 1.0, (entry, real)
    assert [e["end_reason"] for e in status["instances"]] == ["preempted", "preempted", "finished"]
    assert [(g["size"], g["live"]) for g in status["groups"]] == [(0, 0)]
    assert not (cli.home / "local" / "groups" / url.rsplit("/", 1)[1]).exists()  # the empty group, deleted

    report = check_chain(agent_logs(url), truncated_ok=True)
    assert report.problems == [] and len(report.completed) == 3  # every trial completed once, none re-run
    board = json.loads(cli.run("results", url, "--json", home=fresh).stdout)
    assert sorted(t["status"] for t in board["trials"]) == ["COMPLETED"] * 3

    assert len(received) == len(set(received)), received  # each notice once, across the replacements
    assert sum("of the $5.00 budget spent" in m and "past the 25% alert" in m for m in received) == 1, received
    assert sum("search finished" in m for m in received) == 1, received
    logs = cli.run("logs", url, "--agent", "5", home=fresh).stdout
    assert "trials completed" in logs and "finished" in logs


def test_the_cap_holds_with_the_laptop_gone_and_resume_from_elsewhere_finishes(cli):
    price, budget = 36.0, 0.90  # a cent a second; the search needs about twice that
    url = cli.launch(cli.write_job(trials=5, epochs=150, budget=budget), "--price-per-hour", str(price), "--force")
    at_cap = wait_for(lambda: ended(url), 600, "the cap", interval=1)
    assert at_cap["status"] == "budget", at_cap
    wait_for(lambda: not running_hosts(cli.home), 30, "every host to end")
    job = bucket(url)
    ledger = job.ledger()
    assert ledger and all(e.ended_at is not None for e in ledger)
    from nascloud.jobbucket import spend

    spent = spend(job, time.time())
    assert spent <= budget + price * 60 / 3600, spent  # within one billing minimum of the budget
    kept = job.progress()
    assert not kept.get("finished") and kept.get("snapshot_id"), kept  # a final snapshot, search resumable

    fresh = cli.workdir.parent / "elsewhere"
    # A cent more cannot pay for a trial: refused before anything boots (before, an instance billed its minimum
    # and stopped at once), saying the least budget that does.
    refused = cli.run("resume", url, "--budget", "+0.01", home=fresh, timeout=120)
    assert refused.returncode == 2 and "leaves no room for another trial" in refused.stderr, refused.stderr
    least = float(re.search(r"--budget (\d+\.\d\d)` or more", refused.stderr)[1])
    assert spent + price * 60 / 3600 <= least + 0.01  # at least the next instance's billing minimum
    assert len(job.instances()) == len(ledger) and not running_hosts(cli.home)
    resumed = cli.run("resume", url, "--budget", "+5", home=fresh, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    final = json.loads(cli.run("status", url, "--json", home=fresh).stdout)
    assert final["status"] == "finished" and final["budget_usd"] == pytest.approx(budget + 5)
    assert final["progress"]["trials_done"] == 5
    report = check_chain(agent_logs(url), truncated_ok=True)
    assert report.problems == [] and len(report.completed) == 5
    alerts = [a["message"] for a in final["alerts"]]
    # The first is the 25 % alert of the first budget, at the share spent (the billing minimum's 67 %).
    assert "of the $0.90 budget spent" in alerts[0] and alerts[0].endswith("past the 25% alert)"), alerts
    # Each run's end writes its final event (before, a resumed run's end wrote none: `logs` ended at the resume).
    kinds = [e.kind for e in job.events()]
    resumed_at = len(kinds) - 1 - kinds[::-1].index("resumed")
    assert "budget" in kinds[:resumed_at] and "finished" in kinds[resumed_at:], kinds
    # The job's record holds its two runs, not the time between them (the instance writes it after its end).
    record = wait_for(lambda: (h := job.store.get_json("history.json")) and h["status"] == "finished" and h, 60,
                      "the record of the job's end")
    runs = record["segments"]
    assert [r["trials"] for r in runs] == [kept.get("trials_done", 0), 5 - kept.get("trials_done", 0)], runs
    assert record["wall_seconds"] == pytest.approx(sum(r["seconds"] for r in runs))


def test_stop_from_another_machine_ends_a_running_job_with_its_final_snapshot(cli):
    url = cli.launch(cli.write_job(trials=3, epochs=100))
    wait_for(lambda: (bucket(url).progress().get("running") or {}).get("epoch", 0) >= 2, 300, "training")
    fresh = cli.workdir.parent / "elsewhere"
    stopped = cli.run("stop", url, home=fresh, timeout=300)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped" in stopped.stdout
    record = bucket(url).exit_record()
    assert record["status"] == "stopped" and record["instance_id"].startswith("local-")  # the agent's own record
    assert bucket(url).progress()["snapshot_id"]
    wait_for(lambda: not running_hosts(cli.home), 30, "every host to end")
    shown = cli.run("status", url, "--json", home=fresh)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["status"] == "stopped"


def test_an_agent_that_dies_at_start_fails_the_job_at_once_with_the_reason(cli):
    # Every agent process is killed while it imports TensorFlow: it can never start.
    url = cli.launch(cli.write_job(), NASCLOUD_TEST_KILL_AT="import:1")
    final = wait_for(lambda: ended(url), 300, "the job to fail", interval=0.5)
    assert final["status"] == "failed" and "died 3 times in a row" in final["message"], final
    wait_for(lambda: not running_hosts(cli.home), 30, "every host to end")
    status = json.loads(cli.run("status", url, "--json").stdout)
    assert status["status"] == "failed" and "without a new snapshot or completed trial" in status["reason"]
    assert len(status["instances"]) == 1  # one boot: the group was ended, not left to retry for ever


def test_a_bucket_the_instance_cannot_write_halts_the_job_with_the_reason_and_resume_continues(cli):
    url = cli.launch(cli.write_job(trials=2, epochs=100))
    wait_for(lambda: (bucket(url).progress().get("running") or {}).get("epoch", 0) >= 1, 300, "training")
    assert cli.run("stop", url, timeout=300).returncode == 0
    wait_for(lambda: not running_hosts(cli.home), 30, "every host to end")
    # The ledger's folder becomes a file: every write under it fails for real (ENOTDIR), as a bucket whose
    # permissions changed would refuse the instance.
    ledger = cli.workdir / "bucket" / url.rsplit("/", 1)[1] / "ledger"
    saved = {p.name: p.read_bytes() for p in ledger.iterdir()}
    for path in ledger.iterdir():
        path.unlink()
    ledger.rmdir()
    ledger.write_text("not a folder")
    resumed = cli.run("resume", url, "--detach")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    halted = wait_for(lambda: (g := group(cli, url)) and g.size == 0 and g.reason and g, 120, "the group to end")
    assert "cannot use the job's bucket" in halted.reason
    wait_for(lambda: not running_hosts(cli.home), 30, "every host to end")
    # The reason stays for every later look (before, the first `status` deleted the group that held it, and
    # the second said only that the groups were at 0), and so does the instance the ledger could not hold.
    for _ in range(2):
        shown = cli.run("status", url)
        assert shown.returncode == 0 and "halted" in shown.stdout and "cannot use the job's bucket" in shown.stdout

    ledger.unlink()  # fixed: the job continues where it stopped
    ledger.mkdir()
    for name, data in saved.items():
        (ledger / name).write_bytes(data)
    shown = json.loads(cli.run("status", url, "--json").stdout)
    [unrecorded] = [e for e in shown["instances"] if e["instance_id"] == halted.instances[-1].instance_id]
    assert unrecorded["ended_at"] >= unrecorded["launched_at"] > 0, unrecorded  # billed from the provider's times
    assert shown["status"] == "halted" and "cannot use the job's bucket" in shown["reason"]
    # Its group deleted now, the host's own log is kept on this machine: the one record of why it stopped.
    kept = cli.home / "local" / "logs" / url.rsplit("/", 1)[1] / unrecorded["instance_id"] / "bootstrap.log"
    assert "cannot use the job's bucket" in kept.read_text()
    assert group(cli, url) is None
    resumed = cli.run("resume", url, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert bucket(url).progress()["trials_done"] == 2
    assert check_chain(agent_logs(url), truncated_ok=True).problems == []

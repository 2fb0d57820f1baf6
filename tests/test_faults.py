"""Faults a job must survive (issue 24), on the local provider with the laptop's commands as a user runs them.

The end of a job that someone watches is complete: before, 5 of 9 local runs followed to
their end by `launch` or `watch` lost it (no final event, no history.json, no agent log, no final notice),
the README's first command among them: the observer's tidy set the group to 0 as soon as the exit record
was final, and on local that killed the host while its governor was still writing the end. Now an
observer leaves an instance that is still ending the job to end its groups itself."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from tests.test_e2e_local import bucket, cli, ended, group, host_records, running_hosts, wait_for, webhook  # noqa: F401
from tests.test_provisioners_local import JOB, engine, specs, supervisors  # noqa: F401

pytestmark = [pytest.mark.e2e]

RUNS = 3  # each way: one small search each


def missing_of_the_end(url: str, notices: list[str]) -> list[str]:
    """The parts of a finished job's end that are not there."""
    job = bucket(url)
    missing = []
    if "finished" not in [e.kind for e in job.events()]:
        missing.append("the final event")
    if job.store.get_json("history.json") is None:
        missing.append("history.json")
    if not all(job.store.objects.get(f"logs/{e.instance_id}.log") for e in job.ledger()):
        missing.append("the agent's log")
    if not any("search finished" in text for text in notices):
        missing.append("the final notice")
    return missing


@pytest.mark.parametrize("how", ["launch", "watch"])
def test_a_job_followed_to_its_end_ends_complete_every_time(cli, webhook, how):
    hook, received = webhook
    job = cli.write_job(trials=1, epochs=1, webhook=hook)
    ends = []
    for _ in range(RUNS):
        before = len(received)
        if how == "launch":  # the README's first command: launch in the foreground, with the live view
            followed = cli.run("launch", str(job), timeout=600)
            job_id = re.search(r"nascloud results (\S+?)`", followed.stdout)[1]
            url = f"file://{cli.workdir / 'bucket'}/{job_id}"
        else:
            url = cli.launch(job)
            followed = cli.run("watch", url, timeout=600)
        assert followed.returncode == 0, followed.stdout + followed.stderr
        wait_for(lambda: not running_hosts(cli.home), 120, "the job's host to power itself off")
        ends.append(missing_of_the_end(url, received[before:]))
    assert ends == [[]] * RUNS


def agent_pid(url: str):
    """The live agent process of the job (its command line names the job's bucket URL)."""
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agent" in words and url.encode() in words:
            return int(entry.name)
    return None


def test_an_agent_killed_again_and_again_before_a_snapshot_trips_the_crash_loop_breaker(cli):
    """Killed at a later epoch each time, always before the checkpoint interval publishes one: each restart
    trains the first trial again from its start and reaches a new epoch, which is not progress (before, each
    restart counted 1 of 3 again: six kills, no snapshot, no trip)."""
    path = cli.write_job(trials=2, epochs=300)
    path.write_text(path.read_text().replace("interval_minutes: 0.01", "interval_minutes: 30"))
    url = cli.launch(path)
    job, kills = bucket(url), 0
    for target_epoch in (2, 3, 4, 5, 6, 7):
        if ended(url):
            break

        def training_past_target():
            pid, beat = agent_pid(url), job.heartbeat()
            running = job.progress().get("running") or {}
            return pid if (pid and beat.get("pid") == pid and beat.get("phase") == "searching"
                           and running.get("epoch", 0) >= target_epoch) else None

        found = wait_for(lambda: ended(url) or training_past_target(), 300, f"the agent at epoch {target_epoch}",
                         0.05)
        if isinstance(found, dict):  # the job's exit record: it ended
            break
        assert not job.progress().get("snapshot_id"), "a snapshot was published: the kills came too late"
        os.kill(found, signal.SIGKILL)
        kills += 1
    final = wait_for(lambda: ended(url), 120, "the job to fail", interval=0.5)
    assert final["status"] == "failed" and "died 3 times in a row" in final["message"], final
    assert kills == 3, kills
    tail = final["message"].split("its last log lines: ", 1)[1]
    assert tail.strip() and tail != "(no agent log on this instance)", final["message"]
    wait_for(lambda: not running_hosts(cli.home), 60, "every host to end")


def test_resizes_from_several_callers_at_once_start_exactly_one_supervisor(engine):
    """`resume` asks for the supervisor twice, and two machines' commands may ask at once: before, each
    caller saw no supervisor yet (the new one had not taken its lock) and started its own."""
    import threading

    engine.run("sleep 600", size=0)
    wait_for(lambda: not supervisors(engine.folder), 30, "the size-0 group's supervisor to exit", 0.05)
    callers = [threading.Thread(target=engine.provider.resize, args=(JOB, "search", 1)) for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(supervisors(engine.folder)) == 1
    wait_for(lambda: engine.group().live, 30, "the host", 0.05)
    assert len(engine.group().instances) == 1


def test_a_killed_group_supervisor_is_started_again_and_a_drill_then_recovers(cli):
    """The local provider stands in for the clouds' engines, which cannot be killed: before, with its supervisor
    killed, a preempted instance was never replaced (`status` said running, billing, and `drill` waited 30 min).
    Now the governor (each heartbeat) and every observer start it again, and the job's events say so."""
    url = cli.launch(cli.write_job(trials=3, epochs=30))
    job = bucket(url)
    folder = cli.home / "local" / "groups" / url.rsplit("/", 1)[1] / "search"
    wait_for(lambda: job.heartbeat().get("phase") == "searching", 300, "the search to train")
    [first] = supervisors(folder)
    os.kill(first, signal.SIGKILL)
    # No observer runs meanwhile: the instance's governor is the one to see it.
    revived = wait_for(lambda: [p for p in supervisors(folder) if p != first], 60, "a new supervisor", 0.1)
    wait_for(lambda: "engine-revived" in [e.kind for e in job.events()], 30, "the event that says so")
    os.kill(revived[0], signal.SIGKILL)
    drilled = cli.run("drill", url, timeout=300)
    assert drilled.returncode == 0 and "training again" in drilled.stdout, drilled.stdout + drilled.stderr
    assert len(supervisors(folder)) == 1
    stopped = cli.run("stop", url, timeout=300)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@pytest.fixture
def small_disk(cli):
    """The test's bucket folder on a 48 MB file system of its own (root mounts a tmpfs): a bucket that fills
    up for real (ENOSPC), as a quota'd volume or a full disk would."""
    import subprocess

    path = cli.workdir / "bucket"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(path)], check=True)
    yield path
    subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_bucket_that_fills_up_mid_search_halts_the_job_with_the_reason(cli, small_disk):
    """Before, the governor died on the storage error of an event write and its breaker counted a failed boot;
    every bucket write of the governor now ends in the halt, with the reason, and the machine goes off."""
    url = cli.launch(cli.write_job(trials=3, epochs=300))
    job = bucket(url)
    wait_for(lambda: (job.progress().get("running") or {}).get("epoch", 0) >= 1, 300, "training")
    with open(small_disk / "filler", "wb") as filler:  # the disk to its last byte
        try:
            while True:
                filler.write(b"\0" * 1_000_000)
                filler.flush()
        except OSError:
            pass
    wait_for(lambda: not running_hosts(cli.home), 300, "the job's host to power itself off")
    found = group(cli, url)
    assert found.size == 0 and "refused a write" in found.reason, found.reason
    assert not job.failed_boots()
    (small_disk / "filler").unlink()  # space again: status shows why it stopped, and it can go on
    shown = cli.run("status", url)
    assert shown.returncode == 0 and "halted" in shown.stdout and "refused a write" in shown.stdout, shown.stdout


def test_a_bucket_made_read_only_mid_run_still_accounts_for_the_instance_once_writable(cli, small_disk):
    """The instance cannot close its own ledger entry in a read-only bucket, and neither can `status`: before,
    the first `status` deleted the group anyway, and with it the provider's times, the entry's only source."""
    import subprocess

    url = cli.launch(cli.write_job(trials=3, epochs=300))
    job = bucket(url)
    wait_for(lambda: (job.progress().get("running") or {}).get("epoch", 0) >= 1, 300, "training")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    wait_for(lambda: not running_hosts(cli.home), 300, "the job's host to power itself off")
    [entry] = job.ledger()
    assert entry.ended_at is None  # what the instance could not write
    shown = cli.run("status", url)
    assert shown.returncode == 0 and "halted" in shown.stdout and "refused a write" in shown.stdout, shown.stdout
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    [host] = host_records(cli, url).values()
    shown = cli.run("status", url, "--json")
    [entry] = bucket(url).ledger()
    assert entry.ended_at == pytest.approx(host["ended_at"]) and entry.end_reason == "terminated", entry
    assert "refused a write" in json.loads(shown.stdout)["reason"]

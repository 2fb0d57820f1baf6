"""What the screens show, as a user reads them: moments and durations in one format, a status table that
never cuts the money at 80 columns, a job removed from another machine, and colour only where it helps.
Fast: no search runs here (the jobs are bundles in a file:// bucket, as launch leaves them)."""

from __future__ import annotations

import io
import json
import re
import time

from nascloud.checkpoints import open_store
from tests.test_cli_jobs import make_job, refused, this_home  # noqa: F401  (this_home is an autouse fixture)
from tests.test_e2e_local import Cli, cli  # noqa: F401  (cli is the fixture)

IST = {"TZ": "Asia/Kolkata"}  # UTC+05:30 all year: a zone no test machine is in by accident
LEAP_DAY = 1709200800.0  # 2024-02-29 10:00:00 UTC, 15:30:00 IST


def ist_time(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t + 5.5 * 3600)) + " IST"


def started_seconds_ago(job, seconds: float) -> None:
    """The job's bundle as if launch had written it `seconds` ago."""
    bundle = job.store.get_json("bundle/job.json")
    job.store.put_json("bundle/job.json", {**bundle, "created_at": time.time() - seconds})


def test_every_screen_gives_a_moment_in_local_time_with_its_zone_and_a_short_duration_in_seconds(cli):
    """`logs` printed dates without a zone, `checkpoints list` in UTC while the rest were local, the live
    view dates without a year, and `status` said "0 min ago" of a job started 40 seconds before."""
    job = make_job(cli, "digits-e2e-aaaaaa")
    job.store.put_json(f"events/{int(LEAP_DAY * 1e9):019d}-launched-000000.json",
                       {"time": LEAP_DAY, "kind": "launched", "message": "an old launch", "data": None})
    before = time.time()
    job.add_event("preempted", "instance local-1 preempted: recovering")
    work = cli.workdir / "tuner"
    work.mkdir()
    (work / "oracle.json").write_text("{}")
    snapshot = open_store(job.url).publish(work)
    started_seconds_ago(job, 40)
    job.write_exit("finished", "search finished", "local-00000000")

    logs = cli.run("logs", job.url, extra_env=IST)
    assert logs.returncode == 0, logs.stderr
    old, today = logs.stdout.splitlines()
    assert old.startswith("2024-02-29 15:30:00 IST launched ")  # another day: the date, with its year
    assert re.match(r"\d\d:\d\d:\d\d IST preempted ", today) and today[:12] in (ist_time(before), ist_time(before + 1))

    listed = cli.run("checkpoints", "list", job.url, extra_env=IST).stdout.splitlines()
    assert listed[0].split()[:3] == ["SNAPSHOT", "CREATED", "FILES"]  # no "(UTC)": local, as everywhere
    assert re.match(rf"{snapshot} +\d\d:\d\d:\d\d IST +1 ", listed[1]), listed

    shown = cli.run("status", extra_env={**IST, "COLUMNS": "200"})
    row = next(line for line in shown.stdout.splitlines() if "digits-e2e-aaaaaa" in line)
    assert 40 <= int(re.search(r"\d\d:\d\d:\d\d IST \((\d+) s ago\)", row).group(1)) < 120, row

    watched = cli.run("watch", job.url, extra_env=IST)
    assert watched.returncode == 0 and re.match(r"digits-e2e-aaaaaa: finished, after \d+ s$",
                                                watched.stdout.splitlines()[0]), watched.stdout


def test_status_at_80_columns_drops_other_columns_before_it_cuts_the_money_or_a_job_id(cli):
    """At 80 columns (COLUMNS=80, read as a terminal's width) the status table ran past the edge, and the
    money columns were the ones cut off."""
    for job_id in ("digits-e2e-bbbbbb", "digits-aws-experiment-long-cccccc"):
        job = make_job(cli, job_id)
        job.write_exit("finished", "search finished", "local-00000000")
        assert cli.run("status", job.url).returncode == 0  # this machine now knows it

    shown = cli.run("status", extra_env={"COLUMNS": "80"})
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), shown.stdout
    header = next(line for line in lines if "job" in line and "status" in line)
    assert [c.strip() for c in header.split("┃")[1:-1]][-3:] == ["spent", "budget", "estimate P50"]
    for job_id in ("digits-e2e-bbbbbb", "digits-aws-experiment-long-cccccc"):
        row = next(line for line in lines if job_id in line)
        assert [c.strip() for c in row.split("│")[1:-1]][-3:] == ["$0.00", "$5.00", "-"], row


def test_a_job_removed_from_another_machine_shows_as_gone_here_and_rm_forgets_it(cli):
    """A job `rm` removed on one machine still showed on another that had watched it, as "unreadable"
    with "not a job `nascloud launch` made", and `rm` there refused it: the record could not be forgotten."""
    job = make_job(cli, "digits-e2e-dddddd")
    job.write_exit("finished", "search finished", "local-00000000")
    assert cli.run("status", job.url).returncode == 0  # watched from here
    removed = cli.run("rm", job.url, "--yes", home=cli.workdir.parent / "laptop")
    assert removed.returncode == 0, removed.stderr

    hint = "its bucket no longer holds it; `nascloud rm digits-e2e-dddddd` forgets it here"
    shown = cli.run("status")
    assert shown.returncode == 0, shown.stderr
    assert [c.strip() for c in next(line for line in shown.stdout.splitlines()
                                    if "digits-e2e-dddddd" in line).split("│")[1:3]] == ["digits-e2e-dddddd", "gone"]
    assert f"digits-e2e-dddddd: {hint}" in shown.stdout
    assert [(r["job_id"], r["status"]) for r in json.loads(cli.run("status", "--json").stdout)] == [
        ("digits-e2e-dddddd", "gone")]
    assert refused(cli.run("status", "digits-e2e-dddddd")) == f"Error: job digits-e2e-dddddd is gone: {hint}"

    forgot = cli.run("rm", "digits-e2e-dddddd")  # what the hint says, as written: nothing left to ask about
    assert forgot.returncode == 0, forgot.stderr
    assert forgot.stdout == "forgot job digits-e2e-dddddd here: its bucket no longer holds it\n"
    assert json.loads(cli.run("status", "--json").stdout) == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_colours_running_green_an_alert_yellow_and_over_budget_or_failed_red_on_a_terminal_only(
        monkeypatch):
    """The status table had no colour at all: a failed or over-budget job read like a running one."""
    from nascloud.observer import render_summaries

    now = time.time()

    def job(job_id: str, status: str, spent: float = 1.2, alerts: tuple = ()) -> dict:
        return {"job_id": job_id, "status": status, "created_at": now - 600, "reason": None,
                "offer": {"cloud": "aws", "gpu": "T4", "region": "us-east-1"}, "spent_usd": spent, "budget_usd": 25.0,
                "progress": {"trials_done": 3, "max_trials": 20}, "estimate": {}, "preemptions": 0,
                "alerts": list(alerts)}

    jobs = [job("digits-running", "running"), job("digits-alerted", "running", 13.0, ({"alert": "spend"},)),
            job("digits-failed", "failed"), job("digits-over", "running", 25.3)]
    for name in ("NO_COLOR", "FORCE_COLOR", "COLORTERM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "200")

    def shown(stream) -> dict:
        monkeypatch.setattr("sys.stdout", stream)
        render_summaries(jobs, now=now)
        return {job_id: line for line in stream.getvalue().splitlines()
                for job_id in [j["job_id"] for j in jobs] if job_id in line}

    rows = shown(Terminal())
    assert "\x1b[32mrunning" in rows["digits-running"]
    assert "\x1b[33mrunning" in rows["digits-alerted"] and "\x1b[33m$13.00" in rows["digits-alerted"]
    assert "\x1b[31mfailed" in rows["digits-failed"]
    assert "\x1b[31mrunning" in rows["digits-over"] and "\x1b[31m$25.30" in rows["digits-over"]

    monkeypatch.setenv("NO_COLOR", "1")
    assert not any(re.search(r"\x1b\[[0-9;]*3[0-7]m", row) for row in shown(Terminal()).values())
    monkeypatch.delenv("NO_COLOR")
    assert not any("\x1b" in row for row in shown(io.StringIO()).values())  # a pipe: no escape codes at all

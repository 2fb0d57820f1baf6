"""A history the estimator can trust (issue 25): the laptop's cache follows the bucket's record after a
resume, a record holds each run of the job rather than the days it sat stopped, one rule says which records
are complete (the estimate's and `nascloud history`'s), a job that cost nothing keeps its time, every end
writes its final event, and an estimate from few records is as uncertain as they are. Fast: no search runs
here (tests/test_e2e_local.py's resume checks the final event and the runs of a real one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from nascloud import history
from nascloud.jobbucket import JobBucket, LedgerEntry
from nascloud.observer import summary
from tests.fixtures.search import DIGITS_SEARCH, make_bundle
from tests.test_cli_conventions import cli  # noqa: F401  (the fixture: `nascloud ARGS` in this process)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path / "home"))
    # The estimate scales a local history to this machine's load now: an idle machine, so figures are the
    # history's own (the other tests' processes share these cores).
    monkeypatch.setattr(history, "host_load_now", lambda: {"load_average": 0.0, "cpus": 2})
    return tmp_path / "home"


ESTIMATE = {"total_usd": {"p50": 1.0, "p90": 1.4}, "wall_hours": {"p50": 0.03, "p90": 0.04}}


def launched(tmp_path, job_id: str, **fields) -> str:
    """A job as launch leaves it, with the launch estimate (and any other bundle field given)."""
    url = make_bundle(tmp_path, job_id, price_per_hour=36.0)
    store = JobBucket.open(url).store
    store.put_json("bundle/job.json", {**store.get_json("bundle/job.json"), "estimate": ESTIMATE, **fields})
    return url


def first_run(url: str, trials: int = 3, status: str = "stopped", price: float = 36.0) -> JobBucket:
    """The job's first run, 60 s on one host from just after its launch, ended with `status`."""
    bucket = JobBucket.open(url)
    start = bucket.bundle().created_at + 1.0
    bucket.put_entry(LedgerEntry("local-a", "search", "local", "local", None, True, price, start, start + 60,
                                 start + 60, status, booted_at=start + 1))
    bucket.store.put_json("agent/progress.json", {"trial_durations": [10.0] * trials, "trials_done": trials})
    bucket.write_exit(status, f"{trials} trials", "local-a")
    return bucket


def resumed_run(bucket: JobBucket, trials: int, seconds: float = 40.0) -> None:
    """What `resume` and the next host leave: the "resumed" event (with the trials done by then, as resume
    writes it), a second host that runs `seconds` and finishes the search."""
    done = bucket.progress()["trials_done"]
    bucket.store.objects.delete("agent/exit.json")
    bucket.add_event("resumed", "job resumed with budget $5.00", {"trials_done": done})
    start = time.time()
    bucket.put_entry(LedgerEntry("local-b", "search", "local", "local", None, True, 36.0, start, start + seconds,
                                 start + seconds, "finished", booted_at=start + 1))
    bucket.store.put_json("agent/progress.json", {"trial_durations": [10.0] * (done + trials),
                                                  "trials_done": done + trials, "finished": True})
    bucket.write_exit("finished", "search finished", "local-b")


def history_rows(cli, *args) -> list[dict]:
    code, out, err = cli("history", *args, "--json")
    assert code == 0, err
    return json.loads(out)["jobs"]


def job_file(tmp_path, name: str = "hist") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "search": DIGITS_SEARCH, "compute": {"cloud": "local", "gpu": None},
                                    "checkpoint": {"bucket": f"file://{tmp_path}/bucket"}}))
    return str(path)


def cached(home, record: dict) -> None:
    folder = home / "history"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{record['job_id']}.json").write_text(json.dumps(record))


def test_after_a_stop_and_a_resume_history_shows_the_record_of_the_jobs_end(home, tmp_path, cli):
    """Before, the cache was returned as soon as its file existed: after a stop, a `resume` and the end,
    `nascloud history` kept the row written at the stop (3 trials, status stopped) although the instance had
    rewritten the bucket's record at the end."""
    bucket = first_run(launched(tmp_path, "hist-0a1b2c"), trials=3)
    history.write(bucket, "stopped")
    summary(JobBucket.open(bucket.url))  # an observer command at the stop: copies the record
    assert [r["trials"] for r in history_rows(cli)] == [3]
    resumed_run(bucket, trials=2)
    summary(JobBucket.open(bucket.url))  # the job finished; the instance has not written its record yet
    assert [r["trials"] for r in history_rows(cli)] == [3]
    history.write(bucket, "finished")
    summary(JobBucket.open(bucket.url))
    (row,) = history_rows(cli)
    assert row["trials"] == 5
    assert row["status"] == "finished" and row["runs"] == 2


def test_a_resumed_jobs_record_is_its_runs_not_the_days_it_sat_stopped(home, tmp_path, cli):
    """Before, a record's wall time was its end less the launch: a job stopped for two days and resumed
    counted the two days, and the record held no runs. Records written before runs existed still load."""
    url = launched(tmp_path, "hist-0a1b2c", created_at=time.time() - 2 * 86400)
    bucket = first_run(url, trials=3)
    history.write(bucket, "stopped")
    resumed_run(JobBucket.open(url), trials=2, seconds=40.0)
    record = history.write(JobBucket.open(url), "finished")
    first, second = record["segments"]
    assert first["seconds"] == pytest.approx(61.0, abs=0.01) and first["trials"] == 3 and first["end"] == "stopped"
    assert second["seconds"] == pytest.approx(40.0, abs=1.0) and second["trials"] == 2
    # 36 $/h for 60 s each: the second run's 40 s are billed as the provider's minute.
    assert first["spend_usd"] == pytest.approx(0.60, abs=1e-6) and second["spend_usd"] == pytest.approx(0.60)
    assert record["wall_seconds"] == pytest.approx(first["seconds"] + second["seconds"])
    assert record["spend_usd"] == pytest.approx(first["spend_usd"] + second["spend_usd"])
    cached(home, record)
    # A record from before: no runs, no ledger flag; it loads as one run and the estimate uses it.
    old = {k: v for k, v in record.items() if k not in ("segments", "ledger_closed")}
    cached(home, {**old, "job_id": "hist-0ld000", "written_at": record["written_at"] - 10})
    rows = {r["job_id"]: r for r in history_rows(cli)}
    assert rows["hist-0a1b2c"]["runs"] == 2
    assert rows["hist-0a1b2c"]["actual_hours"] == pytest.approx(101 / 3600, rel=0.02)
    assert rows["hist-0ld000"]["runs"] == 1 and rows["hist-0ld000"]["used_by_estimates"] is True


def test_one_rule_says_which_records_are_complete_for_the_estimate_and_history(home, tmp_path, cli):
    """Before, the estimate learned only from records that ended `finished` (not from a job that ran to its
    budget) and `nascloud history` scored every record, a stopped job's against its whole-job estimate."""
    shared = {"estimate": ESTIMATE, "host_load": {"load_average": 0.0, "cpus": 2}}
    made = {}
    for job_id, status in (("hist-b0d9e7", "budget"), ("hist-570bbd", "stopped")):
        record = history.write(first_run(make_bundle(tmp_path, job_id, price_per_hour=36.0), status=status), status)
        made[status] = record
        cached(home, {**record, **shared})
    # A finished job whose ledger still had an open instance at its end, its trials 4x as long.
    cached(home, {**made["budget"], **shared, "job_id": "hist-0pe111", "status": "finished", "ledger_closed": False,
                  "trial_seconds": [40.0] * 3})
    code, out, err = cli("estimate", job_file(tmp_path), "--json")
    assert code == 0, err
    workload = json.loads(out)["workload"]
    spe = workload["terms"]["seconds_per_epoch"]
    assert spe["basis"] == "history" and spe["source"] == "the history of 1 similar job(s)"
    assert spe["value"] == pytest.approx(10.0 / 3, rel=1e-3)  # the budget record's 10 s trials of 3 epochs
    rows = {r["job_id"]: r for r in history_rows(cli, job_file(tmp_path))}
    assert rows["hist-b0d9e7"]["used_by_estimates"] is True and rows["hist-b0d9e7"]["cost_ratio"] is not None
    for stopped in ("hist-570bbd", "hist-0pe111"):
        assert rows[stopped]["complete"] is False and rows[stopped]["used_by_estimates"] is False
        assert rows[stopped]["cost_ratio"] is None and rows[stopped]["wall_p90_covered"] is None
    code, out, err = cli("history")
    assert code == 0, err
    assert "no (stopped, not complete)" in out and "rests on the 1 marked" in out


def test_a_job_that_cost_nothing_keeps_its_time_in_history(home, tmp_path, cli):
    """Before, a local job with no price (spent $0) had no row in `nascloud history` at all."""
    record = history.write(first_run(make_bundle(tmp_path, "hist-f4ee00"), status="finished", price=0.0), "finished")
    assert record["spend_usd"] == 0
    cached(home, {**record, "estimate": {"total_usd": {"p50": 0.0, "p90": 0.0},
                                         "wall_hours": {"p50": 61 / 3600, "p90": 70 / 3600}}})
    (row,) = history_rows(cli)
    assert row["wall_ratio"] == pytest.approx(1.0, rel=1e-3) and row["wall_p90_covered"] is True
    assert row["cost_ratio"] is None and row["cost_p90_covered"] is None


def test_an_estimate_from_one_record_carries_its_uncertainty(home, tmp_path, cli):
    """Measured: three identical local runs of one job took 106, 161 and 131 s; the second, estimated from the
    first's record alone at P50 106 s, fell outside its P90 (the spread was the catalog's 12 %, as if the one
    record were the truth). The estimate now says how many records it rests on, and widens for few."""
    def record(job_id: str, seconds: float, estimate_seconds: float) -> dict:
        run = history.write(first_run(make_bundle(tmp_path, job_id, price_per_hour=36.0), status="finished"),
                            "finished")
        return {**run, "job_id": job_id, "trial_seconds": [seconds / 4] * 3, "wall_seconds": seconds,
                "host_load": {"load_average": 0.0, "cpus": 2},
                "estimate": {"wall_hours": {"p50": estimate_seconds / 3600, "p90": estimate_seconds / 3000}}}

    def estimate() -> tuple[dict, dict]:
        code, out, err = cli("estimate", job_file(tmp_path), "--json")
        assert code == 0, err
        found = json.loads(out)
        return found["options"][0], found["workload"]

    cached(home, record("hist-00001a", 106.0, 100.0))
    option, workload = estimate()
    wall = option["wall_hours"]
    assert wall["p50"] * 3600 == pytest.approx(106, rel=0.1)
    assert wall["p90"] / wall["p50"] >= 161 / 106  # the measured second run is inside the P90
    assert workload["history_records"] == 1
    assert any("rests on 1 similar job record" in note for note in workload["notes"])
    # Ten records that agree: the spread narrows toward theirs.
    for n in range(2, 11):
        cached(home, record(f"hist-{n:05d}a", 106.0 * (1 + 0.02 * (n % 3 - 1)), 106.0))
    option, workload = estimate()
    assert workload["history_records"] == 10
    assert option["wall_hours"]["p90"] / option["wall_hours"]["p50"] < wall["p90"] / wall["p50"] - 0.2


def test_the_budget_timers_end_writes_the_final_event(home, tmp_path):
    """Before, the budget timer's halt wrote the exit record and no final event: `logs` ended before the end
    (the agent's ends wrote theirs only after the exit record, so `resume` and `watch`, which return at it,
    left `logs` without it for a few seconds)."""
    bucket = JobBucket.open(launched(tmp_path, "hist-71e3e7"))
    now = time.time()
    bucket.put_entry(LedgerEntry("local-71e3e7", "search", "local", "local", None, True, 36.0, now - 90, now))
    env = {**os.environ, "NASCLOUD_CLOUD": "local", "NASCLOUD_JOB_ID": "hist-71e3e7", "NASCLOUD_GROUP": "search",
           "NASCLOUD_JOB_URL": bucket.url, "NASCLOUD_LOCAL_ROOT": str(home / "local"),
           "NASCLOUD_ROOT": str(tmp_path / "host"), "NASCLOUD_LOCAL_INSTANCE": "local-71e3e7"}
    # As the timer runs it: `nascloud instance --halt`, which ends in the host's power-off (its own SIGKILL).
    done = subprocess.run([sys.executable, "-m", "nascloud", "instance", "--halt", "the budget timer fired",
                           "--instance-id", "local-71e3e7"], env=env, capture_output=True, text=True, timeout=120)
    ended = JobBucket.open(bucket.url)
    assert ended.exit_record()["status"] == "budget", done.stderr
    (final,) = [e for e in ended.events() if e.kind == "budget"]
    assert "stopped at the budget" in final.message and "the budget timer fired" in final.message
    assert ended.entry("local-71e3e7").end_reason == "budget"

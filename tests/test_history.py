"""The job history: what a job measured, read from its bucket as the instance leaves it, copied into the cache
by an observer command, and what `nascloud history` says of past estimates."""

from __future__ import annotations

import json
import time

import pytest

from nascloud import history
from nascloud.jobbucket import JobBucket, LedgerEntry
from nascloud.observer import summary
from tests.fixtures.search import make_bundle


@pytest.fixture
def job(tmp_path, monkeypatch):
    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path / "home"))
    return make_bundle(tmp_path, "hist-0a1b2c", price_per_hour=36.0)


def finished_job(url: str) -> JobBucket:
    """A job that was preempted once: two hosts in the ledger, each with the moment its agent trained."""
    bucket = JobBucket.open(url)
    created = bucket.bundle().created_at
    first, second = created + 1.0, created + 40.0
    bucket.put_entry(LedgerEntry("local-a", "search", "local", "local", None, True, 36.0, first, first + 30,
                                 first + 30, "preempted", booted_at=first + 1))
    bucket.put_entry(LedgerEntry("local-b", "search", "local", "local", None, True, 36.0, second, second + 60,
                                 second + 60, "finished", booted_at=second + 1))
    bucket.store.put_json("agent/training/local-a.json", {"time": first + 9.0})
    bucket.store.put_json("agent/training/local-b.json", {"time": second + 8.0})
    bucket.store.put_json("agent/progress.json", {"trial_durations": [3.0, 4.0, 5.0], "snapshot_seconds": [0.02, 0.04],
                                                  "trials_done": 3, "finished": True})
    bucket.write_exit("finished", "3 trials completed", "local-b")
    return bucket


def test_the_history_holds_what_the_job_measured(job):
    bucket = finished_job(job)
    record = history.write(bucket, "finished")
    assert bucket.store.get_json("history.json") == record
    created = bucket.bundle().created_at
    assert record["trial_seconds"] == [3.0, 4.0, 5.0] and record["snapshot_seconds"] == [0.02, 0.04]
    assert record["boot_to_training_seconds"] == pytest.approx(9.0, abs=1e-3)
    # Preempted at its end (first + 30), training again on the replacement at second + 8.
    assert record["recovery_seconds"] == [pytest.approx(40.0 + 8.0 - 31.0, abs=1e-3)]
    assert record["preemptions"] == 1 and record["instances"] == 2
    assert record["wall_seconds"] == pytest.approx(40.0 + 60.0, abs=1e-3)
    assert record["spend_usd"] == pytest.approx(36.0 * (60 + 60) / 3600, rel=1e-6)  # 30 s billed as 60
    assert record["similar"]["cloud"] == "local" and record["similar"]["data"] == "sklearn:digits"


def test_an_observer_command_copies_it_into_the_cache_once(job, tmp_path):
    bucket = finished_job(job)
    history.write(bucket, "finished")
    cached = tmp_path / "home" / "history" / "hist-0a1b2c.json"
    assert not cached.exists()
    summary(JobBucket.open(job))
    assert json.loads(cached.read_text())["job_id"] == "hist-0a1b2c"
    again = JobBucket.open(job)
    summary(again)
    assert history.records()[0]["trials"] == 3
    bucket.store.put_json("history.json", {"schema": 1, "job_id": "changed"})
    summary(JobBucket.open(job))  # the cache is not re-read from the bucket
    assert json.loads(cached.read_text())["job_id"] == "hist-0a1b2c"


def test_one_slow_run_does_not_move_the_terms():
    # Measured: one of three runs of a 36x18 digits job ran 12 of its 36 trials at twice the others' time
    # (its first trial, the same architecture in every run, too); the mean fit then priced an unseen size
    # at 1.37x its cost.
    key = {"k": 1}
    jobs = [{"similar": key, "epochs": e, "trials": 10, "trial_seconds": [slow * (1.0 + e * 0.5)] * 10,
             "data_fraction": 1.0, "wall_seconds": 15.0 + 10 * slow * (1.0 + e * 0.5), "preemptions": 0,
             "recovery_seconds": [], "snapshot_seconds": [0.01]}
            for e, slow in [(8, 1.0), (8, 1.0), (12, 1.0), (12, 1.0), (12, 1.4)]]
    found = history.terms(jobs, in_trial_overhead=0.0, fixed_default=99.0)
    assert found["seconds_per_epoch"]["value"] == pytest.approx(0.5)
    assert found["trial_overhead_seconds"]["value"] == pytest.approx(1.0)


def test_terms_fit_the_fixed_term_and_overheads_from_jobs_of_two_sizes():
    key = {"k": 1}
    jobs = [{"similar": key, "epochs": e, "trials": n, "trial_seconds": [1.0 + e * 0.5] * n, "data_fraction": 1.0,
             "wall_seconds": 15.0 + n * (1.0 + e * 0.5 + 0.7) + (20.0 if r else 0.0), "preemptions": len(r),
             "recovery_seconds": r, "snapshot_seconds": [0.01]}
            for n, e, r in [(10, 8, []), (20, 12, []), (10, 8, [11.0, 13.0])]]
    found = history.terms(jobs, in_trial_overhead=0.0, fixed_default=99.0)
    assert found["seconds_per_epoch"]["value"] == pytest.approx(0.5)
    assert found["trial_overhead_seconds"]["value"] == pytest.approx(1.7)  # 1.0 in the trial + 0.7 between
    assert found["job_seconds"]["value"] == pytest.approx(15.0, abs=1e-6)
    assert found["restart_seconds"]["value"] == pytest.approx(12.0)
    assert "job_cv" not in found  # no launch estimates to compare with
    # One size only: the calibration (in-trial overhead) and the default (fixed term) decide what it cannot.
    one = history.terms(jobs[:1], in_trial_overhead=1.0, fixed_default=15.0)
    assert one["seconds_per_epoch"]["value"] == pytest.approx(0.5) and "job_cv" not in one
    assert one["trial_overhead_seconds"]["value"] == pytest.approx(1.7)
    assert one["job_seconds"]["value"] == pytest.approx(15.0, abs=1e-6)


def test_nascloud_history_reports_how_close_past_estimates_were(job, tmp_path, capsys, monkeypatch):
    import sys

    from nascloud.cli import main

    bucket = finished_job(job)
    record = history.write(bucket, "finished")
    record["estimate"] = {"total_usd": {"p50": 1.08, "p90": 1.5}, "wall_hours": {"p50": 0.03, "p90": 0.02}}
    folder = tmp_path / "home" / "history"
    folder.mkdir(parents=True)
    (folder / "hist-0a1b2c.json").write_text(json.dumps(record))
    monkeypatch.setattr(sys, "argv", ["nascloud", "history", "--json"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert (stop.value.code or 0) == 0
    (row,) = json.loads(capsys.readouterr().out)["jobs"]
    assert row["cost_ratio"] == pytest.approx(1.08 / 1.2) and row["cost_p90_covered"] is True
    assert row["wall_ratio"] == pytest.approx(0.03 * 36) and row["wall_p90_covered"] is False
    assert time.time() - record["written_at"] < 60


def test_a_busy_host_is_taken_back_to_idle_and_runs_strayed_from_their_estimates_give_the_spread():
    key = {"k": 1}
    base = {"similar": key, "epochs": 10, "trials": 10, "data_fraction": 1.0, "preemptions": 0,
            "recovery_seconds": [], "snapshot_seconds": []}
    # The same search twice: on an idle 2-core host and at load average 4 (twice as slow), each launched
    # with an estimate of 60 s.
    idle = {**base, "trial_seconds": [5.0] * 10, "wall_seconds": 60.0, "host_load": {"load_average": 2, "cpus": 2},
            "estimate": {"wall_hours": {"p50": 60 / 3600}}}
    busy = {**base, "trial_seconds": [10.0] * 10, "wall_seconds": 120.0, "host_load": {"load_average": 4, "cpus": 2},
            "estimate": {"wall_hours": {"p50": 60 / 3600}}}
    found = history.terms([idle, busy], in_trial_overhead=0.0, fixed_default=10.0, idle=True)
    assert found["seconds_per_epoch"]["value"] == pytest.approx(0.5)  # both at idle speed
    assert found["job_seconds"]["value"] == pytest.approx(10.0) and found["trial_overhead_seconds"]["value"] == 0
    # 1x and 2x their estimates: a spread of sd/mean = 0.707/1.5; pooled with a prior as wide, widened for two
    # records (sqrt(1 + 1/2)) and for three degrees of freedom (Student's t90 1.638 over the normal's 1.2816).
    assert history.spread([idle, busy], 0.7071 / 1.5) == pytest.approx(0.7071 / 1.5 * 1.2247 * 1.638 / 1.2816, rel=0.01)
    raw = history.terms([idle, busy], in_trial_overhead=0.0, fixed_default=10.0)
    assert raw["seconds_per_epoch"]["value"] == pytest.approx(0.75)  # a cloud's instance: its own load
    assert history.slowdown({"load_average": 3.0, "cpus": 2}, own=False) == pytest.approx(2.5)
    assert history.slowdown({"load_average": 0.5, "cpus": 2}, own=True) == 1.0


def test_the_load_now_counts_other_threads_not_a_decaying_average():
    found = history.host_load_now(seconds=0.2, samples=4)
    assert found["cpus"] >= 1 and found["load_average"] >= 0  # this process itself is not counted


def test_a_price_that_changes_in_steps_is_billed_step_by_step():
    # $0.20/h in force at launch, $0.30/h from 30 min in: one hour costs $0.10 + $0.15.
    steps = [(-600.0, 0.20), (1800.0, 0.30)]
    assert history.priced_by_steps(steps, 0.0, 3600.0) == pytest.approx(0.25)
    assert history.priced_by_steps(steps[1:], 0.0, 3600.0) == pytest.approx(0.30)  # only a later one: it held


def test_the_ledger_is_checked_against_ec2s_spot_price_history(moto_reset, tmp_path):
    from nascloud.bundle import Bundle, OfferRecord
    from nascloud.job import parse_job
    from nascloud.provisioners import get_provisioner

    url = f"file://{tmp_path}/bucket/aws-job-0a1b2c"
    bucket = JobBucket.open(url)
    offer = OfferRecord(cloud="aws", region="us-east-1", instance_type="g4dn.xlarge", gpu="T4", spot=True,
                        price_per_hour=0.21, on_demand_price_per_hour=0.526)
    bucket.store.put_json("bundle/job.json", Bundle(
        job_id="aws-job-0a1b2c", job_url=url, created_at=0.0, spec=parse_job({"name": "aws-job"}), offer=offer,
        data="data/x.json", interval_minutes=10.0, billing_minimum_seconds=60.0).to_json())
    now = time.time()
    # An hour of spot at its launch price, then an hour on-demand (its price does not move).
    bucket.put_entry(LedgerEntry("i-spot", "search", "aws", "g4dn.xlarge", "use1-az1", True, 0.21, now - 7200,
                                 now - 3600, now - 3600, "preempted"))
    bucket.put_entry(LedgerEntry("i-od", "search", "aws", "g4dn.xlarge", "use1-az1", False, 0.526, now - 3600,
                                 now, now, "finished"))
    check = history.bill_check(bucket, get_provisioner("aws", region="us-east-1", home=tmp_path / "home"), now=now)
    # moto's price history holds one price for every type, $0.00001/h: the spot hour is billed at it.
    assert check["ledger_usd"] == pytest.approx(0.21 + 0.526)
    assert check["by_price_history_usd"] == pytest.approx(0.00001 + 0.526)
    assert check["drift_usd"] == pytest.approx(0.00001 - 0.21)
    assert check["instances_checked"] == 1

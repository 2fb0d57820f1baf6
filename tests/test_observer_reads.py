"""What one `status` costs in bucket requests: on S3/GCS each is a round trip and is billed, and a spot job's
ledger grows by an instance at every preemption, so each of its objects is read once per status, not once
per figure that uses it."""

from __future__ import annotations

import time

import pytest

from nascloud.jobbucket import JobBucket, LedgerEntry
from nascloud.observer import summary
from tests.fixtures.search import make_bundle


@pytest.fixture
def job(tmp_path, monkeypatch):
    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path / "home"))
    return make_bundle(tmp_path, "reads-0a1b2c", price_per_hour=1.0)


def add_instances(url: str, n: int, start: int = 0, ended: bool = True) -> None:
    bucket, now = JobBucket.open(url), time.time()
    for i in range(start, start + n):
        bucket.put_entry(LedgerEntry(f"local-{i:04d}", "search", "local", "local", None, True, 1.0,
                                     now - 3600 + i * 60, now - 3590 + i * 60, now - 3590 + i * 60 if ended else None,
                                     "preempted" if ended else None))


def reads(url: str) -> int:
    bucket = JobBucket.open(url)
    summary(bucket)
    return bucket.store.requests.class_b


def test_each_ledger_entry_and_event_costs_one_read_per_status(job):
    bucket = JobBucket.open(job)
    add_instances(job, 1)
    bucket.put_charge("launch", 0.001, {})
    bucket.add_event("alert", "25% of the budget spent", {"key": "alert:0.25"})
    bucket.write_exit("finished", "done", "local-0000")
    base = reads(job)
    add_instances(job, 5, start=1)  # five preemptions later
    assert reads(job) - base == 5
    for n in range(5):
        bucket.add_event("alert", f"alert {n}", {"key": f"alert:{n}"})
    assert reads(job) - base == 10
    assert len(summary(JobBucket.open(job))["alerts"]) == 6


def test_what_status_writes_to_the_ledger_is_what_it_shows(job):
    # An instance gone without a word (its host no longer listed): status closes its entry and shows it closed.
    add_instances(job, 1, ended=False)
    shown = summary(JobBucket.open(job))
    assert [e["end_reason"] for e in shown["instances"]] == ["lost"]
    assert shown["instances"][0]["ended_at"] is not None

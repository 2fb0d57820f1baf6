"""The job's records in its bucket: events created once, alerts claimed once whoever fires them."""

from __future__ import annotations

from nascloud.checkpoints import open_store
from nascloud.jobbucket import JobBucket


def test_an_alert_claimed_by_one_instance_is_never_fired_again_by_another(tmp_path):
    url = f"file://{tmp_path}/bucket/job-abc123"
    first, replacement = JobBucket(open_store(url)), JobBucket(open_store(url))  # two instances' views
    key = "spend:0.5@5.00"
    assert first.add_event("alert", "50% of the $5.00 budget spent", {"key": key}, once=key)
    assert not replacement.add_event("alert", "50% of the $5.00 budget spent", {"key": key}, once=key)
    assert replacement.fired() == {key}
    assert [e.message for e in replacement.events()] == ["50% of the $5.00 budget spent"]


def test_events_are_ordered_by_name_and_read_after_a_mark(tmp_path):
    job = JobBucket(open_store(f"file://{tmp_path}/bucket/job-abc123"))
    for kind in ("created", "groups", "finished"):
        job.add_event(kind, kind)
    events = job.events()
    assert [e.kind for e in events] == ["created", "groups", "finished"]
    assert [e.kind for e in job.events(after=events[0].name)] == ["groups", "finished"]


def test_the_job_bills_each_instance_its_clouds_minimum_as_the_bundle_records_it(tmp_path):
    from nascloud.bundle import Bundle, OfferRecord
    from nascloud.jobbucket import LedgerEntry, spend
    from nascloud.job import parse_job

    url = f"file://{tmp_path}/bucket/job-abc123"
    job = JobBucket(open_store(url))
    offer = OfferRecord(cloud="aws", instance_type="g4dn.xlarge", price_per_hour=36.0, on_demand_price_per_hour=36.0)
    job.store.put_json("bundle/job.json", Bundle(
        job_id="job-abc123", job_url=url, created_at=0.0, spec=parse_job({"name": "job"}), offer=offer,
        data="data/x.json", interval_minutes=10.0, billing_minimum_seconds=120.0).to_json())
    # Preempted 10 s after its launch: billed the minimum the bundle carries ($36/h = 1 cent a second).
    job.put_entry(LedgerEntry("i-1", "search", "aws", "g4dn.xlarge", None, True, 36.0, 100.0, 110.0, 110.0,
                              "preempted"))
    assert spend(job, now=1000.0) == 1.20

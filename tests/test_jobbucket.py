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

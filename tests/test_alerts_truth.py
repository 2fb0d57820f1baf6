"""Alerts and budget stops that say what was spent (issue 25). Before: an alert named the threshold, not the
share ("50% of the $0.90 budget spent ($0.60)" when $0.60 is 67 %); a stop at the reserve its shutdown needs
said nothing of the reserve nor of the alerts it never reached (43 % spent, none of 50/80/100 % fired); and a
local rehearsal kept a cloud's 180 s shutdown in reserve, so a small budget stopped it at its first check.
Pure functions with the clock given, and the money as the agent reads it from a real file:// bucket."""

from __future__ import annotations

from nascloud import budget
from nascloud.jobbucket import JobBucket, LedgerEntry, money
from tests.fixtures.search import make_bundle
from tests.test_budget import aws_config, progress, row


def test_an_alert_names_the_share_spent_and_the_threshold_it_crossed():
    # $36/h: the 60 s billing minimum bills $0.60 at once, past the 50 % alert of a $0.90 budget.
    config = aws_config(budget_usd=0.90, alerts=(0.5, 0.8, 1.0))
    tick = budget.evaluate([row(0.0, price=36.0)], progress(), config, set(), now=1.0)
    assert [a.message for a in tick.alerts if a.kind == "spend"] == [
        "67% of the $0.90 budget spent ($0.60; past the 50% alert)"]
    # A jump past two thresholds: each alert says the same spend and its own threshold, lowest first.
    tick = budget.evaluate([row(0.0, price=36.0)], progress(), config, set(), now=73.0)
    assert [a.message for a in tick.alerts if a.kind == "spend"] == [
        "81% of the $0.90 budget spent ($0.73; past the 50% alert)",
        "81% of the $0.90 budget spent ($0.73; past the 80% alert)"]


def test_a_stop_at_the_reserve_says_so_with_the_share_and_the_alerts_it_stopped_short_of():
    # A cent a second on a cloud: the next check (10 s) and the shutdown (180 s) need $1.90 of the $3.33.
    config = aws_config(budget_usd=3.33, tick_seconds=10, shutdown_seconds=180)
    rows = [row(0.0, price=36.0)]
    assert budget.evaluate(rows, progress(), config, set(), now=142.0).stop == "none"
    tick = budget.evaluate(rows, progress(), config, set(), now=144.0)
    assert tick.stop == "budget"
    assert tick.alerts == []  # 43 % spent: saying 50 % was spent would be false
    assert tick.reason == ("spent $1.44 (43.2%) of the $3.33 budget: the $1.89 left is kept as the reserve for the "
                           "next check and the shutdown, which bill $1.90; stopped short of the 50%, 80% and 100% "
                           "alerts")


def test_a_stop_between_instances_says_the_left_cannot_pay_a_replacement():
    # Preempted with $9.50 of $10 spent: a replacement at $36/h bills its 60 s minimum ($0.60) at once.
    tick = budget.evaluate([row(0.0, 950.0, price=36.0, reason="preempted")], progress(),
                           aws_config(budget_usd=10.0, tick_seconds=10, shutdown_seconds=0), set(), now=960.0)
    assert tick.stop == "budget"
    assert tick.reason == ("spent $9.50 (95.0%) of the $10.00 budget: the $0.50 left is kept as the reserve for a "
                           "replacement's billing minimum and its shutdown, which bill $0.60; stopped short of the "
                           "100% alert")


def test_a_local_rehearsal_keeps_in_reserve_what_local_needs_not_a_clouds_shutdown(tmp_path, monkeypatch):
    # The e2e cap's job: $36/h on the local provider, a $0.90 budget, a check a second.
    monkeypatch.setenv("NASCLOUD_HEARTBEAT_SECONDS", "1")
    monkeypatch.delenv("NASCLOUD_SHUTDOWN_SECONDS", raising=False)
    job = JobBucket.open(make_bundle(tmp_path, "rehearsal-abc123", cloud="local", price_per_hour=36.0,
                                     budget={"usd": 0.90}))
    launched = job.bundle().created_at

    def check(seconds: float):
        """The agent's tick `seconds` after the launch, its heartbeat just recorded."""
        job.put_entry(LedgerEntry("local-1", "search", "local", "local", None, True, 36.0, launched,
                                  last_seen=launched + seconds))
        return money(job, launched + seconds)

    first = check(1)
    assert first.stop == "none", first.reason  # before: 180 s in reserve ($1.80) stopped it at once
    # It runs on until what is left is a local shutdown's reserve (seconds), not three minutes'.
    assert check(75).stop == "none"
    late = check(85)
    assert late.stop == "budget" and late.reason.startswith("spent $0.85 (94.4%) of the $0.90 budget"), late.reason
    # NASCLOUD_SHUTDOWN_SECONDS still overrides it (the e2e tests' 5 s; here a cloud's 180 s).
    monkeypatch.setenv("NASCLOUD_SHUTDOWN_SECONDS", "180")
    assert check(1).stop == "budget"

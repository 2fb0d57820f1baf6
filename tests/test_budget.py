"""The money, with a controlled clock: every call gets `now` explicitly, so no test waits or races."""

from __future__ import annotations

import math

import pytest

from nascloud import budget, cost
from nascloud.budget import BudgetConfig, Progress
from nascloud.errors import UsageError
from nascloud.bundle import Bundle, OfferRecord
from nascloud.jobbucket import LedgerEntry
from nascloud.job import parse_job
from nascloud.pricing import load_catalog


AWS_MINIMUM = load_catalog().billing_for("aws").minimum_hours * 3600  # billing.csv: 60 s


def aws_config(**fields) -> BudgetConfig:
    return BudgetConfig(minimum_billed_seconds=AWS_MINIMUM, **fields)


def row(launched_at, ended_at=None, price=3.6, reason=None, seq=1) -> LedgerEntry:
    return LedgerEntry(f"i-{seq}", "search", "aws", "g4dn.xlarge", "use1-az2", True, price, launched_at,
                       last_seen=ended_at or launched_at, ended_at=ended_at, end_reason=reason)


def progress(done=0, max_trials=4, durations=(), running_epoch=None, epochs=None, finished=False) -> Progress:
    return Progress(max_trials=max_trials, trials_done=done, trial_durations=tuple(durations),
                    running_epoch=running_epoch, epochs=epochs, finished=finished)


# ---- the ledger --------------------------------------------------------------------------------

def test_billing_has_a_minimum_then_counts_seconds():
    assert budget.billed_seconds(1000.0, 1010.0, now=5000.0, minimum_seconds=AWS_MINIMUM) == 60  # 10 s run: the 60 s minimum
    assert budget.billed_seconds(1000.0, 1090.5, now=5000.0, minimum_seconds=AWS_MINIMUM) == 90.5  # per second after it
    assert budget.billed_seconds(1000.0, None, now=1300.0, minimum_seconds=AWS_MINIMUM) == 300  # still running: up to now
    assert budget.billed_seconds(None, None, now=1300.0, minimum_seconds=AWS_MINIMUM) == 0  # an intent that never launched
    assert budget.span_cost(row(0.0, 1800.0, price=2.0), now=99999.0, minimum_seconds=AWS_MINIMUM) == pytest.approx(1.0)


def test_ledger_keeps_each_span_at_its_launch_price():
    # A preempted spot instance at $1/h, then its replacement at $3/h (the price rose): no re-pricing.
    rows = [row(0.0, 3600.0, price=1.0, reason="preempted", seq=1), row(4000.0, None, price=3.0, seq=2)]
    assert budget.ledger_total(rows, now=4000.0 + 1800, minimum_seconds=AWS_MINIMUM) == pytest.approx(1.0 + 1.5)
    assert budget.burn_rate(rows) == 3.0
    # Between instances, the next one will burn at about the last one's price.
    assert budget.burn_rate(rows[:1]) == 1.0
    assert budget.burn_rate([]) == 0.0


def test_bucket_charges_from_counts():
    rates = {"storage_gb_month": 0.023, "put_per_1000": 0.005, "get_per_1000": 0.0004}
    # 1.5 GB kept for a whole month; 2000 writes and lists, 5000 reads.
    assert budget.storage_charge(1_500_000_000, cost.HOURS_PER_MONTH * 3600, rates) == pytest.approx(1.5 * 0.023)
    assert budget.request_charges({"class_a": 2000, "class_b": 5000}, rates) == pytest.approx(2 * 0.005 + 5 * 0.0004)


# ---- progress and projection -------------------------------------------------------------------

def test_progress_from_the_agent_report():
    report = {"max_trials": 10, "trials_done": 3, "trials_failed": 1, "running": {"trial_id": "4", "epoch": 1},
              "best_score": 0.93, "trial_durations": [100, 120, 140], "finished": False}
    p = Progress.of(report, epochs=4)
    assert p.remaining_trials() == pytest.approx(10 - 3 - 1 - 0.25)  # the running trial is 1/4 done
    assert budget.remaining_hours(p) == pytest.approx(5.75 * 120 / 3600)
    assert Progress.of({}, epochs=3, max_trials=6).remaining_trials() == 6  # before the first report
    assert budget.remaining_hours(Progress.of({}, max_trials=6)) is None  # no pace known yet
    assert budget.remaining_hours(Progress.of({}, max_trials=6), trial_seconds_hint=600) == 1.0
    assert budget.remaining_hours(Progress.of({**report, "finished": True})) == 0


def test_projection_is_spent_plus_burn_times_remaining_work():
    config = aws_config(budget_usd=100.0)
    tick = budget.evaluate([row(0.0, price=3.6)], progress(done=2, max_trials=6, durations=[1800, 1800]),
                           config, set(), now=3600.0)
    assert tick.spent_usd == pytest.approx(3.6)
    assert tick.remaining_hours == pytest.approx(2.0)
    assert tick.projected_usd == pytest.approx(3.6 + 3.6 * 2)
    assert tick.p_over == pytest.approx(0.0, abs=0.01)  # $100 covers $11 many times over
    assert tick.stop == "none" and tick.alerts == []


def test_p_over_budget_comes_from_the_cost_model():
    # $10.80 spent of $16, 2 h of work left at $3.60/h ($7.20): over in most futures.
    rows = [row(0.0, price=3.6)]
    config = aws_config(budget_usd=16.0, interruptions_per_hour=0.5)
    tick = budget.evaluate(rows, progress(done=3, max_trials=5, durations=[3000, 4000, 3800]), config,
                           set(), now=3 * 3600)
    assert 0.6 < tick.p_over <= 1.0
    roomy = budget.evaluate(rows, progress(done=3, max_trials=5, durations=[3000, 4000, 3800]),
                            aws_config(budget_usd=40.0, interruptions_per_hour=0.5), set(), now=3 * 3600)
    assert roomy.p_over < 0.1


# ---- alerts ------------------------------------------------------------------------------------

def run_loop(rows_for, config, prog, start, end, step):
    """Tick like the watch loop from `start` to `end`; collect the alerts and the first stop."""
    fired: list[str] = []
    alerts: list[budget.Alert] = []
    now = start
    while now <= end:
        tick = budget.evaluate(rows_for(now), prog, config, fired, now)
        alerts += tick.alerts
        fired += [a.key for a in tick.alerts]
        if tick.stop != "none":
            return alerts, tick, now
        now += step
    return alerts, None, now


def test_spend_alerts_fire_once_each_in_order():
    # $36/h = 1 cent a second, $10 budget; thresholds 0.5, 0.8, 1.0; a tick every 10 s, no cap.
    config = aws_config(budget_usd=10.0, tick_seconds=0, shutdown_seconds=0)
    alerts, stop, _ = run_loop(lambda now: [row(0.0, price=36.0)], config, progress(), 0.0, 1200.0, 10.0)
    spend = [a for a in alerts if a.kind == "spend"]
    assert [a.message for a in spend] == [
        "50% of the $10.00 budget spent ($5.00; past the 50% alert)",
        "80% of the $10.00 budget spent ($8.00; past the 80% alert)",
        "100% of the $10.00 budget spent ($10.00; past the 100% alert)",
    ]
    assert len({a.key for a in alerts}) == len(alerts)  # none twice
    assert stop is not None and stop.stop == "budget"


def test_a_jump_past_several_thresholds_fires_each_in_order():
    config = aws_config(budget_usd=10.0, alerts=(0.25, 0.5, 0.8, 1.0))
    tick = budget.evaluate([row(0.0, 3600.0, price=8.5)], progress(), config, {"spend:0.25@10.00"}, now=3600.0)
    assert [a.key for a in tick.alerts if a.kind == "spend"] == ["spend:0.5@10.00", "spend:0.8@10.00"]


def test_projection_alert_says_what_the_search_will_cost_and_fires_once():
    config = aws_config(budget_usd=10.0)
    prog = progress(done=1, max_trials=4, durations=[3600])  # 3 h left at $3/h
    tick = budget.evaluate([row(0.0, price=3.0)], prog, config, set(), now=3600.0)
    assert [a.message for a in tick.alerts] == [
        "at this rate the search will cost $12.00, $2.00 over the $10.00 budget"]
    again = budget.evaluate([row(0.0, price=3.0)], prog, config, {a.key for a in tick.alerts}, now=3700.0)
    assert again.alerts == []


def test_raising_the_budget_rearms_the_alerts():
    fired = {"spend:0.5@10.00", "spend:0.8@10.00", "spend:1@10.00", "projection@10.00"}
    raised = aws_config(budget_usd=budget.parse_budget_change("+10", 10.0))
    tick = budget.evaluate([row(0.0, 3600.0, price=10.5)], progress(finished=True), raised, fired, now=4000.0)
    assert [a.message for a in tick.alerts] == ["52% of the $20.00 budget spent ($10.50; past the 50% alert)"]


# ---- the hard cap ------------------------------------------------------------------------------

@pytest.mark.parametrize("price,tick_seconds,shutdown_seconds", [(36.0, 10.0, 120.0), (3.6, 30.0, 180.0),
                                                                 (720.0, 5.0, 60.0)])
def test_the_cap_stops_with_spend_within_one_billing_increment(price, tick_seconds, shutdown_seconds):
    config = aws_config(budget_usd=50.0, tick_seconds=tick_seconds, shutdown_seconds=shutdown_seconds)
    launched = 100.0
    alerts, stop, stopped_at = run_loop(lambda now: [row(launched, price=price)], config, progress(),
                                        launched, launched + 10 * 24 * 3600, tick_seconds)
    assert stop is not None and stop.stop == "budget"
    assert stop.reason.startswith("spent $")
    # The orchestrator then snapshots and terminates, taking at most the shutdown time.
    final = budget.ledger_total([row(launched, stopped_at + shutdown_seconds, price=price)], now=math.inf, minimum_seconds=AWS_MINIMUM)
    increment = price / 3600  # per-second billing
    assert final <= config.budget_usd + increment
    # ...and it did not stop early: one more tick would have passed the budget.
    assert final + price * tick_seconds / 3600 > config.budget_usd


def test_the_cap_counts_the_billing_minimum_of_a_fresh_instance():
    # $9.70 on a preempted instance, then a replacement at $36/h (1 cent a second), $10.40 budget. Its
    # 60 s minimum ($0.60) is billed at once, and covers the ticks inside it; after it, per second.
    rows = [row(0.0, 970.0, price=36.0, reason="preempted", seq=1), row(1000.0, price=36.0, seq=2)]
    config = aws_config(budget_usd=10.40, tick_seconds=10, shutdown_seconds=0)
    tick = budget.evaluate(rows, progress(), config, set(), now=1001.0)
    assert tick.spent_usd == pytest.approx(9.70 + 0.60)
    assert tick.stop == "none"
    assert budget.evaluate(rows, progress(), config, set(), now=1059.0).stop == "none"  # $10.39 at the next tick
    late = budget.evaluate(rows, progress(), config, set(), now=1061.0)  # $10.41 at the next tick
    assert late.stop == "budget"
    assert late.reason == ("spent $10.31 (99.1%) of the $10.40 budget: the $0.09 left is kept as the reserve for the "
                           "next check and the shutdown, which bill $0.10; stopped short of the 100% alert")


def test_no_recovery_is_launched_into_a_budget_that_cannot_pay_its_minimum():
    # Preempted with $9.50 spent of $10: a replacement at $36/h would bill $0.60 at once.
    rows = [row(0.0, 950.0, price=36.0, reason="preempted")]
    tick = budget.evaluate(rows, progress(), aws_config(budget_usd=10.0, tick_seconds=10, shutdown_seconds=0),
                           set(), now=960.0)
    assert tick.stop == "budget"
    assert budget.evaluate(rows, progress(), aws_config(budget_usd=10.2, tick_seconds=10, shutdown_seconds=0),
                           set(), now=960.0).stop == "none"


def test_a_finished_search_is_not_stopped():
    tick = budget.evaluate([row(0.0, price=36.0)], progress(finished=True), aws_config(budget_usd=1.0), set(),
                           now=3600.0)
    assert tick.stop == "none"


# ---- the deadline ------------------------------------------------------------------------------

def test_deadline_alerts_then_stop_before_it_passes():
    config = aws_config(max_hours=2.0, started_at=0.0, tick_seconds=60, shutdown_seconds=180)
    prog = progress(done=1, max_trials=4, durations=[3000])
    alerts, stop, stopped_at = run_loop(lambda now: [row(0.0, price=1.0)], config, prog, 0.0, 3 * 3600, 60.0)
    assert [a.message for a in alerts] == [
        "at this pace the search needs 2.5 h, 30 min past the 2.0 h deadline",
        "50% of the 2.0 h deadline used (1.0 h)",
        "80% of the 2.0 h deadline used (1.6 h)",
    ]
    assert stop.stop == "deadline"
    assert stop.reason == "1.9 h since launch, and the shutdown takes the rest of the 2.0 h deadline"
    # The first tick at which one more tick and the shutdown would reach the deadline: it ends before.
    assert stopped_at == 2 * 3600 - config.tick_seconds - config.shutdown_seconds


def test_config_for_a_bundle_takes_the_budget_record_in_force():
    spec = parse_job({"name": "job", "search": {"max_trials": 8}, "budget": {"usd": 5, "alerts": [0.5, 0.9]}})
    offer = OfferRecord(cloud="aws", instance_type="g4dn.xlarge", price_per_hour=0.2, on_demand_price_per_hour=0.5)
    bundle = Bundle(job_id="job-abc123", job_url="file:///b/job-abc123", created_at=1000.0, spec=spec, offer=offer,
                    data="data/x.npz", interval_minutes=12.0, billing_minimum_seconds=AWS_MINIMUM,
                    estimate={"work_hours": 2.0, "interruptions_per_hour": 0.07})
    # `resume --budget 25 --max-hours 48` wrote the record: it wins over the job file's $5.
    config = BudgetConfig.for_bundle(bundle, {"usd": 25.0, "max_hours": 48.0}, tick_seconds=10)
    assert config == aws_config(budget_usd=25.0, alerts=(0.5, 0.9), max_hours=48.0, started_at=1000.0,
                                  tick_seconds=10, interruptions_per_hour=0.07, interval_hours=0.2,
                                  trial_seconds_hint=900.0)
    assert config.deadline_at == 1000.0 + 48 * 3600


# ---- bad input: exit 2 with one line -----------------------------------------------------------

@pytest.mark.parametrize("text,current,expected", [("+5", 10.0, 15.0), ("+$2.5", 10.0, 12.5), ("20", 10.0, 20.0),
                                                   ("7", None, 7.0)])
def test_budget_change_relative_with_a_sign(text, current, expected):
    assert budget.parse_budget_change(text, current) == expected


@pytest.mark.parametrize("text,current,message", [
    ("-5", 10.0, "--budget must be positive: '-5' would lower it; give the new budget without a sign, "
                 "e.g. --budget 20"),
    ("ten", 10.0, "--budget must be a number of dollars, e.g. 50, got 'ten'"),
    ("0", 10.0, "--budget must be a positive number of dollars, e.g. 50, got 0"),
    ("nan", 10.0, "--budget must be a positive number of dollars, e.g. 50, got nan"),
    ("+x", 10.0, "--budget +USD must be a number of dollars, e.g. 50, got 'x'"),
    ("+5", None, "the job has no budget to add +5 to; give the new budget without a sign, e.g. --budget 5"),
])
def test_bad_budgets_are_usage_errors(text, current, message):
    with pytest.raises(UsageError) as error:
        budget.parse_budget_change(text, current)
    assert str(error.value) == message and error.value.exit_code == 2


@pytest.mark.parametrize("alerts,message", [
    ((0.8, 0.5, 1.0), "budget.alerts: thresholds must increase without repeats, e.g. 0.5,0.8,1.0; got 0.8,0.5,1"),
    ((0.5, 0.5), "budget.alerts: thresholds must increase without repeats, e.g. 0.5,0.8,1.0; got 0.5,0.5"),
    ((0.5, -0.8), "budget.alerts: -0.8 must be a positive fraction of the budget, e.g. 0.5,0.8,1.0"),
    (("half", 1), "budget.alerts: 'half' is not a number; give fractions like 0.5,0.8,1.0"),
])
def test_bad_thresholds_are_usage_errors(alerts, message):
    with pytest.raises(UsageError) as error:
        aws_config(budget_usd=3.0, alerts=alerts)
    assert str(error.value) == message and error.value.exit_code == 2


def test_config_validation():
    with pytest.raises(UsageError, match="budget.usd must be a positive number of dollars"):
        aws_config(budget_usd=-3.0)

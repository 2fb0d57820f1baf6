"""The cost model's properties (hypothesis) and the worked examples of cost-model.md."""

import math

import pytest
from hypothesis import given, settings, strategies as st

from nascloud import cost
from nascloud.errors import UsageError

T4 = cost.Offer(cloud="aws", region="us-east-1", zone="use1-az1", instance_type="g4dn.xlarge", gpu="T4",
                gpu_count=1, vcpus=4, memory_gib=16, on_demand=0.526, spot=0.2147, source="test", as_of="2026-01-01")


def option(price=0.2147, rate=0.01, spot=True, minimum=60 / 3600, max_run=None, speed=1.0, rate_cv=0.0):
    return cost.Option(offer=T4, spot=spot, price_per_hour=price, speed=speed, interruptions_per_hour=rate,
                       rate_cv=rate_cv, max_run_hours=max_run, billing=cost.Billing(minimum_hours=minimum))


def test_on_demand_without_interruptions_is_price_times_hours_exactly():
    e = cost.estimate(cost.Workload(t4_hours=72), option(price=0.70, rate=0.0, spot=False))
    assert e.cost_usd.p50 == e.cost_usd.p90 == pytest.approx(50.40, abs=1e-9)
    assert e.wall_hours.p50 == 72 and e.expected_preemptions == 0


def test_billing_minimum_applies_to_short_runs():
    e = cost.estimate(cost.Workload(t4_hours=0.001), option(price=0.60, rate=0.0, spot=False))
    assert e.cost_usd.mean == pytest.approx(0.60 / 60)  # one minute billed for 3.6 s of work


def test_worked_example_of_cost_model_md():
    """W = 72 h, p = 0.2147, λ = 0.01, R = 0.1 h, δ = 1 min: about 73.4 h, 0.73 interruptions, $15.76."""
    e = cost.estimate(cost.Workload(t4_hours=72), option())
    assert e.interval_hours == pytest.approx(1.83, abs=0.02)  # Young 1.826; Daly's refinement 1.815
    assert e.first_order.wall_hours == pytest.approx(73.4, abs=0.05)
    assert e.first_order.interruptions == pytest.approx(0.73, abs=0.01)
    assert e.first_order.cost_usd == pytest.approx(15.76, abs=0.01)
    # The Monte Carlo agrees with the formula where the formula holds.
    assert e.wall_hours.mean == pytest.approx(e.first_order.wall_hours, rel=0.02)
    assert e.cost_usd.mean == pytest.approx(e.first_order.cost_usd, rel=0.02)
    assert e.expected_preemptions == pytest.approx(0.73, abs=0.05)


def test_daly_matches_his_published_example():
    """Daly (2006): M = 24 h, δ = 5 min gives about 117 min."""
    assert cost.young_daly_interval(5 / 60, 1 / 24) * 60 == pytest.approx(117, abs=1.5)
    assert cost.young_daly_interval(1 / 60, 0.0) == math.inf


def test_monte_carlo_agrees_with_formula_at_a_higher_rate():
    e = cost.estimate(cost.Workload(t4_hours=200, trials=100, trial_cv=0.3), option(rate=0.05))
    assert e.wall_hours.mean == pytest.approx(e.first_order.wall_hours, rel=0.03)
    assert e.expected_preemptions == pytest.approx(e.first_order.interruptions, rel=0.05)


def test_preemptible_24h_cap_forces_restarts():
    e = cost.estimate(cost.Workload(t4_hours=100), option(rate=0.0001, max_run=24.0))
    assert e.expected_preemptions >= math.floor(100 / 24)


def test_work_is_refused_only_when_the_simulation_cannot_finish_it():
    # λ·(R + τ/2) = 2.2 > 1: the old first-order check refused this; it finishes, after many restarts.
    e = cost.estimate(cost.Workload(t4_hours=10), option(rate=2.0), cost.Assumptions(interval_hours=1.0))
    assert e.expected_preemptions == pytest.approx(e.first_order.interruptions, rel=0.05) and e.expected_preemptions > 20
    with pytest.raises(UsageError, match="does not finish"):
        cost.estimate(cost.Workload(t4_hours=10), option(rate=20.0), cost.Assumptions(interval_hours=2.0))


# The rates the product accepts (compute.interruptions_per_hour up to 100 an hour) against intervals from
# minutes to hours and restarts from local's seconds to a cloud's minutes.
@pytest.mark.parametrize("rate", [0.0, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 20.0, 100.0])
@pytest.mark.parametrize("interval, restart", [(None, 0.1), (1 / 60, 0.01), (0.25, 0.1), (None, 0.005)])
def test_closed_form_and_monte_carlo_agree_over_the_rates(rate, interval, restart):
    assumptions = cost.Assumptions(restart_hours=restart, checkpoint_hours=20 / 3600, interval_hours=interval,
                                   samples=4000)
    try:
        e = cost.estimate(cost.Workload(t4_hours=3.0), option(rate=rate), assumptions)
    except UsageError as error:  # only where the closed form, too, says a thousand or more interruptions
        closed = cost.first_order(3.0, 0.2147, rate, restart, 20 / 3600,
                                  interval or cost.young_daly_interval(20 / 3600, rate))
        assert closed.interruptions > cost.MAX_INTERRUPTIONS / 5, error
        return
    assert e.wall_hours.mean == pytest.approx(e.first_order.wall_hours, rel=0.04)
    assert e.cost_usd.mean == pytest.approx(e.first_order.cost_usd, rel=0.04)
    assert e.expected_preemptions == pytest.approx(e.first_order.interruptions, rel=0.05, abs=0.02)


def test_at_five_an_hour_the_two_agree():
    """The issue's case: 276 h against 167 h at λ = 5 when the closed form exposed restarts and the
    simulation did not."""
    e = cost.estimate(cost.Workload(t4_hours=100), option(rate=5.0), cost.Assumptions(samples=2000))
    assert e.wall_hours.mean == pytest.approx(e.first_order.wall_hours, rel=0.03)


@pytest.mark.parametrize("bad", [0, -1, float("nan")])
def test_workload_must_be_positive(bad):
    with pytest.raises(UsageError, match="positive"):
        cost.Workload(t4_hours=bad)


hours = st.floats(min_value=0.05, max_value=500)
prices = st.floats(min_value=0.01, max_value=30)
rates = st.floats(min_value=0.0, max_value=0.05)
FAST = cost.Assumptions(samples=400)


@settings(max_examples=40, deadline=None)
@given(hours, prices, rates, st.integers(1, 200), st.floats(0, 0.8))
def test_spot_cost_never_below_price_times_pure_compute_and_p90_at_least_p50(w, p, rate, trials, cv):
    e = cost.estimate(cost.Workload(t4_hours=w, trials=trials, trial_cv=cv), option(price=p, rate=rate), FAST)
    assert e.cost_usd.p90 >= e.cost_usd.p50
    assert e.wall_hours.p90 >= e.wall_hours.p50
    assert e.total_usd.p90 >= e.total_usd.p50
    if cv == 0:
        assert e.cost_usd.p50 >= p * w * (1 - 1e-9)
        assert e.first_order.cost_usd >= p * w * (1 - 1e-9)


@settings(max_examples=25, deadline=None)
@given(hours, prices, st.floats(0.001, 0.04), st.floats(1.1, 3))
def test_cost_grows_with_rate_restart_and_checkpoint_time(w, p, rate, factor):
    base = cost.first_order(w, p, rate, 0.1, 1 / 60, cost.young_daly_interval(1 / 60, rate))
    tau = cost.young_daly_interval(1 / 60, rate)
    assert cost.first_order(w, p, rate * factor, 0.1, 1 / 60, tau).cost_usd >= base.cost_usd
    assert cost.first_order(w, p, rate, 0.1 * factor, 1 / 60, tau).cost_usd >= base.cost_usd
    assert cost.first_order(w, p, rate, 0.1, factor / 60, tau).cost_usd >= base.cost_usd


@settings(max_examples=25, deadline=None)
@given(hours, prices)
def test_as_rate_goes_to_zero_spot_tends_to_price_times_work_with_checkpoint_overhead(w, p):
    tau = 0.5
    e = cost.estimate(cost.Workload(t4_hours=w), option(price=p, rate=1e-9),
                      cost.Assumptions(interval_hours=tau, samples=200))
    assert e.cost_usd.mean == pytest.approx(p * max(w * (1 + (1 / 60) / tau), 60 / 3600), rel=1e-6)


@settings(max_examples=20, deadline=None)
@given(hours, st.floats(1.0, 12.0))
def test_faster_gpu_takes_less_time(w, speed):
    slow = cost.estimate(cost.Workload(t4_hours=w), option(rate=0.0, spot=False), FAST)
    fast = cost.estimate(cost.Workload(t4_hours=w), option(rate=0.0, spot=False, speed=speed), FAST)
    assert fast.wall_hours.mean == pytest.approx(slow.wall_hours.mean / speed)


def test_rate_uncertainty_widens_the_spread_but_keeps_the_order():
    known = cost.estimate(cost.Workload(t4_hours=200), option(rate=0.02))
    unsure = cost.estimate(cost.Workload(t4_hours=200), option(rate=0.02, rate_cv=1.0))
    assert unsure.wall_hours.p90 - unsure.wall_hours.p50 > known.wall_hours.p90 - known.wall_hours.p50
    assert unsure.wall_hours.mean == pytest.approx(known.wall_hours.mean, rel=0.05)


def test_budget_probability():
    work = cost.Workload(t4_hours=72, trials=20, trial_cv=0.3)
    e = cost.estimate(work, option(), budget=15.76)
    assert 0.2 < e.p_over_budget < 0.8
    # The chance agrees with the quantiles of the same total: half the runs cost more than the P50,
    # a tenth more than the P90, all of them more than half the P50, none more than ten times the P90.
    budgets = (e.total_usd.p50 / 2, e.total_usd.p50, e.total_usd.p90, 10 * e.total_usd.p90)
    over = [cost.estimate(work, option(), budget=budget).p_over_budget for budget in budgets]
    assert over == [1.0, pytest.approx(0.5, abs=0.01), pytest.approx(0.1, abs=0.01), 0.0]
    with pytest.raises(UsageError, match="budget must be a positive"):
        cost.estimate(cost.Workload(t4_hours=72), option(), budget=0)


def _workload_for(trials, epochs, fraction):
    return cost.workload_from_trials(trials, epochs, 100 * fraction, 30)


@pytest.mark.parametrize("budget", [5.0, 40.0, 800.0])
def test_plan_fits_its_budget_and_is_derived_from_the_estimate(budget):
    p = cost.plan(budget, trials=50, epochs=20, seed=1, workload_for=_workload_for, option=option(),
                  assumptions=FAST)
    names = [s.name for s in p.stages]
    assert names == ["explore", "full", "refine"]
    explore, full, refine = p.stages
    assert explore.runs[0]["search.data_fraction"] == 0.25
    seeds = full.runs[0]["search.seeds"]  # one job runs the full searches, one per seed
    assert len(full.runs) == 1 and seeds == list(range(1, len(seeds) + 1)) and 3 <= len(seeds) <= 5
    # Each stage costs what `estimate` says its runs cost, not a share of the budget: twice the trials on a
    # quarter of the data, the full searches (seeds × the trials, one job), a quarter of the trials at twice
    # the epochs.
    n = full.runs[0]["search.max_trials"]
    assert explore.runs[0]["search.max_trials"] == 2 * n
    assert (refine.runs[0]["search.max_trials"], refine.runs[0]["search.epochs"]) == (max(1, n // 4), 40)
    alone = {name: cost.estimate(_workload_for(*size), option(), FAST).total_usd for name, size in
             {"explore": (2 * n, 20, 0.25), "full": (len(seeds) * n, 20, 1.0),
              "refine": (max(1, n // 4), 40, 1.0)}.items()}
    assert [s.mean_usd for s in p.stages] == pytest.approx([alone[s.name].mean * len(s.runs) for s in p.stages])
    # The reserve is the stages' P90 beyond their mean, and all of it at P90 fits the budget.
    at_p90 = sum(alone[s.name].p90 * len(s.runs) for s in p.stages)
    assert p.reserve_usd == pytest.approx(at_p90 - sum(s.mean_usd for s in p.stages))
    assert at_p90 <= budget and p.unallocated_usd == pytest.approx(budget - at_p90)
    if budget == 5.0:
        assert full.runs[0]["search.max_trials"] < 50
    if budget == 800.0:
        assert len(seeds) == 5 and p.unallocated_usd > 0


def test_plan_refuses_a_budget_below_one_trial():
    with pytest.raises(UsageError, match="does not cover the smallest plan"):
        cost.plan(0.01, trials=50, epochs=20, seed=1, workload_for=_workload_for, option=option(), assumptions=FAST)

"""The money: what a job has cost, what it will cost, and when to stop it. Pure functions, no I/O.

API for the instance (the agent calls it at every heartbeat, with its own clock):

    config = BudgetConfig.for_bundle(bundle, budget_record, tick_seconds=heartbeat)
    tick = budget.evaluate(ledger_entries, Progress.of(progress_json, epochs), config, fired_alerts, now,
                           extra_usd=bucket_charges)
    for alert in tick.alerts:            # new ones only; each fires once, in order
        bucket.add_event("alert", alert.message, alert.data(), once=alert.key)   # and the webhook
    if tick.stop != "none":              # "budget" | "deadline": final snapshot, group to 0, power off
        ...                              # tick.reason says why, in one line
    summary["money"] = tick.as_dict()    # spend, burn, projection, P(over), time left: status --json, dashboard

The ledger is the bucket's entries (`jobbucket.LedgerEntry`, or anything with launched_at, ended_at,
price_per_hour): each span is billed from the provider's launch time to its end (or now) at the price at
its launch, with the cloud's minimum and per-second after it; history is never re-priced. The bucket's
storage and requests (`storage_charge`, `request_charges`) come in as `extra_usd`. `fired_alerts` is the
set of `Alert.key`s already sent (`JobBucket.fired()`); keys carry
the budget or deadline they were computed against, so `resume --budget +USD` re-arms them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Literal, Mapping, Optional, Sequence

from nascloud import cost
from nascloud.errors import UsageError

DEFAULT_ALERTS = (0.5, 0.8, 1.0)
SHUTDOWN_SECONDS = 180.0  # a cloud's: final snapshot (the agent's SIGTERM path) + terminate, billed all the way
# The local provider's hosts are processes here: from the budget stop to the host's end (host.json) took
# 2 to 5 s, measured with tests/test_e2e_local.py's digits JOB capped at $0.90 at $36/h (file:// bucket,
# 2 cores, issue 25); 10 s leaves room for a bigger final snapshot. A cloud's 180 s would stop a rehearsal's
# small budget at its first check.
CLOUD_SHUTDOWN_SECONDS = {"local": 10.0}
P_OVER_SAMPLES = 1000  # enough for a percentage on a dashboard; a tick stays in milliseconds

Stop = Literal["none", "budget", "deadline"]


# ---- the ledger ------------------------------------------------------------------------------

def billed_seconds(launched_at: Optional[float], ended_at: Optional[float], now: float,
                   minimum_seconds: float) -> float:
    """Seconds the provider bills for one instance: from launch to its end (or now), at least the
    minimum, by the second after it. An intent whose launch never happened costs nothing."""
    if launched_at is None:
        return 0.0
    end = now if ended_at is None else ended_at
    return max(minimum_seconds, end - launched_at)


def span_cost(row: Any, now: float, minimum_seconds: float) -> float:
    """USD for one ledger row at the price recorded at its launch."""
    return row.price_per_hour * billed_seconds(row.launched_at, row.ended_at, now, minimum_seconds) / 3600


def ledger_total(rows: Iterable[Any], now: float, minimum_seconds: float) -> float:
    """The job's instance spend: the sum over its spans, each at its own launch price."""
    return sum(span_cost(row, now, minimum_seconds) for row in rows)


def request_charges(requests: Mapping[str, int], rates: Mapping[str, float]) -> float:
    """Bucket requests at the bucket's rates: class A (writes, lists) and class B (reads)."""
    return (requests.get("class_a", 0) / 1000 * rates.get("put_per_1000", 0.0)
            + requests.get("class_b", 0) / 1000 * rates.get("get_per_1000", 0.0))


def storage_charge(stored_bytes: int, seconds: float, rates: Mapping[str, float]) -> float:
    """Keeping `stored_bytes` in the bucket for `seconds`, at its per GB-month rate."""
    return stored_bytes / 1e9 * rates.get("storage_gb_month", 0.0) * seconds / 3600 / cost.HOURS_PER_MONTH


# ---- the backstop --------------------------------------------------------------------------------

# The launcher's backstop (README "When a boot fails") ends the groups this much after the budget left runs
# out at the groups' full price: the slack covers the gaps between a lost instance and its replacement,
# which make a healthy job's spend slower than the full price, so the governor's own stop comes first.
BACKSTOP_SLACK = 0.10
BACKSTOP_GRACE_SECONDS = 600.0


def backstop_at(now: float, left_usd: Optional[float], usd_per_hour: float, deadline_at: Optional[float] = None,
                grace_seconds: float = BACKSTOP_GRACE_SECONDS) -> Optional[float]:
    """When the groups' own engine sets them to 0 whatever their instances can do; None with neither a
    budget nor a deadline. A failed boot lives at least the billing minimum (scripts/bootstrap.sh), so a
    loop of them bills at most usd_per_hour: what it can spend is backstop_bound_usd."""
    limits = [deadline_at] if deadline_at is not None else []
    if left_usd is not None and usd_per_hour > 0:
        limits.append(now + max(left_usd, 0.0) / usd_per_hour * 3600 * (1 + BACKSTOP_SLACK))
    return min(limits) + grace_seconds if limits else None


def backstop_bound_usd(left_usd: float, usd_per_hour: float, minimum_seconds: float,
                       grace_seconds: float = BACKSTOP_GRACE_SECONDS) -> float:
    """The most a loop of failed boots that cannot end its own groups spends before the backstop: the
    group's price until then, and the billing minimum of the boot the backstop ends."""
    return max(left_usd, 0.0) * (1 + BACKSTOP_SLACK) + usd_per_hour * (grace_seconds + minimum_seconds) / 3600


def burn_rate(rows: Sequence[Any]) -> float:
    """USD per hour now: the running instances' launch prices. Between instances (a recovery in
    progress) the last one's price, since its replacement is about to be billed at a like price."""
    running = [r.price_per_hour for r in rows if r.launched_at is not None and r.ended_at is None]
    if running:
        return sum(running)
    launched = [r for r in rows if r.launched_at is not None]
    return launched[-1].price_per_hour if launched else 0.0


# ---- progress and projection -----------------------------------------------------------------

@dataclass(frozen=True)
class Progress:
    """What the agent reports in agent/progress.json, reduced to what a projection needs."""

    max_trials: int
    trials_done: int = 0
    trials_failed: int = 0
    trial_durations: tuple[float, ...] = ()
    running_epoch: Optional[int] = None  # epochs completed in the running trial; None: none running
    epochs: Optional[int] = None  # epochs per trial (the job's search.epochs)
    finished: bool = False
    best_score: Optional[float] = None

    @classmethod
    def of(cls, data: Optional[Mapping[str, Any]], epochs: Optional[int] = None,
           max_trials: int = 1) -> "Progress":
        """From progress.json (or {} before the agent's first report, with the job's max_trials)."""
        data = data or {}
        running = data.get("running") or None
        return cls(max_trials=int(data.get("max_trials") or max_trials),
                   trials_done=int(data.get("trials_done") or 0),
                   trials_failed=int(data.get("trials_failed") or 0),
                   trial_durations=tuple(float(d) for d in data.get("trial_durations") or () if d is not None),
                   running_epoch=int(running.get("epoch") or 0) if running else None,
                   epochs=epochs, finished=bool(data.get("finished")), best_score=data.get("best_score"))

    def remaining_trials(self) -> float:
        """Trials still to run; the running one counts by the fraction of its epochs left. Failed
        trials use up max_trials too (KerasTuner counts them)."""
        if self.finished:
            return 0.0
        left = max(0, self.max_trials - self.trials_done - self.trials_failed)
        if left and self.running_epoch is not None and self.epochs:
            left -= min(self.running_epoch, self.epochs) / self.epochs
        return float(left)


def remaining_hours(progress: Progress, trial_seconds_hint: Optional[float] = None) -> Optional[float]:
    """Compute time left: trials left × the mean trial so far (or the hint before any trial ends)."""
    left = progress.remaining_trials()
    if left == 0:
        return 0.0
    mean = statistics.fmean(progress.trial_durations) if progress.trial_durations else trial_seconds_hint
    return None if mean is None else left * mean / 3600


def p_over_budget(remaining_usd: float, hours: float, trials: float, trial_cv: float, price_per_hour: float,
                  interruptions_per_hour: float, interval_hours: Optional[float]) -> float:
    """P(the remaining work costs more than `remaining_usd`), from the cost model's Monte Carlo."""
    if remaining_usd <= 0:
        return 1.0
    if hours <= 0 or price_per_hour <= 0:
        return 0.0
    offer = cost.Offer(cloud="ledger", region="", zone="", instance_type="running", gpu="", gpu_count=1,
                       vcpus=0, memory_gib=0, on_demand=price_per_hour, spot=price_per_hour,
                       source="ledger", as_of="")
    option = cost.Option(offer=offer, spot=True, price_per_hour=price_per_hour, speed=1.0,
                         interruptions_per_hour=interruptions_per_hour,
                         # already billed: the running instance's minimum is in the ledger
                         billing=cost.Billing(minimum_hours=0.0))
    workload = cost.Workload(t4_hours=hours, trials=max(1, math.ceil(trials)), trial_cv=trial_cv)
    assumptions = cost.Assumptions(interval_hours=interval_hours, samples=P_OVER_SAMPLES)
    try:
        return cost.estimate(workload, option, assumptions, budget=remaining_usd).p_over_budget or 0.0
    except UsageError:  # the model says the work never finishes at this interruption rate: surely over
        return 1.0


# ---- configuration and validation ------------------------------------------------------------

def check_budget(value: Any, name: str = "--budget") -> float:
    """A budget is a positive, finite number of dollars."""
    try:
        usd = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number of dollars, e.g. 50, got {value!r}") from None
    if not math.isfinite(usd) or usd <= 0:
        raise UsageError(f"{name} must be a positive number of dollars, e.g. 50, got {value}")
    return usd


def check_thresholds(values: Iterable[Any], name: str = "budget.alerts") -> tuple[float, ...]:
    """Alert thresholds: positive fractions of the budget, increasing, no repeats (1.0 = all of it)."""
    numbers = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{name}: {value!r} is not a number; give fractions like 0.5,0.8,1.0") from None
        if not math.isfinite(number) or number <= 0:
            raise UsageError(f"{name}: {value} must be a positive fraction of the budget, e.g. 0.5,0.8,1.0")
        numbers.append(number)
    if numbers != sorted(set(numbers)):
        raise UsageError(f"{name}: thresholds must increase without repeats, e.g. 0.5,0.8,1.0; "
                         f"got {','.join(f'{n:g}' for n in numbers)}")
    return tuple(numbers)


def parse_budget_change(text: str, current: Optional[float]) -> float:
    """`resume --budget`: `+USD` adds to the current budget, `USD` sets a new one."""
    raw = text.strip().replace("$", "")
    if raw.startswith("+"):
        extra = check_budget(raw[1:], "--budget +USD")
        if current is None:
            raise UsageError(f"the job has no budget to add {text} to; give the new budget without a sign, e.g. "
                             f"--budget {extra:g}")
        return current + extra
    if raw.startswith("-"):
        raise UsageError(f"--budget must be positive: {text!r} would lower it; give the new budget without "
                         "a sign, e.g. --budget 20")
    return check_budget(raw)


@dataclass(frozen=True)
class BudgetConfig:
    budget_usd: Optional[float] = None
    alerts: tuple[float, ...] = DEFAULT_ALERTS  # fractions of the budget and of max_hours
    max_hours: Optional[float] = None
    started_at: float = 0.0  # the deadline runs from here (the job's creation)
    tick_seconds: float = 10.0  # the loop's next chance to act: the billing it cannot avoid
    shutdown_seconds: float = SHUTDOWN_SECONDS
    minimum_billed_seconds: float = field(kw_only=True)  # the cloud's, from billing.csv (the bundle's copy)
    interruptions_per_hour: float = 0.0  # for P(over budget); the offer's rate
    interval_hours: Optional[float] = None  # checkpoint interval, for P(over budget)
    trial_seconds_hint: Optional[float] = None  # a trial's time before any trial has finished

    def __post_init__(self) -> None:
        if self.budget_usd is not None:
            check_budget(self.budget_usd, "budget.usd")
        if self.max_hours is not None:
            check_budget(self.max_hours, "budget.max_hours")
        check_thresholds(self.alerts)

    @property
    def deadline_at(self) -> Optional[float]:
        return None if self.max_hours is None else self.started_at + self.max_hours * 3600

    @classmethod
    def for_bundle(cls, bundle: Any, budget: Mapping[str, Any], tick_seconds: float,
                   shutdown_seconds: Optional[float] = None) -> "BudgetConfig":
        """From the job's bundle (nascloud.bundle.Bundle) and the budget record in force (budget.json); the
        shutdown's seconds are its cloud's unless given."""
        spec = bundle.spec
        if shutdown_seconds is None:
            shutdown_seconds = CLOUD_SHUTDOWN_SECONDS.get(bundle.offer.cloud, SHUTDOWN_SECONDS)
        estimate = bundle.estimate or {}
        work = estimate.get("work_hours")  # pure training time on the offer's GPU
        return cls(budget_usd=budget.get("usd"), alerts=tuple(spec.budget.alerts), max_hours=budget.get("max_hours"),
                   started_at=bundle.created_at, tick_seconds=tick_seconds, shutdown_seconds=shutdown_seconds,
                   minimum_billed_seconds=bundle.billing_minimum_seconds,
                   interruptions_per_hour=spec.compute.interruptions_per_hour
                   or estimate.get("interruptions_per_hour") or 0.0,
                   interval_hours=bundle.interval_minutes / 60 if bundle.interval_minutes else None,
                   trial_seconds_hint=work * 3600 / spec.search.job_trials if work else None)


# ---- alerts and the tick ---------------------------------------------------------------------

@dataclass(frozen=True)
class Alert:
    key: str  # unique per alert and per budget/deadline: the record that it has fired
    kind: Literal["spend", "projection", "deadline"]
    message: str

    def data(self) -> dict:
        return {"key": self.key, "alert": self.kind}


@dataclass(frozen=True)
class Tick:
    spent_usd: float
    burn_usd_per_hour: float
    remaining_hours: Optional[float]  # compute time left at the current pace; None: not known yet
    projected_usd: Optional[float]  # spent + burn × remaining
    p_over: Optional[float]  # P(total > budget) from the cost model
    alerts: list[Alert] = field(default_factory=list)
    stop: Stop = "none"
    reason: str = ""

    def as_dict(self) -> dict:
        data = asdict(self)
        data["alerts"] = [a.message for a in self.alerts]
        return data


def _money(usd: float) -> str:
    return f"${usd:,.2f}"


def _hours(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"


def spend_alerts(spent: float, config: BudgetConfig, fired: Iterable[str]) -> list[Alert]:
    """Threshold alerts not fired yet, lowest first: a jump past several fires each of them, in order."""
    if config.budget_usd is None:
        return []
    fired = set(fired)
    budget = config.budget_usd
    out = []
    for fraction in config.alerts:
        key = f"spend:{fraction:g}@{budget:.2f}"
        if spent >= fraction * budget and key not in fired:
            # The share actually spent: a jump (a billing minimum, a late tick) lands past the threshold.
            out.append(Alert(key, "spend", f"{spent / budget:.0%} of the {_money(budget)} budget spent "
                                           f"({_money(spent)}; past the {fraction:.0%} alert)"))
    return out


def projection_alert(projected: Optional[float], config: BudgetConfig, fired: Iterable[str]) -> list[Alert]:
    budget = config.budget_usd
    if budget is None or projected is None or projected <= budget:
        return []
    key = f"projection@{budget:.2f}"
    if key in set(fired):
        return []
    return [Alert(key, "projection", f"at this rate the search will cost {_money(projected)}, "
                                     f"{_money(projected - budget)} over the {_money(budget)} budget")]


def deadline_alerts(now: float, remaining: Optional[float], config: BudgetConfig,
                    fired: Iterable[str]) -> list[Alert]:
    """The thresholds applied to max_hours, and a projection past the deadline."""
    deadline = config.deadline_at
    if deadline is None:
        return []
    fired = set(fired)
    limit = config.max_hours
    elapsed = (now - config.started_at) / 3600
    out = []
    for fraction in config.alerts:
        key = f"deadline:{fraction:g}@{limit:g}h"
        if elapsed >= fraction * limit and key not in fired:
            out.append(Alert(key, "deadline", f"{fraction:.0%} of the {_hours(limit)} deadline used "
                                              f"({_hours(elapsed)})"))
    key = f"deadline-projection@{limit:g}h"
    if remaining is not None and now + remaining * 3600 > deadline and key not in fired:
        finish = elapsed + remaining
        out.append(Alert(key, "deadline", f"at this pace the search needs {_hours(finish)}, "
                                          f"{_hours(finish - limit)} past the {_hours(limit)} deadline"))
    return out


def _reserve_reason(spent: float, at_stop: float, between: bool, config: BudgetConfig) -> str:
    """Why a budget stop came before the budget was spent: what is left is what the stop bills. The alerts
    not reached are named here rather than fired: an alert says that share is spent, and the shutdown's
    spend comes after the last check that could send one; the user hears this notice instead."""
    budget = config.budget_usd
    left = f"the {_money(budget - spent)} left is kept as the reserve" if spent < budget else "nothing is left"
    what = "a replacement's billing minimum and its shutdown" if between else "the next check and the shutdown"
    short = [f"{f:.0%}" for f in config.alerts if spent < f * budget]
    named = " and ".join([", ".join(short[:-1]), short[-1]] if len(short) > 1 else short)
    alerts = f"; stopped short of the {named} alert{'s' if len(short) > 1 else ''}" if short else ""
    # One decimal: 49.7 % is short of the 50 % alert, which a whole percent would hide.
    return (f"spent {_money(spent)} ({spent / budget:.1%}) of the {_money(budget)} budget: {left} for {what}, "
            f"which bill {_money(at_stop - spent)}{alerts}")


def stop_decision(rows: Sequence[Any], config: BudgetConfig, now: float, extra_usd: float = 0.0) -> tuple[Stop, str]:
    """Stop now if waiting for the next tick and then shutting down would pass the budget or deadline:
    the ledger is evaluated at now + tick + shutdown with the running spans still open, so billing
    minimums and per-second billing are counted exactly as the provider will. Between instances, the
    replacement's minimum counts too: a recovery is not launched into a budget that cannot pay for it."""
    horizon = config.tick_seconds + config.shutdown_seconds
    if config.budget_usd is not None:
        at_stop = ledger_total(rows, now + horizon, config.minimum_billed_seconds) + extra_usd
        between = bool(rows) and all(r.ended_at is not None for r in rows)
        if between:
            # Between instances: the replacement the loop is about to launch bills its minimum at once.
            at_stop += burn_rate(rows) * max(config.minimum_billed_seconds, horizon) / 3600
        if at_stop > config.budget_usd:
            return "budget", _reserve_reason(ledger_total(rows, now, config.minimum_billed_seconds) + extra_usd,
                                             at_stop, between, config)
    deadline = config.deadline_at
    if deadline is not None and now + horizon >= deadline:
        return "deadline", (f"{_hours((now - config.started_at) / 3600)} since launch, and the shutdown takes the "
                            f"rest of the {_hours(config.max_hours)} deadline")
    return "none", ""


def next_trial_cost(progress: Progress, config: BudgetConfig, price_per_hour: float,
                    guess: bool = False) -> tuple[float, float]:
    """(USD, seconds) a new instance bills to train one more trial and shut down: a trial as long as the mean
    so far, the cap's next check and the shutdown, and at least its billing minimum. Before any trial ends the
    trial counts 0 (what is certain: the cap's own reserve), or with `guess` the estimate's. What `launch` and
    `resume` ask the budget and deadline to leave room for before anything boots."""
    trial = (statistics.fmean(progress.trial_durations) if progress.trial_durations
             else config.trial_seconds_hint if guess else None)
    seconds = (trial or 0.0) + config.tick_seconds + config.shutdown_seconds
    return price_per_hour * max(seconds, config.minimum_billed_seconds) / 3600, seconds


def evaluate(rows: Sequence[Any], progress: Progress, config: BudgetConfig, fired_alerts: Iterable[str],
             now: float, extra_usd: float = 0.0) -> Tick:
    """One tick of the money: spend, burn, projection, P(over budget), new alerts, stop or not.
    `extra_usd`: charges beyond the instances (checkpoint_charges), added to the spend."""
    rows = list(rows)
    fired = set(fired_alerts)
    spent = ledger_total(rows, now, config.minimum_billed_seconds) + extra_usd
    burn = burn_rate(rows)
    remaining = remaining_hours(progress, config.trial_seconds_hint)
    projected = None if remaining is None else spent + burn * remaining
    p_over = None
    if config.budget_usd is not None and remaining is not None:
        durations = progress.trial_durations
        # The observed spread of trial times; before two trials, the cost model's middle guess.
        mean = statistics.fmean(durations) if durations else 0.0
        cv = statistics.pstdev(durations) / mean if len(durations) > 1 and mean > 0 else 0.3
        p_over = p_over_budget(config.budget_usd - spent, remaining, progress.remaining_trials(), cv, burn,
                               config.interruptions_per_hour, config.interval_hours)
    alerts = (spend_alerts(spent, config, fired) + projection_alert(projected, config, fired)
              + deadline_alerts(now, remaining, config, fired))
    stop, reason = stop_decision(rows, config, now, extra_usd) if not progress.finished else ("none", "")
    return Tick(spent, burn, remaining, projected, p_over, alerts, stop, reason)

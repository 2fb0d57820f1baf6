"""The cost model: pure functions over small records, no I/O (see README "Cost model and sources").

Work is GPU time on the reference GPU (T4), scaled by each GPU's speed, plus what does not scale with
the GPU: a per-trial overhead (model build, tracing, the trial-end snapshot) and a fixed per-job term
(boot, bootstrap, restore, export). On spot capacity, interruptions arrive at a rate per hour; each
costs a restart plus the work since the last checkpoint, and checkpoints cost time themselves.
`first_order` is the closed form and `simulate` the vectorised Monte Carlo (over interruptions, the
interruption rate's uncertainty and the spread of trial durations) of the same process: work is exposed
to interruptions, a restart is not (it adds wall time), and an interruption keeps the work up to the last
completed checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from nascloud.errors import UsageError

REFERENCE_GPU = "T4"
HOURS_PER_MONTH = 730.0  # the clouds' billing month
BOOT_DISK_GB = 100.0  # a deep-learning image needs about this much; the GCP launch asks for it
PUTS_PER_SNAPSHOT = 10  # manifest, HEAD and the changed blobs of a typical incremental snapshot
MAX_INTERRUPTIONS = 5000  # a run needing more is not a plan: the simulation refuses it


@dataclass(frozen=True)
class Offer:
    """One catalog row: a machine (with its GPUs) in one zone, as a launch needs it."""

    cloud: str
    region: str
    zone: str  # AWS: a zone ID (use1-az1), mapped to a name per account at launch; GCP: a zone name
    instance_type: str  # GCP: the machine type the accelerator attaches to
    gpu: str
    gpu_count: int
    vcpus: float
    memory_gib: float
    on_demand: float  # USD per hour, machine + accelerators
    spot: Optional[float]  # None where the provider sells no spot capacity
    source: str
    as_of: str
    accelerator_type: str = ""  # GCP's accelerator name (nvidia-tesla-t4); empty where built in

    def price(self, spot: bool) -> Optional[float]:
        return self.spot if spot else self.on_demand


@dataclass(frozen=True)
class Billing:
    """What a cloud charges besides the instance-hour (USD)."""

    minimum_hours: float  # the cloud's billing minimum (billing.csv)
    boot_disk_gb_month: float = 0.0
    public_ipv4_hour: float = 0.0
    storage_gb_month: float = 0.0
    put_per_1000: float = 0.0
    egress_gb: float = 0.0

    def instance_extras_per_hour(self, boot_disk_gb: float = BOOT_DISK_GB) -> float:
        """What an instance costs beside its own price while it runs: its boot disk and public IPv4."""
        return boot_disk_gb * self.boot_disk_gb_month / HOURS_PER_MONTH + self.public_ipv4_hour


@dataclass(frozen=True)
class Option:
    """An offer priced for one way of running it (spot or on-demand), ready for the cost model."""

    offer: Offer
    spot: bool
    price_per_hour: float
    speed: float  # training speed relative to the reference GPU
    interruptions_per_hour: float
    speed_basis: str = ""  # reference | seed | measured | estimated | this machine
    speed_source: str = ""
    rate_cv: float = 0.0  # uncertainty of the rate (coefficient of variation); 0: the rate is known
    rate_source: str = ""
    max_run_hours: Optional[float] = None  # GCP preemptible VMs are stopped within 24 h
    billing: Billing = field(kw_only=True)  # the cloud's minimum and extras (billing.csv)
    price_source: str = ""
    note: str = ""  # shown beside the option: "estimate only: ...", the GPUs it leaves idle
    launchable: bool = True  # `launch` runs on it (the other catalogs are for comparison)

    @property
    def kind(self) -> str:
        return "spot" if self.spot else "on-demand"

    def launch_record(self) -> dict:
        """What launch and bundle/job.json need of the chosen offer."""
        offer = self.offer
        aws = offer.cloud == "aws"
        return {
            "cloud": offer.cloud, "region": offer.region,
            "zone": None if aws or not offer.zone else offer.zone,
            "zone_id": offer.zone if aws else None,
            "instance_type": offer.instance_type, "accelerator_type": offer.accelerator_type or None,
            "gpu": offer.gpu if offer.gpu_count else None, "gpu_count": offer.gpu_count, "spot": self.spot,
            "price_per_hour": self.price_per_hour, "on_demand_price_per_hour": offer.on_demand,
            "extras_per_hour": self.billing.instance_extras_per_hour(),
            "source": self.price_source or offer.source, "as_of": offer.as_of,
        }


@dataclass(frozen=True)
class Workload:
    """The work of a search: pure training time on the reference GPU, and what it stores."""

    t4_hours: float
    trials: int = 1
    trial_cv: float = 0.0  # spread of one trial's duration (coefficient of variation)
    overhead_hours: float = 0.0  # per-trial overheads of all trials: machine time that no GPU speeds up
    epoch_t4_hours: float = 0.0  # one epoch on the T4: the agent checkpoints at epoch ends, never between
    job_cv: float = 0.0  # run-to-run spread of the whole job's speed (a shared or throttled machine)
    checkpoint_gb: float = 0.5  # one snapshot in the bucket
    keep: int = 3  # snapshots kept
    model_gb: float = 0.1  # the final model, downloaded once
    boot_disk_gb: float = BOOT_DISK_GB

    def __post_init__(self) -> None:
        if not self.t4_hours > 0 or not math.isfinite(self.t4_hours):
            raise UsageError(f"the work must be a positive number of GPU hours, got {self.t4_hours}")
        if self.trials < 1:
            raise UsageError(f"the number of trials must be at least 1, got {self.trials}")


def workload_from_trials(trials: int, epochs: int, seconds_per_epoch: float, overhead_seconds: float,
                         trial_cv: float = 0.3, job_cv: float = 0.0, **storage) -> Workload:
    """trials × epochs × seconds per epoch on the reference GPU, plus trials × the per-trial overhead (not
    scaled by the GPU). AutoKeras candidates differ in size, so one trial's time varies; 0.3 is a middle
    guess, made explicit."""
    return Workload(t4_hours=trials * epochs * seconds_per_epoch / 3600, trials=trials, trial_cv=trial_cv,
                    overhead_hours=trials * overhead_seconds / 3600, epoch_t4_hours=seconds_per_epoch / 3600,
                    job_cv=job_cv, **storage)


@dataclass(frozen=True)
class Assumptions:
    """The model's own terms. The defaults are cost-model.md's worked example; nascloud.estimating sets
    each from measurements (calibration, the job history, the benchmarks) and says where it came from."""

    restart_hours: float = 0.1  # preemption to training again: replacement, boot, bootstrap, restore
    checkpoint_hours: float = 1 / 60  # writing one snapshot
    job_hours: float = 0.0  # once per job: boot to training on the first instance, export, power-off
    interval_hours: Optional[float] = None  # None: Young/Daly's optimum for the offer's rate
    samples: int = 4000
    seed: int = 0


@dataclass(frozen=True)
class Quantiles:
    p50: float
    p90: float
    mean: float

    @classmethod
    def of(cls, values: np.ndarray) -> "Quantiles":
        ordered = np.sort(values)
        return cls(_percentile(ordered, 0.5), _percentile(ordered, 0.9), float(values.mean()))


def _percentile(ordered: np.ndarray, q: float) -> float:
    """np.percentile's default (linear) method, term for term, on sorted values: np.percentile itself
    imports numpy.ma (through np.unique), about 10 ms of every `nascloud estimate`."""
    if np.isnan(ordered[-1]):  # NaN sorts last; np.percentile's answer is NaN then
        return math.nan
    at = (len(ordered) - 1) * q
    low = math.floor(at)
    a, b = ordered[low], ordered[min(low + 1, len(ordered) - 1)]
    t, diff = at - low, b - a
    return float(b - diff * (1 - t) if t >= 0.5 else a + diff * t)


@dataclass(frozen=True)
class FirstOrder:
    wall_hours: float
    cost_usd: float
    interruptions: float


@dataclass(frozen=True)
class Estimate:
    option: Option
    work_hours: float  # machine time of the work on this option: its GPU's training, overheads, the fixed term
    interval_hours: float  # checkpoint interval used (inf: no periodic checkpoints)
    first_order: FirstOrder
    wall_hours: Quantiles
    cost_usd: Quantiles  # instance-hours × price, with billing minimums
    extras_usd: Quantiles  # boot disk, public IPv4, checkpoint storage and requests, model download
    total_usd: Quantiles  # cost + extras
    expected_preemptions: float
    p_over_budget: Optional[float]


def young_daly_interval(checkpoint_hours: float, rate_per_hour: float) -> float:
    """The checkpoint interval that minimises expected waste: Daly (2006)'s refinement of Young (1974)'s
    sqrt(2·δ·M), M the mean time between interruptions. Infinite (never) when nothing interrupts."""
    if rate_per_hour <= 0:
        return math.inf
    mtbf, delta = 1 / rate_per_hour, checkpoint_hours
    if delta >= 2 * mtbf:
        return mtbf
    ratio = delta / (2 * mtbf)
    return math.sqrt(2 * delta * mtbf) * (1 + math.sqrt(ratio) / 3 + ratio / 9) - delta


def checkpoint_interval(checkpoint_hours: float, option: Option, workload: Workload) -> float:
    """Young/Daly's optimum, but never shorter than one epoch on the option's GPU: the agent checkpoints
    at epoch ends, so a shorter interval is one epoch in practice."""
    optimum = young_daly_interval(checkpoint_hours, option.interruptions_per_hour)
    return max(optimum, workload.epoch_t4_hours / option.speed)


def first_order(work_hours: float, price: float, rate: float, restart: float, delta: float,
                interval: float, minimum: float = 0.0) -> FirstOrder:
    """The closed form of what `simulate` draws. The work, checkpoint writes included, is n = W/τ periods
    of P = τ + δ; a period interrupted at rate λ is redone from its start, so it takes (e^{λP} − 1)/λ of
    exposed time and e^{λP} − 1 interruptions on average; each interruption adds R of wall time. Without
    periodic checkpoints the whole work is one period. cost ≈ p·max(T, m·(N + 1)): each of the N + 1
    instances is billed at least its minimum m."""
    periodic = math.isfinite(interval)
    period, periods = (interval + delta, work_hours / interval) if periodic else (work_hours, 1.0)
    if rate <= 0:
        exposed, interruptions = periods * period, 0.0
    else:
        # (e^x − 1)/x with x = λP, kept at 1 where x underflows (a rate of 5e-324 is no interruption)
        x = rate * period
        stretch = 1.0 if x == 0 else math.expm1(x) / x if x < 700 else math.inf
        exposed, interruptions = periods * period * stretch, periods * x * stretch
    wall = exposed + interruptions * restart
    return FirstOrder(wall_hours=wall, cost_usd=price * max(wall, minimum * (interruptions + 1)),
                      interruptions=interruptions)


def simulate(work_hours: float, option: Option, interval: float, trials: int, trial_cv: float,
             assumptions: Assumptions, job_cv: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Monte Carlo of one search on one option: per sample, the wall hours, billed instance cost and
    number of interruptions. Vectorised over samples; loops only over interruption rounds."""
    rng = np.random.default_rng(assumptions.seed)
    n = assumptions.samples
    # A sum of `trials` gamma-distributed trial times (mean w/trials, CV c) is gamma(trials/c², w·c²/trials).
    if trial_cv > 1e-6:  # below this the spread is nil and the gamma shape overflows
        shape = trials / trial_cv**2
        need = rng.gamma(shape, work_hours / shape, n)
    else:
        need = np.full(n, work_hours)
    if job_cv > 1e-6:  # the whole run faster or slower than its mean (mean 1: the closed form is unchanged)
        shape = 1 / job_cv**2
        need = need * rng.gamma(shape, 1 / shape, n)
    periodic = math.isfinite(interval)
    period = interval + assumptions.checkpoint_hours if periodic else math.inf
    remaining = need * (period / interval if periodic else 1.0)
    rate = option.interruptions_per_hour
    if option.rate_cv > 1e-6 and rate > 0:  # the rate itself is uncertain: gamma with the same mean
        shape = 1 / option.rate_cv**2
        rates = rng.gamma(shape, rate / shape, n)
    else:
        rates = np.full(n, rate)
    wall = np.zeros(n)
    interruptions = np.zeros(n)
    active = np.arange(n)
    for _ in range(MAX_INTERRUPTIONS):
        if active.size == 0:
            break
        with np.errstate(divide="ignore", over="ignore"):  # rate 0 (or tiny): no interruption, inf
            segment = rng.exponential(1.0, active.size) / rates[active]
        if option.max_run_hours:
            segment = np.minimum(segment, option.max_run_hours)
        left = remaining[active]
        finished = segment >= left
        wall[active[finished]] += left[finished]
        stopped, lived = active[~finished], segment[~finished]
        # Work survives up to the last completed checkpoint; the rest is redone after a restart.
        saved = np.floor(lived / period) * period if periodic else np.zeros_like(lived)
        remaining[stopped] -= saved
        wall[stopped] += lived + assumptions.restart_hours
        interruptions[stopped] += 1
        active = stopped
    else:
        raise UsageError(f"{option.offer.instance_type}: more than {MAX_INTERRUPTIONS} interruptions in a run; "
                         "the work does not finish at this interruption rate")
    cost = option.price_per_hour * np.maximum(wall, option.billing.minimum_hours * (interruptions + 1))
    return wall, cost, interruptions


def extras(option: Option, workload: Workload, wall: np.ndarray, interval: float) -> np.ndarray:
    """Billing beyond the instance-hour: boot disk and public IPv4 while it runs, checkpoints kept in the
    bucket and the requests that write them, and downloading the final model once."""
    bill = option.billing
    per_hour = (bill.instance_extras_per_hour(workload.boot_disk_gb)
                + workload.checkpoint_gb * workload.keep * bill.storage_gb_month / HOURS_PER_MONTH)
    snapshots = workload.trials + (wall / interval if math.isfinite(interval) else 0.0)
    requests = snapshots * PUTS_PER_SNAPSHOT / 1000 * bill.put_per_1000
    return per_hour * wall + requests + workload.model_gb * bill.egress_gb


def estimate(workload: Workload, option: Option, assumptions: Assumptions = Assumptions(),
             budget: Optional[float] = None) -> Estimate:
    if budget is not None and not budget > 0:
        raise UsageError(f"the budget must be a positive number of dollars, got {budget}")
    work = workload.t4_hours / option.speed + workload.overhead_hours + assumptions.job_hours
    interval = assumptions.interval_hours or checkpoint_interval(assumptions.checkpoint_hours, option, workload)
    wall, cost, interruptions = simulate(work, option, interval, workload.trials, workload.trial_cv, assumptions,
                                         workload.job_cv)
    check = first_order(work, option.price_per_hour, option.interruptions_per_hour, assumptions.restart_hours,
                        assumptions.checkpoint_hours, interval, option.billing.minimum_hours)
    total = cost + extras(option, workload, wall, interval)
    return Estimate(
        option=option, work_hours=work, interval_hours=interval, first_order=check,
        wall_hours=Quantiles.of(wall), cost_usd=Quantiles.of(cost), extras_usd=Quantiles.of(total - cost),
        total_usd=Quantiles.of(total), expected_preemptions=float(interruptions.mean()),
        p_over_budget=None if budget is None else float((total > budget).mean()),
    )


def rank(estimates: list[Estimate]) -> list[Estimate]:
    """Cheapest expected total first; faster breaks ties."""
    return sorted(estimates, key=lambda e: (e.total_usd.mean, e.wall_hours.mean))


# ---- plan: a budget split into stages the way careful practitioners spend one ------------------

@dataclass(frozen=True)
class Stage:
    name: str
    buys: str
    runs: list[dict]  # one dict of job-file overrides (dotted paths) per run
    estimate: Estimate  # of one run

    @property
    def mean_usd(self) -> float:
        return self.estimate.total_usd.mean * len(self.runs)

    @property
    def spread_usd(self) -> float:
        """What the runs may cost beyond their mean at P90: held back in the reserve."""
        return (self.estimate.total_usd.p90 - self.estimate.total_usd.mean) * len(self.runs)


@dataclass(frozen=True)
class Plan:
    budget: float
    option: Option
    stages: list[Stage]
    reserve_usd: float
    unallocated_usd: float


EXPLORE_FRACTION = 0.25  # explore on a quarter of the data: four times the candidates per dollar
SEEDS = (3, 5)  # full searches with different seeds: enough to tell a good space from one lucky seed


def plan(budget: float, trials: int, epochs: int, seed: int, workload_for, option: Option,
         assumptions: Assumptions = Assumptions(), data_fraction: float = 1.0) -> Plan:
    """Stages sized from estimates, not fixed shares: explore twice as many candidates on a quarter of
    the data, three full searches with different seeds (one job: search.seeds), refine the winner with twice
    the epochs, and hold back the stages' P90-minus-mean spread as the reserve. A tight budget gets fewer trials per
    search than the job's max_trials; a loose one gets up to five seeds, and says what is left.

    `workload_for(trials, epochs, data_fraction) -> Workload` turns a stage's size into work."""
    if not budget > 0:
        raise UsageError(f"the budget must be a positive number of dollars, got {budget}")
    explore_fraction = min(EXPLORE_FRACTION, data_fraction)

    def stages_for(n: int, seeds: int) -> list[Stage]:
        def stage(name: str, buys: str, runs: list[dict], n_trials: int, n_epochs: int, fraction: float) -> Stage:
            work = workload_for(n_trials, n_epochs, fraction)
            return Stage(name, buys, runs, estimate(work, option, assumptions))

        refine_trials = max(1, n // 4)
        return [
            stage("explore", f"{2 * n} candidates on {explore_fraction:.0%} of the data: which block types and "
                  "depths deserve full training", [{"search.data_fraction": explore_fraction,
                                                    "search.max_trials": 2 * n, "search.seed": seed}],
                  2 * n, epochs, explore_fraction),
            stage("full", f"{seeds} searches of {n} trials on all the data with different seeds, in one job: a "
                  "winner that is not one seed's luck",
                  [{"search.max_trials": n, "search.seeds": [seed + i for i in range(seeds)]}],
                  seeds * n, epochs, data_fraction),
            stage("refine", f"{refine_trials} trial(s) at {2 * epochs} epochs from the best full search's space: "
                  "the winner's score with longer training", [{"search.max_trials": refine_trials,
                                                               "search.epochs": 2 * epochs, "search.seed": seed}],
                  refine_trials, 2 * epochs, data_fraction),
        ]

    def needed(stages: list[Stage]) -> float:
        return sum(s.mean_usd + s.spread_usd for s in stages)

    seeds, most_seeds = SEEDS
    stages = stages_for(trials, seeds)
    n = trials
    # Cost grows about linearly with the trials: scale down, then step until the P90 of all fits.
    while needed(stages) > budget and n > 1:
        n = max(1, min(n - 1, int(n * budget / needed(stages))))
        stages = stages_for(n, seeds)
    if needed(stages) > budget:
        raise UsageError(
            f"a budget of ${budget:.2f} does not cover the smallest plan (one trial per search: about "
            f"${needed(stages):.2f} at P90 on {option.offer.instance_type}); raise --budget or lower the epochs")
    while n == trials and seeds < most_seeds and needed(more := stages_for(n, seeds + 1)) <= budget:
        stages, seeds = more, seeds + 1
    reserve = sum(s.spread_usd for s in stages)
    spent = sum(s.mean_usd for s in stages) + reserve
    return Plan(budget=budget, option=option, stages=stages, reserve_usd=reserve,
                unallocated_usd=max(0.0, budget - spent))

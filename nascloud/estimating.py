"""From a job file and flags to ranked estimates and a staged plan: the glue between the job schema, the
catalog, calibration records and the pure cost model. No printing; records and JSON-ready dicts out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from nascloud import cost
from nascloud.errors import UsageError
from nascloud.job import JobSpec, SearchSection
from nascloud.paths import nascloud_home
from nascloud.pricing.catalog import Catalog

# When neither the job, a flag nor a calibration says how long an epoch takes on the T4: about 500
# samples a second for a mid-sized AutoKeras CNN on small images (a guess, said so in the output), or
# a minute an epoch when even the number of samples is unknown.
GUESS_SECONDS_PER_SAMPLE = 0.002
GUESS_SECONDS_PER_EPOCH = 60.0
KNOWN_SAMPLES = {"sklearn:digits": 1797, "sklearn:wine": 178, "sklearn:breast_cancer": 569}
CALIBRATION_FIELDS = ("seconds_per_epoch", "seconds_per_sample", "samples", "gpu", "measured_at")


@dataclass(frozen=True)
class ResolvedWorkload:
    workload: cost.Workload
    description: str
    seconds_per_epoch_basis: Optional[str]  # given | job file | calibration | guess; None for --hours
    notes: tuple[str, ...] = ()
    trials: int = 1
    epochs: int = 1
    seconds_per_epoch: Optional[float] = None  # on the reference GPU, for the job's full data
    overhead_seconds: float = 0.0
    data_fraction: float = 1.0

    def for_stage(self, trials: int, epochs: int, data_fraction: float) -> cost.Workload:
        """The work of a differently sized run of the same search (plan's stages)."""
        spe = self.seconds_per_epoch * data_fraction / self.data_fraction
        return cost.workload_from_trials(trials, epochs, spe, self.overhead_seconds)


def calibration_path(job_name: str) -> Path:
    return nascloud_home() / "calibrations" / f"{job_name}.json"


def read_calibration(job_name: str) -> Optional[dict]:
    """The record `nascloud calibrate` wrote for this job, if any:
    {"seconds_per_epoch", "seconds_per_sample", "samples", "gpu", "measured_at"}."""
    path = calibration_path(job_name)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UsageError(f"calibration record {path} is not readable JSON; run `nascloud calibrate` again "
                         "or delete it") from None
    missing = [k for k in CALIBRATION_FIELDS if k not in record] if isinstance(record, dict) else CALIBRATION_FIELDS
    if missing:
        raise UsageError(f"calibration record {path} lacks {', '.join(missing)}; run `nascloud calibrate` again")
    return record


def resolve_workload(spec: Optional[JobSpec], catalog: Catalog, hours: Optional[float] = None,
                     gpu: Optional[str] = None, trials: Optional[int] = None, epochs: Optional[int] = None,
                     samples: Optional[int] = None, seconds_per_epoch: Optional[float] = None) -> ResolvedWorkload:
    """The work in T4-hours: `hours` on `gpu` (T4 when no GPU is named), or trials × epochs × time per
    epoch from flags, then the job file, then a calibration record, then a stated guess. Values are
    checked by the caller (the job schema; the CLI checks its flags by the same rules)."""
    counts_given = any(v is not None for v in (trials, epochs, samples, seconds_per_epoch))
    if hours is not None:
        if counts_given:
            raise UsageError("give either --hours or a workload (--trials/--epochs/--samples/--seconds-per-epoch), "
                             "not both")
        speed = catalog.speed(gpu).speed if gpu else 1.0
        return ResolvedWorkload(cost.Workload(t4_hours=hours * speed),
                                f"{hours:g} h of training on {gpu or cost.REFERENCE_GPU}", None)
    if spec is None and not counts_given:
        raise UsageError("nothing to estimate: give --hours H, a workload (--trials N --epochs E "
                         "--seconds-per-epoch X) or a job file")
    search = spec.search if spec else SearchSection()
    trials = trials or search.max_trials
    epochs = epochs or search.epochs
    notes = []
    calibration = read_calibration(spec.name) if spec and seconds_per_epoch is None and search.seconds_per_epoch is None else None
    samples = samples or search.samples or (calibration or {}).get("samples") or KNOWN_SAMPLES.get(search.data)
    samples_used = samples * search.data_fraction if samples else None
    if seconds_per_epoch is not None:
        spe, basis = seconds_per_epoch, "given"
    elif search.seconds_per_epoch is not None:
        spe, basis = search.seconds_per_epoch, "job file"
    elif calibration is not None:
        basis = "calibration"
        measured = calibration.get("seconds_per_sample")
        spe = measured * samples_used if measured and samples_used else calibration["seconds_per_epoch"]
        gpu_measured = calibration.get("gpu")
        if gpu_measured in catalog.gpus:
            spe *= catalog.gpus[gpu_measured].speed
            notes.append(f"seconds per epoch from the calibration on {gpu_measured} "
                         f"({calibration['measured_at']}), scaled to the T4")
        else:
            notes.append(f"seconds per epoch from the calibration on {gpu_measured or 'this machine'} "
                         f"({calibration['measured_at']}), taken as T4 time (no speed figure for it)")
    else:
        basis = "guess"
        spe = samples_used * GUESS_SECONDS_PER_SAMPLE if samples_used else GUESS_SECONDS_PER_EPOCH
        how = (f"{GUESS_SECONDS_PER_SAMPLE * 1000:g} ms per sample" if samples_used
               else f"{GUESS_SECONDS_PER_EPOCH:g} s per epoch")
        fix = f"run `nascloud calibrate {spec.name}`" if spec else "give --seconds-per-epoch"
        notes.append(f"seconds per epoch is a guess ({how} on a T4); {fix} for a measured figure")
    workload = cost.workload_from_trials(trials, epochs, spe, search.trial_overhead_seconds,
                                         keep=spec.checkpoint.keep if spec else 3)
    sample_text = f" × {samples_used:g} samples" if samples_used else ""
    description = (f"{trials} trials × {epochs} epochs{sample_text} at {spe:.3g} s/epoch on a T4 "
                   f"(+{search.trial_overhead_seconds:g} s per trial) = {workload.t4_hours:.3g} T4-hours")
    return ResolvedWorkload(workload, description, basis, tuple(notes), trials=trials, epochs=epochs,
                            seconds_per_epoch=spe, overhead_seconds=search.trial_overhead_seconds,
                            data_fraction=search.data_fraction)


def options_for(catalog: Catalog, gpu: Optional[str] = None, cloud: Optional[str] = None,
                region: Optional[str] = None, spot: Optional[bool] = None, price_per_hour: Optional[float] = None,
                interruptions_per_hour: Optional[float] = None, preemptible: bool = False) -> list[cost.Option]:
    """Every way to run on the matching offers (spot and on-demand when `spot` is None), the cheapest
    zone of each instance type only: zones differ in spot price, not in anything the model sees."""
    kinds = (True, False) if spot is None else (spot,)
    best: dict[tuple, cost.Option] = {}
    for offer in catalog.select(gpu=gpu, cloud=cloud, region=region):
        for kind in kinds:
            option = catalog.option(offer, kind, price_per_hour, interruptions_per_hour, preemptible)
            key = (offer.cloud, offer.region, offer.instance_type, offer.gpu, kind)
            if option and (key not in best or option.price_per_hour < best[key].price_per_hour):
                best[key] = option
    if not best:
        raise UsageError(f"no {'spot' if spot else 'on-demand'} offer for {gpu or 'any GPU'} on {cloud or 'any cloud'}; "
                         f"try {'--on-demand' if spot else '--spot'} (see `nascloud prices`)")
    return list(best.values())


@dataclass(frozen=True)
class Ranking:
    estimates: list[cost.Estimate]
    skipped: list[str] = field(default_factory=list)  # options that never finish, with why


def rank_options(workload: cost.Workload, options: list[cost.Option], assumptions: cost.Assumptions,
                 budget: Optional[float] = None) -> Ranking:
    estimates, skipped = [], []
    for option in options:
        try:
            estimates.append(cost.estimate(workload, option, assumptions, budget))
        except UsageError as error:  # this option never finishes the work; the others may
            skipped.append(f"{option.offer.cloud} {option.offer.instance_type} {option.kind}: {error}")
    if not estimates:
        raise UsageError(f"no option finishes the work: {skipped[0]}")
    return Ranking(cost.rank(estimates), skipped)


def assumptions_for(checkpoint_minutes: Optional[float], spec: Optional[JobSpec]) -> cost.Assumptions:
    if checkpoint_minutes is None and spec and spec.checkpoint.interval_minutes != "auto":
        checkpoint_minutes = spec.checkpoint.interval_minutes
    return cost.Assumptions(interval_hours=checkpoint_minutes / 60 if checkpoint_minutes else None)


# ---- JSON shapes (the CLI's --json, the launch record's estimate) ------------------------------

def _q(q: cost.Quantiles, digits: int) -> dict:
    return {"p50": round(q.p50, digits), "p90": round(q.p90, digits), "mean": round(q.mean, digits)}


def estimate_json(e: cost.Estimate) -> dict:
    o, offer = e.option, e.option.offer
    return {
        "cloud": offer.cloud, "region": offer.region, "zone": offer.zone, "instance_type": offer.instance_type,
        "accelerator_type": offer.accelerator_type or None, "gpu": offer.gpu, "gpu_count": offer.gpu_count,
        "spot": o.spot, "price_per_hour": round(o.price_per_hour, 6), "price_source": o.price_source,
        "as_of": offer.as_of, "speed_vs_t4": o.speed, "work_hours": round(e.work_hours, 4),
        "wall_hours": _q(e.wall_hours, 3), "cost_usd": _q(e.cost_usd, 2), "extras_usd": _q(e.extras_usd, 2),
        "total_usd": _q(e.total_usd, 2), "expected_preemptions": round(e.expected_preemptions, 3),
        "p_over_budget": None if e.p_over_budget is None else round(e.p_over_budget, 4),
        "interruptions_per_hour": o.interruptions_per_hour, "interruption_source": o.rate_source,
        "checkpoint_interval_minutes": None if not math.isfinite(e.interval_hours) else round(e.interval_hours * 60, 1),
        "first_order": {"wall_hours": round(e.first_order.wall_hours, 3), "cost_usd": round(e.first_order.cost_usd, 2),
                        "preemptions": round(e.first_order.interruptions, 3)},
    }


def workload_json(resolved: ResolvedWorkload) -> dict:
    return {"t4_hours": round(resolved.workload.t4_hours, 4), "description": resolved.description,
            "seconds_per_epoch_basis": resolved.seconds_per_epoch_basis, "notes": list(resolved.notes)}


def plan_json(p: cost.Plan) -> dict:
    return {
        "budget_usd": p.budget, "option": p.option.launch_record(),
        "stages": [{"name": s.name, "buys": s.buys, "runs": s.runs, "cost_usd": round(s.mean_usd, 2),
                    "cost_p90_usd": round(s.estimate.total_usd.p90 * len(s.runs), 2),
                    "wall_hours_per_run": _q(s.estimate.wall_hours, 2)} for s in p.stages],
        "reserve_usd": round(p.reserve_usd, 2), "unallocated_usd": round(p.unallocated_usd, 2),
    }


def estimate_for_offer(spec: JobSpec, record: dict, catalog: Optional[Catalog] = None) -> tuple[dict, float]:
    """For launch: the estimate of `spec` on the chosen offer record (Option.launch_record()'s shape, or
    the local provider's record) and the checkpoint interval in minutes the agent should use."""
    from nascloud.pricing import load_catalog

    catalog = catalog or load_catalog()
    resolved = resolve_workload(spec, catalog)
    gpu = record.get("gpu")
    offer = cost.Offer(cloud=record["cloud"], region=record.get("region") or "", zone=record.get("zone") or
                       record.get("zone_id") or "", instance_type=record["instance_type"], gpu=gpu or "none",
                       gpu_count=record.get("gpu_count") or 0, vcpus=0, memory_gib=0,
                       on_demand=record.get("on_demand_price_per_hour", record["price_per_hour"]),
                       spot=record["price_per_hour"], source=record.get("source", ""), as_of=record.get("as_of", ""))
    spot = bool(record.get("spot"))
    rate_given = spec.compute.interruptions_per_hour
    known = catalog.rates.get("on-demand" if not spot else f"{offer.cloud}-{spec.compute.provisioning}")
    rate = rate_given if rate_given is not None else (known.per_hour if known else 0.0)
    option = cost.Option(offer=offer, spot=spot, price_per_hour=record["price_per_hour"],
                         speed=catalog.gpus[gpu].speed if gpu in catalog.gpus else 1.0,
                         interruptions_per_hour=rate, rate_cv=known.cv if known and rate_given is None else 0.0,
                         max_run_hours=known.max_run_hours if known else None,
                         billing=catalog.billing_for(offer.cloud, spot))
    assumptions = assumptions_for(None, spec)
    e = cost.estimate(resolved.workload, option, assumptions, spec.budget.usd)
    interval = e.interval_hours if math.isfinite(e.interval_hours) else 0.5  # on-demand: a trial-end cadence
    return estimate_json(e) | {"workload": workload_json(resolved)}, interval * 60

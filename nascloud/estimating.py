"""From a job file and flags to ranked estimates and a staged plan: the glue between the job schema, the
catalog, calibration records and the pure cost model. No printing; records and JSON-ready dicts out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from nascloud import cost, history
from nascloud.errors import UsageError
from nascloud.hints import command
from nascloud.paths import nascloud_home
from nascloud.pricing.catalog import Catalog

if TYPE_CHECKING:  # the job's schema (pydantic, ~70 ms) is imported where a workload is read from it, not by --hours
    from nascloud.job import JobSpec

# When neither the job, a flag nor a calibration says how long an epoch takes on the T4: about 500
# samples a second for a mid-sized AutoKeras CNN on small images (a guess, said so in the output), or
# a minute an epoch when even the number of samples is unknown.
GUESS_SECONDS_PER_SAMPLE = 0.002
GUESS_SECONDS_PER_EPOCH = 60.0
KNOWN_SAMPLES = {"sklearn:digits": 1797, "sklearn:wine": 178, "sklearn:breast_cancer": 569}
CALIBRATION_FIELDS = ("seconds_per_epoch", "seconds_per_sample", "samples", "gpu", "measured_at")
LOCAL_BUCKET_SCHEMES = {"aws": "s3", "gcp": "gs"}  # where a cloud's job keeps its snapshots; others: s3


@dataclass(frozen=True)
class Term:
    """One of the model's own terms with where it came from (shown in --json and as a note)."""

    value: float  # seconds; a ratio for job_cv
    basis: str  # given | job file | history | calibration | default
    source: str

    def json(self) -> dict:
        return {"value": round(self.value, 4), "basis": self.basis, "source": self.source}


@dataclass(frozen=True)
class ResolvedWorkload:
    workload: cost.Workload
    description: str
    seconds_per_epoch_basis: Optional[str]  # given | job file | history | calibration | guess; None for --hours
    notes: tuple[str, ...] = ()
    trials: int = 1  # per search: the job runs one search per seed
    epochs: int = 1
    seconds_per_epoch: Optional[float] = None  # on the reference GPU, for the job's full data
    overhead_seconds: float = 0.0
    data_fraction: float = 1.0
    terms: dict = field(default_factory=dict)  # name -> Term: seconds_per_epoch, trial_overhead, and the
    # job-level terms the history measured (job, restart, checkpoint), used by assumptions_for
    keep: int = 3
    records: int = 0  # the similar jobs' history records the estimate rests on

    def for_stage(self, trials: int, epochs: int, data_fraction: float) -> cost.Workload:
        """The work of a differently sized run of the same search (plan's stages)."""
        spe = self.seconds_per_epoch * data_fraction / self.data_fraction
        return cost.workload_from_trials(trials, epochs, spe, self.overhead_seconds, job_cv=self.workload.job_cv,
                                         keep=self.keep)


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
        raise UsageError(f"calibration record {path} is not readable JSON; run {command('calibrate', 'JOB.yaml')} "
                         "again or delete it") from None
    missing = [k for k in CALIBRATION_FIELDS if k not in record] if isinstance(record, dict) else CALIBRATION_FIELDS
    if missing:
        raise UsageError(f"calibration record {path} lacks {', '.join(missing)}; run "
                         f"{command('calibrate', 'JOB.yaml')} again")
    return record


def _when(measured_at) -> str:
    from nascloud.formats import moment

    return moment(measured_at) if isinstance(measured_at, (int, float)) else str(measured_at)


def resolve_workload(spec: Optional[JobSpec], catalog: Catalog, hours: Optional[float] = None,
                     gpu: Optional[str] = None, trials: Optional[int] = None, epochs: Optional[int] = None,
                     samples: Optional[int] = None, seconds_per_epoch: Optional[float] = None,
                     histories: Optional[list] = None, cloud: str = "local") -> ResolvedWorkload:
    """The work: `hours` on `gpu` (T4 when no GPU is named), or trials × (epochs × seconds per epoch on a
    T4 + a per-trial overhead). Seconds per epoch from flags, then the job file, then the history of
    similar jobs, then a calibration record, then a stated guess; the overhead from the job file, the
    history, the calibration, then the catalog's measured default. Values are checked by the caller."""
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
    from nascloud.job import SearchSection

    search = spec.search if spec else SearchSection()
    trials = trials or search.max_trials
    epochs = epochs or search.epochs
    notes = []
    calibration = read_calibration(spec.name) if spec else None
    # On the local provider the host's other work slows training: what the calibration and the history
    # measured is taken back to an idle machine by their own load, then to the load now. Sampling the load
    # takes a second, and only measured figures are scaled by it: a guess does without.
    local = cloud == "local"
    scaled = local and bool(calibration or histories)
    load = history.host_load_now() if scaled else None
    now = history.slowdown(load, own=False) if scaled else 1.0
    if local and calibration and "host_load" in calibration:
        calibration = _scaled(calibration, 1 / history.slowdown(calibration["host_load"], own=True))
    learned = history.terms(histories or [], (calibration or {}).get("in_trial_overhead_seconds", 0.0),
                            default_job_term(catalog, cloud, setup_term(calibration)).value, idle=local)
    learned = {k: {**v, "value": v["value"] * (now if k in SLOWED else 1.0)} for k, v in learned.items()}
    calibration = _scaled(calibration, now) if calibration else None
    setup = setup_term(calibration)
    samples = samples or search.samples or (calibration or {}).get("samples") or KNOWN_SAMPLES.get(search.data)
    samples_used = samples * search.data_fraction if samples else None
    from_history = f"the history of {len(histories or [])} similar job(s)"
    if seconds_per_epoch is not None:
        spe, basis, source = seconds_per_epoch, "given", "--seconds-per-epoch"
    elif search.seconds_per_epoch is not None:
        spe, basis, source = search.seconds_per_epoch, "job file", "search.seconds_per_epoch"
    elif "seconds_per_epoch" in learned:
        spe, basis, source = learned["seconds_per_epoch"]["value"] * search.data_fraction, "history", from_history
        notes.append(f"seconds per epoch, per-trial overhead and the job's fixed term from {from_history} "
                     f"({command('history', 'JOB.yaml')} shows how close their estimates were)")
    elif calibration is not None:
        basis = "calibration"
        measured = calibration.get("seconds_per_sample")
        spe = measured * samples_used if measured and samples_used else calibration["seconds_per_epoch"]
        gpu_measured = calibration.get("gpu")
        when = _when(calibration["measured_at"])
        if gpu_measured in catalog.gpus:
            spe *= catalog.gpus[gpu_measured].speed
            source = f"nascloud calibrate on {gpu_measured} ({when}), scaled to the T4"
        else:
            source = (f"nascloud calibrate on {gpu_measured or 'this machine'} ({when}), taken as T4 time "
                      "(no speed figure for it)")
        notes.append(f"seconds per epoch from {source}")
    else:
        basis = "guess"
        spe = samples_used * GUESS_SECONDS_PER_SAMPLE if samples_used else GUESS_SECONDS_PER_EPOCH
        how = (f"{GUESS_SECONDS_PER_SAMPLE * 1000:g} ms per sample" if samples_used
               else f"{GUESS_SECONDS_PER_EPOCH:g} s per epoch")
        fix = f"run {command('calibrate', 'JOB.yaml')}" if spec else "give --seconds-per-epoch"
        source = f"a guess ({how} on a T4)"
        notes.append(f"seconds per epoch is a guess ({how} on a T4); {fix} for a measured figure")
    if search.trial_overhead_seconds is not None:
        overhead = Term(search.trial_overhead_seconds, "job file", "search.trial_overhead_seconds")
    elif "trial_overhead_seconds" in learned:
        overhead = Term(learned["trial_overhead_seconds"]["value"], "history", from_history)
    elif calibration is not None and "trial_overhead_seconds" in calibration:
        when = _when(calibration["measured_at"])
        overhead = Term(calibration["trial_overhead_seconds"], "calibration",
                        f"nascloud calibrate ({when}): the trial end to end less its epochs")
    else:
        overhead = default_term(catalog, "any", "trial_overhead")
    if histories:
        prior = default_term(catalog, "any", "history_prior_cv")
        job_cv = Term(history.spread(histories, prior.value), "history",
                      f"{from_history}: the spread of their wall time against their launch estimates, pooled with "
                      f"a prior ({prior.value:g}; {prior.source}) and widened for so few (nascloud.history.spread)")
        notes.append(f"the estimate rests on {len(histories)} similar job record(s) ({command('history', 'JOB.yaml')} "
                     f"lists them); its spread is {job_cv.value:.0%} of the run, wider the fewer they are")
    else:
        job_cv = default_term(catalog, cloud, "job_cv", "no similar job in the history")
    seeds = len(search.seed_list)  # search.seeds: the same search once per seed, in this one job
    job_trials = seeds * trials
    # The trials, epochs and fraction steer which architectures the search visits, and so its time per
    # epoch: a size no similar job has run strays further than reruns of one size show.
    size = (job_trials, epochs, search.data_fraction)
    if not any((h.get("max_trials"), h["epochs"], h.get("data_fraction", 1.0)) == size for h in histories or []):
        unseen = default_term(catalog, "any", "unseen_size_cv",
                              f"no similar job of {job_trials} trials × {epochs} epochs in the history")
        job_cv = max(job_cv, unseen, key=lambda term: term.value)
    workload = cost.workload_from_trials(job_trials, epochs, spe, overhead.value, job_cv=job_cv.value,
                                         keep=spec.checkpoint.keep if spec else 3)
    sample_text = f" × {samples_used:g} samples" if samples_used else ""
    description = (f"{f'{seeds} seeds × ' if seeds > 1 else ''}{trials} trials × {epochs} epochs{sample_text} "
                   f"at {spe:.3g} s/epoch on a T4 "
                   f"(+{overhead.value:.3g} s per trial) = {workload.t4_hours + workload.overhead_hours:.3g} hours")
    found = {"seconds_per_epoch": Term(spe, basis, source), "trial_overhead": overhead, "job_cv": job_cv}
    for name, key in (("job", "job_seconds"), ("restart", "restart_seconds"), ("checkpoint", "checkpoint_seconds")):
        if key in learned:
            found[name] = Term(learned[key]["value"], "history", from_history)
    if setup is not None:
        found["setup"] = setup
    if scaled:
        found["host_load"] = Term(now, "measured", f"{load['load_average']:g} runnable threads on {load['cpus']} cores "
                                                   "now (+ the job's own): CPU-bound work runs this many times slower "
                                                   "than on an idle machine; the calibration and history are scaled by "
                                                   "it from the load average they ran at")
    return ResolvedWorkload(workload, description, basis, tuple(notes), trials=trials, epochs=epochs,
                            seconds_per_epoch=spe, overhead_seconds=overhead.value,
                            data_fraction=search.data_fraction, terms=found, keep=workload.keep,
                            records=len(histories or []))


# What a busy host slows down (CPU-bound), of the history's terms and a calibration's figures.
SLOWED = ("seconds_per_epoch", "trial_overhead_seconds", "job_seconds", "restart_seconds")
CALIBRATION_TIMES = ("seconds_per_epoch", "seconds_per_sample", "trial_overhead_seconds",
                     "in_trial_overhead_seconds", "setup_seconds")


def _scaled(calibration: dict, factor: float) -> dict:
    return {k: v * factor if k in CALIBRATION_TIMES else v for k, v in calibration.items()}


def setup_term(calibration: Optional[dict]) -> Optional[Term]:
    if calibration is None or "setup_seconds" not in calibration:
        return None
    return Term(calibration["setup_seconds"], "calibration",
                f"nascloud calibrate ({_when(calibration['measured_at'])}): TensorFlow, data, set-up")


def default_term(catalog: Catalog, scope: str, name: str, why: str = "") -> Term:
    """The catalog's default for a term (terms.csv), its source after `why` (why no measurement holds)."""
    value, source = catalog.term(scope, name)
    return Term(value, "default", f"{why}: {source}" if why else source)


def default_job_term(catalog: Catalog, cloud: str, setup: Optional[Term]) -> Term:
    """The fixed per-job term until a history measures it: boot + set-up + finish on the provider."""
    parts = [default_term(catalog, cloud, "boot"), setup or default_term(catalog, "any", "setup"),
             default_term(catalog, cloud, "finish")]
    return Term(sum(p.value for p in parts), "/".join(dict.fromkeys(p.basis for p in parts)),
                "boot + set-up + finish: " + "; ".join(p.source for p in parts))


def local_option(catalog: Catalog, spec: JobSpec, price_per_hour: Optional[float] = None,
                 interruptions_per_hour: Optional[float] = None) -> cost.Option:
    """The local provider as an offer: this machine at the job's price_per_hour (a rehearsal's price),
    reclaimed only at a rate the job declares (drills), at the speed its calibration measured."""
    compute = spec.compute
    price = price_per_hour if price_per_hour is not None else compute.price_per_hour or 0.0
    rate = interruptions_per_hour if interruptions_per_hour is not None else compute.interruptions_per_hour
    spot = compute.spot
    if spot and rate:
        rate_source = "declared (compute.interruptions_per_hour / --interruptions-per-hour)"
    else:
        rate, rate_source = 0.0, ("the local provider is never reclaimed; declare compute.interruptions_per_hour "
                                  "to rehearse drills" if spot else "on-demand")
    offer = cost.Offer(cloud="local", region="local", zone="", instance_type="local", gpu="CPU", gpu_count=0,
                       vcpus=0, memory_gib=0, on_demand=price, spot=price,
                       source="local provider (price given by the user)", as_of="")
    return cost.Option(offer=offer, spot=spot, price_per_hour=price, speed=1.0, speed_basis="this machine",
                       speed_source=f"the local provider runs where {command('calibrate', 'JOB.yaml')} measures",
                       interruptions_per_hour=rate, rate_source=rate_source,
                       billing=catalog.billing_for("local"), price_source=offer.source)


def options_for(catalog: Catalog, gpu: Optional[str] = None, cloud: Optional[str] = None,
                region: Optional[str] = None, spot: Optional[bool] = None, price_per_hour: Optional[float] = None,
                interruptions_per_hour: Optional[float] = None, preemptible: bool = False,
                zone: Optional[str] = None, instance_type: Optional[str] = None) -> list[cost.Option]:
    """Every way to run on the matching offers (spot and on-demand when `spot` is None), the cheapest
    zone of each instance type only: zones differ in spot price, not in anything the model sees. A pinned
    zone or instance type that the catalog does not have is refused."""
    kinds = (True, False) if spot is None else (spot,)
    best: dict[tuple, cost.Option] = {}
    for offer in catalog.select(gpu=gpu, cloud=cloud, region=region, zone=zone, instance_type=instance_type):
        for kind in kinds:
            option = catalog.option(offer, kind, price_per_hour, interruptions_per_hour, preemptible)
            key = (offer.cloud, offer.region, offer.instance_type, offer.gpu, kind)
            if option and (key not in best or option.price_per_hour < best[key].price_per_hour):
                best[key] = option
    if not best:
        raise UsageError(f"no {'spot' if spot else 'on-demand'} offer for {gpu or 'any GPU'} on {cloud or 'any cloud'}; "
                         f"try {'--on-demand' if spot else '--spot'} (see {command('prices')})")
    return list(best.values())


@dataclass(frozen=True)
class Question:
    """What estimate, plan and launch ask of one job: its offers (each with the model's terms for its
    provider) and its work. One answer per question: the three commands go through `ask`."""

    spec: Optional[JobSpec]
    resolved: ResolvedWorkload
    options: list[cost.Option]
    assumptions: dict  # option key -> cost.Assumptions
    terms: dict  # option key -> {name: Term}
    budget: Optional[float]


def option_key(option: cost.Option) -> tuple:
    return (option.offer.cloud, option.offer.region, option.offer.instance_type, option.spot)


def ask(catalog: Catalog, spec: Optional[JobSpec], gpu: Optional[str] = None, cloud: Optional[str] = None,
        region: Optional[str] = None, spot: Optional[bool] = None, hours: Optional[float] = None,
        trials: Optional[int] = None, epochs: Optional[int] = None, samples: Optional[int] = None,
        seconds_per_epoch: Optional[float] = None, price_per_hour: Optional[float] = None,
        interruptions_per_hour: Optional[float] = None, checkpoint_minutes: Optional[float] = None,
        budget: Optional[float] = None, all_offers: bool = False) -> Question:
    """Job file + flags (flags win) -> the offers and work to estimate. A local job is the local provider at
    its price_per_hour; a job's pins (gpu, region, zone, instance type) hold unless `all_offers`;
    `price_per_hour` is one GPU's price."""
    compute = spec.compute if spec else None
    zone = instance_type = None
    local = compute is not None and compute.cloud == "local" and cloud in (None, "local")
    if compute:
        if not all_offers:
            gpu = gpu or compute.gpu
            region = region or compute.region
            zone, instance_type = compute.zone, compute.instance_type
        cloud = cloud or (compute.cloud if compute.cloud != "local" else None)
        spot = compute.spot if spot is None else spot
        price_per_hour = price_per_hour if price_per_hour is not None else compute.price_per_hour
        if interruptions_per_hour is None:
            interruptions_per_hour = compute.interruptions_per_hour
        budget = budget if budget is not None else spec.budget.usd
    if cloud == "local":
        cloud = None
    options = []
    if local:
        options.append(local_option(catalog, spec, price_per_hour, interruptions_per_hour))
    if not local or all_offers:
        gpu, cloud = catalog.check_names(gpu, cloud, region)
        options += options_for(catalog, gpu, cloud, region, spot, None if local else price_per_hour,
                               None if local else interruptions_per_hour,
                               preemptible=bool(compute and compute.provisioning == "preemptible"),
                               zone=zone, instance_type=instance_type)
    elif gpu is not None and not local:
        catalog.check_names(gpu, None, None)
    key = history.similarity_key(spec, "local" if local else (cloud or ""), None if local else gpu) if spec else None
    resolved = resolve_workload(spec, catalog, hours=hours, gpu=None if local else gpu, trials=trials, epochs=epochs,
                                samples=samples, seconds_per_epoch=seconds_per_epoch,
                                histories=history.similar(key) if key else [], cloud=key["cloud"] if key else "cloud")
    assumptions, terms = {}, {}
    for option in options:
        terms[option_key(option)] = model_terms(catalog, spec, option, resolved)
        assumptions[option_key(option)] = assumptions_for(checkpoint_minutes, spec, terms[option_key(option)])
    return Question(spec, resolved, options, assumptions, terms, budget)


def model_terms(catalog: Catalog, spec: Optional[JobSpec], option: cost.Option, resolved: ResolvedWorkload) -> dict:
    """The provider's terms: restart, checkpoint, and the job's fixed term (boot + set-up + finish), each
    from the job history where it measured them, else calibration, else the catalog's measured default."""
    cloud = option.offer.cloud
    scheme = (spec.checkpoint.bucket.split("://")[0] if spec and cloud in ("local", "aws", "gcp")
              else LOCAL_BUCKET_SCHEMES.get(cloud, "s3"))
    scheme = {"file": "file", "s3": "s3", "gs": "gs"}.get(scheme, "file")

    found = {"restart": resolved.terms.get("restart") or default_term(catalog, cloud, "restart"),
             "checkpoint": resolved.terms.get("checkpoint") or default_term(catalog, scheme, "checkpoint")}
    found["job"] = resolved.terms.get("job") or default_job_term(catalog, cloud, resolved.terms.get("setup"))
    if resolved.seconds_per_epoch_basis is None:  # --hours: the hours are the whole work
        found["job"] = Term(0.0, "given", "--hours is the whole work")
    return found


@dataclass(frozen=True)
class Ranking:
    estimates: list[cost.Estimate]
    skipped: list[str] = field(default_factory=list)  # options that never finish, with why

    def launchable(self) -> cost.Estimate:
        """What `launch` would run: the cheapest option it can run, one GPU (or the pinned instance type)."""
        for e in self.estimates:
            if e.option.launchable and e.option.offer.gpu_count <= 1:
                return e
        for e in self.estimates:
            if e.option.launchable:
                return e
        raise UsageError("none of these offers can be launched (estimate only: "
                         f"{', '.join(sorted({e.option.offer.cloud for e in self.estimates}))}); "
                         "choose --cloud aws, gcp or local")


def rank(question: Question) -> Ranking:
    estimates, skipped = [], []
    for option in question.options:
        try:
            estimates.append(cost.estimate(question.resolved.workload, option,
                                           question.assumptions[option_key(option)], question.budget))
        except UsageError as error:  # this option never finishes the work; the others may
            skipped.append(f"{option.offer.cloud} {option.offer.instance_type} {option.kind}: {error}")
    if not estimates:
        raise UsageError(f"no option finishes the work: {skipped[0]}")
    return Ranking(cost.rank(estimates), skipped)


def assumptions_for(checkpoint_minutes: Optional[float], spec: Optional[JobSpec], terms: dict) -> cost.Assumptions:
    if checkpoint_minutes is None and spec and spec.checkpoint.interval_minutes != "auto":
        checkpoint_minutes = spec.checkpoint.interval_minutes
    return cost.Assumptions(interval_hours=checkpoint_minutes / 60 if checkpoint_minutes else None,
                            restart_hours=terms["restart"].value / 3600,
                            checkpoint_hours=terms["checkpoint"].value / 3600,
                            job_hours=terms["job"].value / 3600)


# ---- JSON shapes (the CLI's --json, the launch record's estimate) ------------------------------

def _q(q: cost.Quantiles, digits: int) -> dict:
    return {"p50": round(q.p50, digits), "p90": round(q.p90, digits), "mean": round(q.mean, digits)}


def estimate_json(e: cost.Estimate, terms: Optional[dict] = None) -> dict:
    o, offer = e.option, e.option.offer
    return {
        "cloud": offer.cloud, "region": offer.region, "zone": offer.zone, "instance_type": offer.instance_type,
        "accelerator_type": offer.accelerator_type or None, "gpu": offer.gpu, "gpu_count": offer.gpu_count,
        "spot": o.spot, "price_per_hour": round(o.price_per_hour, 6), "price_source": o.price_source,
        "as_of": offer.as_of, "speed_vs_t4": o.speed, "speed_basis": o.speed_basis, "speed_source": o.speed_source,
        "launchable": o.launchable, "note": o.note or None, "work_hours": round(e.work_hours, 4),
        "wall_hours": _q(e.wall_hours, 4), "cost_usd": _q(e.cost_usd, 2), "extras_usd": _q(e.extras_usd, 2),
        "total_usd": _q(e.total_usd, 2), "expected_preemptions": round(e.expected_preemptions, 3),
        "p_over_budget": None if e.p_over_budget is None else round(e.p_over_budget, 4),
        "interruptions_per_hour": o.interruptions_per_hour, "interruption_source": o.rate_source,
        "checkpoint_interval_minutes": None if not math.isfinite(e.interval_hours) else round(e.interval_hours * 60, 2),
        "first_order": {"wall_hours": round(e.first_order.wall_hours, 4), "cost_usd": round(e.first_order.cost_usd, 2),
                        "preemptions": round(e.first_order.interruptions, 3)},
        "terms": {name: term.json() for name, term in (terms or {}).items()},
    }


WORKLOAD_TERMS = ("seconds_per_epoch", "trial_overhead", "job_cv", "host_load")


def workload_json(resolved: ResolvedWorkload) -> dict:
    return {"t4_hours": round(resolved.workload.t4_hours, 4),
            "overhead_hours": round(resolved.workload.overhead_hours, 4), "description": resolved.description,
            "seconds_per_epoch_basis": resolved.seconds_per_epoch_basis, "notes": list(resolved.notes),
            "history_records": resolved.records,
            "terms": {name: resolved.terms[name].json() for name in WORKLOAD_TERMS if name in resolved.terms}}


def plan_json(p: cost.Plan) -> dict:
    return {
        "budget_usd": p.budget, "option": p.option.launch_record(),
        "stages": [{"name": s.name, "buys": s.buys, "runs": s.runs, "cost_usd": round(s.mean_usd, 2),
                    "cost_p90_usd": round(s.estimate.total_usd.p90 * len(s.runs), 2),
                    "wall_hours_per_run": _q(s.estimate.wall_hours, 2)} for s in p.stages],
        "reserve_usd": round(p.reserve_usd, 2), "unallocated_usd": round(p.unallocated_usd, 2),
    }


# ---- launch: the same answer as `estimate JOB` -----------------------------------------------

def choose(spec: JobSpec, price_per_hour: Optional[float] = None, catalog: Optional[Catalog] = None) -> cost.Option:
    """The offer `launch` runs on: the first launchable row of `estimate JOB`'s ranking (the job's pins
    honoured, a price given is one GPU's)."""
    from nascloud.pricing import load_catalog

    return rank(ask(catalog or load_catalog(), spec, price_per_hour=price_per_hour)).launchable().option


def estimate_for_offer(spec: JobSpec, record: dict, catalog: Optional[Catalog] = None) -> tuple[dict, float]:
    """For launch: the estimate of `spec` on the chosen offer record (Option.launch_record()'s shape) and
    the checkpoint interval in minutes the agent should use; the same figure as `estimate JOB` gives it."""
    from nascloud.pricing import load_catalog

    catalog = catalog or load_catalog()
    question = ask(catalog, spec, price_per_hour=record["price_per_hour"] if record["cloud"] == "local" else None)
    same = [o for o in question.options if (o.offer.cloud, o.offer.instance_type, o.spot) ==
            (record["cloud"], record["instance_type"], bool(record.get("spot")))
            and (record["cloud"] == "local" or o.offer.region == record.get("region"))]
    if not same:
        raise UsageError(f"the offer {record['cloud']} {record['instance_type']} is not among the job's offers "
                         f"({command('estimate', 'JOB.yaml')} lists them)")
    option = same[0]
    if abs(option.price_per_hour - record["price_per_hour"]) > 1e-9:  # a price given at launch
        from dataclasses import replace

        option = replace(option, price_per_hour=record["price_per_hour"], price_source=record.get("source", ""))
    e = cost.estimate(question.resolved.workload, option, question.assumptions[option_key(option)], question.budget)
    interval = e.interval_hours if math.isfinite(e.interval_hours) else 0.5  # on-demand: a trial-end cadence
    return (estimate_json(e, question.terms[option_key(option)]) | {"workload": workload_json(question.resolved)},
            interval * 60)

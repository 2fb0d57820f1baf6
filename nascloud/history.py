"""The job history: what each job measured, beside the estimate it launched with, so the next estimate of
a similar job sets the model's own terms from it (README "Cost model and sources", "The job history").

The instance writes `history.json` into the job's prefix at the job's end (nascloud.agent.governor);
observer commands copy it into NASCLOUD_HOME/history/<job id>.json, so `estimate` reads it offline. A
record holds the per-trial durations, the snapshot times, boot-to-training and recovery times from the
ledger and the agent's training markers, the preemptions, and each run of the job (its launch, then each
`resume`, to the end of the instances it launched) with its time, spend and trials; the wall time and the
spend are their sums, so the days a stopped job sat idle count in neither.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Optional

from nascloud.paths import nascloud_home

OBJECT = "history.json"
SCHEMA = 1
COMPLETE = ("finished", "budget", "deadline")  # the ends a record is complete at (see `complete`)


def similarity_key(spec, cloud: str, gpu: Optional[str]) -> dict:
    """What makes two jobs comparable: the data set, the task and the space, on the same provider and GPU."""
    search = spec.search
    space = json.dumps(search.space.model_dump(mode="json"), sort_keys=True)
    return {"data": search.data, "task": search.task, "space": hashlib.sha256(space.encode()).hexdigest()[:16],
            "cloud": cloud, "gpu": gpu}


def host_load() -> dict:
    """This machine's load average over the last minute and its cores: a local host shares its cores with
    whatever else runs there, and CPU-bound training slows down with them."""
    return {"load_average": round(os.getloadavg()[0], 2), "cpus": os.cpu_count() or 1}


def host_load_now(seconds: float = 1.0, samples: int = 10) -> dict:
    """The runnable threads right now, other than this process, averaged over `seconds`: unlike the load
    average it does not still count a job that has just ended (the minute's average decays slowly)."""
    counts = []
    for _ in range(samples):
        with open("/proc/loadavg") as handle:  # "1.2 0.9 0.7 3/130 1234": the 4th field is running/total
            counts.append(int(handle.read().split()[3].split("/")[0]) - 1)
        time.sleep(seconds / samples)
    return {"load_average": round(sum(counts) / len(counts), 2), "cpus": os.cpu_count() or 1}


def slowdown(load: dict, own: bool) -> float:
    """How much slower than on an idle machine CPU-bound work runs at `load`: the runnable work over the
    cores. `own`: the load was measured while the work itself ran (a job, a calibration), else the work
    will add about one machine's worth to it (TensorFlow keeps every core busy)."""
    cpus = load["cpus"]
    total = load["load_average"] if own else load["load_average"] + cpus
    return max(cpus, total) / cpus


def measure(bucket, status: str, now: Optional[float] = None) -> dict:
    """The job's measured figures, read from its bucket (ledger, progress, training markers)."""
    from nascloud.jobbucket import spend

    now = now or time.time()
    bundle = bucket.bundle()
    spec, offer = bundle.spec, bundle.offer
    ledger = bucket.billed(now)
    progress = bucket.progress()
    training = {}
    for info in bucket.store.objects.list("agent/training/"):
        marker = bucket.store.get_json(info.key) or {}
        training[Path(info.key).stem] = marker.get("time")
    first = ledger[0] if ledger else None
    trial_seconds = [float(s) for s in progress.get("trial_durations") or []]
    runs = segments(bucket, ledger, len(trial_seconds), now)
    recoveries = []
    for entry, following in zip(ledger, ledger[1:]):
        if entry.end_reason in ("preempted", "lost", "terminated") and training.get(following.instance_id):
            recoveries.append(round(training[following.instance_id] - (entry.ended_at or entry.last_seen), 3))
    ended = max((e.ended_at or now for e in ledger), default=now)
    return {
        "schema": SCHEMA, "job_id": bundle.job_id, "name": bundle.name, "status": status, "written_at": now,
        "similar": similarity_key(spec, offer.cloud, offer.gpu),
        "trials": len(trial_seconds), "max_trials": spec.search.job_trials, "epochs": spec.search.epochs,
        "data_fraction": spec.search.data_fraction,
        "trial_seconds": trial_seconds, "snapshot_seconds": progress.get("snapshot_seconds") or [],
        "boot_to_training_seconds": (round(training[first.instance_id] - first.launched_at, 3)
                                     if first and training.get(first.instance_id) else None),
        "recovery_seconds": recoveries,
        "preemptions": sum(1 for e in ledger if e.end_reason in ("preempted", "lost")),
        "instances": len(ledger), "created_at": bundle.created_at, "ended_at": ended, "segments": runs,
        "wall_seconds": round(sum(r["seconds"] for r in runs), 3),
        "spend_usd": round(sum(r["spend_usd"] for r in runs), 6),
        "ledger_closed": all(e.ended_at is not None for e in bucket.instances()),
        "price_per_hour": offer.price_per_hour, "estimate": bundle.estimate,
        # Over the job's last minute, on the instance: its own work and, on a shared local machine, the rest.
        "host_load": host_load(),
    }


def segments(bucket, ledger: list, trials: int, now: float) -> list[dict]:
    """Each run of the job: from its launch or a `resume` (its "resumed" event) to the last end among the
    instances launched in it, with their spend and the trials completed in it (from the count each resume
    recorded; None where an older version's resume did not, the next known count taking them). The bucket's
    charges that no instance holds (the launch's uploads, storage) are shared by the runs' seconds: storage,
    the most of them, accrues with time."""
    from nascloud.budget import request_charges, span_cost
    from nascloud.jobbucket import spend

    bundle = bucket.bundle()
    minimum, rates = bundle.billing_minimum_seconds, bundle.bucket_rates
    resumes = [e for e in bucket.events() if e.kind == "resumed"]
    starts = [bundle.created_at] + [e.time for e in resumes] + [math.inf]
    done = [0] + [(e.data or {}).get("trials_done") for e in resumes] + [trials]
    runs, known = [], 0
    for index, start in enumerate(starts[:-1]):
        mine = [e for e in ledger if (index == 0 or e.launched_at >= start) and e.launched_at < starts[index + 1]]
        last = max(mine, key=lambda e: e.ended_at or now, default=None)
        end = (last.ended_at or now) if last else start
        usd = sum(span_cost(e, now, minimum) + sum(request_charges(c, rates) for c in e.requests.values())
                  for e in mine)
        count = done[index + 1]
        runs.append({"started_at": start, "ended_at": end, "seconds": round(max(0.0, end - start), 3),
                     "spend_usd": usd, "trials": None if count is None else count - known,
                     "end": last.end_reason if last else None})
        known = known if count is None else count
    shared = spend(bucket, now) - sum(r["spend_usd"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    for run in runs:
        share = run["seconds"] / seconds if seconds else float(run is runs[0])
        run["spend_usd"] = round(run["spend_usd"] + shared * share, 6)
    return runs


def with_defaults(record: dict) -> dict:
    """A record as this version reads it: a field a later version added gets what an older record meant by
    its absence (one run from the launch to its end; the ledger closed, as the governor wrote it after
    closing its own entry)."""
    one = {"started_at": record.get("created_at"), "ended_at": record.get("ended_at"),
           "seconds": record.get("wall_seconds"), "spend_usd": record.get("spend_usd"),
           "trials": record.get("trials"), "end": record.get("status")}
    return {"segments": [one], "ledger_closed": True, **record}


def complete(record: dict) -> bool:
    """The one rule for a record that measured a whole job, which the estimate learns from (`similar`) and
    `nascloud history` scores: it ended finished, or at its budget or deadline, with its ledger closed. A
    stopped (or failed) job's record is not: a stopped job resumes, and its record is complete at its end."""
    return record.get("status") in COMPLETE and bool(record.get("ledger_closed", True))


def usable(record: dict) -> bool:
    """A record an estimate rests on: complete, with trials to measure."""
    return complete(record) and bool(record.get("trials"))


def priced_by_steps(steps: list[tuple[float, float]], start: float, end: float) -> float:
    """USD for [start, end] at a price that changes in steps ((from time, USD/h), oldest first): each step
    holds until the next; before the first, the first holds (the cloud gives the one in force at start)."""
    total = 0.0
    for index, (since, price) in enumerate(steps):
        until = steps[index + 1][0] if index + 1 < len(steps) else end
        low, high = (start if index == 0 else max(start, since)), min(end, until)
        total += price * max(0.0, high - low) / 3600
    return total


def bill_check(bucket, provider, now: Optional[float] = None) -> dict:
    """The ledger against the cloud's own record of the spot price over each instance's life. The ledger
    bills an instance at its launch price for its whole life; AWS moves spot prices gradually, so the bill
    differs by as much as the price moved over the instance's life; GCP moves Spot prices at most once every
    30 days; a local host bills the price given."""
    from nascloud.budget import billed_seconds, span_cost

    now = now or time.time()
    bundle = bucket.bundle()
    minimum = bundle.billing_minimum_seconds
    ledger_usd = checked_usd = 0.0
    checked = 0
    for entry in bucket.billed(now):
        cost = span_cost(entry, now, minimum)
        ledger_usd += cost
        if entry.launched_at is None or not entry.spot:
            checked_usd += cost
            continue
        end = entry.launched_at + billed_seconds(entry.launched_at, entry.ended_at, now, minimum)
        steps = provider.spot_prices(bundle.offer.region, entry.instance_type, entry.zone, entry.launched_at, end)
        if steps is None:
            checked_usd += cost
            continue
        checked_usd += priced_by_steps(steps, entry.launched_at, end)
        checked += 1
    return {"ledger_usd": round(ledger_usd, 6), "by_price_history_usd": round(checked_usd, 6),
            "drift_usd": round(checked_usd - ledger_usd, 6), "instances_checked": checked}


def write(bucket, status: str) -> dict:
    with bucket.reading():  # the ledger, events and charges read once for every figure
        record = measure(bucket, status)
    bucket.store.put_json(OBJECT, record)
    return record


def folder() -> Path:
    return nascloud_home() / "history"


def cache(bucket, job_id: str, provider_of) -> None:
    """Copy an ended job's history into this machine's cache, with the ledger checked against the cloud's
    price history (`bill_check`) while the cloud can still be asked; again when the job ended since the
    cached record was written (a stop, a `resume`, then its end: the governor rewrote the bucket's record).
    A cached record written after the job's last end costs one GET (the exit record) a look.
    provider_of() gives the job's provisioner, made only when the record is copied."""
    from nascloud.errors import NascloudError

    path = folder() / f"{job_id}.json"
    cached = _read(path)
    if cached and cached.get("written_at", 0) >= (bucket.exit_record() or {}).get("time", 0):
        return
    record = bucket.store.get_json(OBJECT)
    # Until the instance writes the record of its end, the bucket holds the one the cache has.
    if record and record.get("written_at", 0) > (cached or {}).get("written_at", -1):
        try:
            record["bill_check"] = bill_check(bucket, provider_of())
        except NascloudError as error:
            record["bill_check"] = {"error": str(error)}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))


def _read(path: Path) -> Optional[dict]:
    """A cached record, None when missing or unreadable (a cache, not the truth)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("schema") == SCHEMA else None


def records() -> list[dict]:
    """Every cached history, oldest first, each with this version's defaults; an unreadable file is skipped."""
    found = [r for path in (sorted(folder().glob("*.json")) if folder().is_dir() else ()) if (r := _read(path))]
    return sorted((with_defaults(r) for r in found), key=lambda r: r.get("written_at", 0))


def similar(key: dict) -> list[dict]:
    """The usable records of jobs like this one (same data set, task and space, provider and GPU)."""
    return [r for r in records() if r.get("similar") == key and usable(r)]


# ---- from histories to the model's terms ---------------------------------------------------

def _fit(points: list[tuple[float, float]]) -> Optional[tuple[float, float]]:
    """Least squares y = a + b·x through the median y at each distinct x (at least two); None otherwise.
    Medians, because the estimate's P50 is one: one run that went slow (measured on local: 12 of 36 trials
    at 2x, among them the search's first, the same architecture in every run, beside 1-2 in the same job's
    other runs) must not move every later estimate; how far runs stray is `spread`'s."""
    import statistics  # see terms

    by_x: dict[float, list[float]] = {}
    for x, y in points:
        by_x.setdefault(x, []).append(y)
    if len(by_x) < 2:
        return None
    points = [(x, statistics.median(ys)) for x, ys in by_x.items()]
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - b * mx, b


def _at_idle(record: dict) -> dict:
    if "host_load" not in record:
        return record
    factor = slowdown(record["host_load"], own=True)
    scaled = {key: [v / factor for v in record[key]] for key in ("trial_seconds", "recovery_seconds")}
    return {**record, **scaled, "wall_seconds": record["wall_seconds"] / factor}


def terms(histories: list[dict], in_trial_overhead: float, fixed_default: float, idle: bool = False) -> dict:
    """The model's terms measured by similar jobs, each {"value", "jobs"} (seconds); their spread is `spread`'s.

    seconds_per_epoch (full data) and the in-trial overhead from each job's mean trial duration against its
    epochs; the fixed per-job term and the between-trial overhead from each uninterrupted job's wall time
    less its trials, against its number of trials; restart from the recoveries; checkpoint from the
    snapshots. Where the
    histories cannot tell two terms apart (every job had the same epochs, or the same number of trials),
    the calibration's `in_trial_overhead`
    (a trial's time beyond its epochs, e.g. graph tracing) or the `fixed_default` decides the term they
    measure least. `idle`: the times as on an idle machine (each job divided by its host's slowdown)."""
    if not histories:
        return {}
    import statistics  # here, not at the top: it brings random, fractions and decimal (~7 ms of every estimate)

    found = {}
    if idle:  # each job's times as on an idle machine: a shared local host ran them at its load then
        histories = [_at_idle(h) for h in histories]
    per_job = [(h["epochs"], statistics.fmean(h["trial_seconds"]) / h.get("data_fraction", 1.0)) for h in histories]
    line = _fit(per_job)
    if line and line[1] > 0:
        in_trial, spe = max(0.0, line[0]), line[1]
    else:
        spe = statistics.median(max(1e-3, (d - in_trial_overhead) / e) for e, d in per_job)
        in_trial = in_trial_overhead
    found["seconds_per_epoch"] = spe
    # A preempted or resumed job paid its fixed term more than once.
    calm = [h for h in histories if not h["preemptions"] and len(h.get("segments") or [None]) == 1]
    residuals = [(h["trials"], h["wall_seconds"] - sum(h["trial_seconds"])) for h in calm]
    line = _fit(residuals)
    if line and line[1] >= 0 and line[0] >= 0:
        fixed, between = line
    elif residuals:
        fixed = fixed_default
        between = statistics.median(max(0.0, (r - fixed) / n) for n, r in residuals)
    else:
        fixed, between = None, 0.0
    found["trial_overhead_seconds"] = in_trial + between
    if residuals:
        found["job_seconds"] = fixed
    recoveries = [s for h in histories for s in h["recovery_seconds"]]
    if recoveries:
        found["restart_seconds"] = statistics.fmean(recoveries)
    snapshots = [s for h in histories for s in h["snapshot_seconds"]]
    if snapshots:
        found["checkpoint_seconds"] = statistics.fmean(snapshots)
    return {name: {"value": value, "jobs": len(histories)} for name, value in found.items()}


def _ratios(histories: list[dict]) -> list[float]:
    """How far runs strayed from their launch estimates (a shared or throttled machine, a model that is still
    learning): each one's wall time over its estimate's P50, for the estimates made as the next one is, from
    the history (one from a calibration or a guess misses by its own error: measured, a first run's estimate
    from the calibration at 2.3x its run beside 1.0-1.06x for the four estimated from records); an estimate
    that does not say how it was made counts."""
    return [h["wall_seconds"] / 3600 / h["estimate"]["wall_hours"]["p50"] for h in histories
            if (h.get("estimate") or {}).get("wall_hours", {}).get("p50")
            and (h["estimate"].get("workload") or {}).get("seconds_per_epoch_basis", "history") == "history"]


PRIOR_RECORDS = 2  # how many records the prior spread weighs as
Z90 = 1.2816  # the normal distribution's 90th percentile


def spread(histories: list[dict], prior_cv: float) -> float:
    """The whole run's spread (a CV) for an estimate that rests on `histories` (at least one), wider the
    fewer they are. Three steps, each the textbook one for a next draw predicted from n past ones:
    the runs' own spread against their estimates (`_ratios`: sd/mean) pooled with `prior_cv` weighed as
    PRIOR_RECORDS records, so the prior fades as records come; times sqrt(1 + 1/n), since the estimate's own
    terms come from n runs and miss by spread/sqrt(n) themselves; times Student's t over the normal at the
    pooled degrees of freedom, since a spread measured from few runs is itself uncertain. From one record
    at a prior of 0.21: 0.43 (the P90 about 1.55x the mean); from ten that spread 0.2: 0.22."""
    import statistics  # see terms

    ratios = _ratios(histories)
    measured = (len(ratios) - 1) * (statistics.stdev(ratios) / statistics.fmean(ratios)) ** 2 if len(ratios) > 1 else 0
    dof = PRIOR_RECORDS + max(0, len(ratios) - 1)
    pooled = math.sqrt((PRIOR_RECORDS * prior_cv ** 2 + measured) / dof)
    # Student's t's 90th percentile by its Cornish-Fisher expansion (within 2 % of the table from 2 dof).
    t90 = Z90 + (Z90 ** 3 + Z90) / (4 * dof) + (5 * Z90 ** 5 + 16 * Z90 ** 3 + 3 * Z90) / (96 * dof ** 2)
    return pooled * math.sqrt(1 + 1 / len(histories)) * t90 / Z90


def accuracy(record: dict) -> Optional[dict]:
    """How close the launch estimate was: P50 as a ratio of the actual, and whether the P90 covered it, for a
    complete record (`complete`; an incomplete one's row says so, without ratios). A job that cost nothing
    (local, no price) keeps its time, without a cost ratio. None without a launch estimate."""
    estimate = record.get("estimate") or {}
    cost, wall = estimate.get("total_usd") or estimate.get("cost_usd") or {}, estimate.get("wall_hours") or {}
    if not wall.get("p50"):
        return None
    scored = complete(record)
    spent, actual_hours = record["spend_usd"], record["wall_seconds"] / 3600
    priced = scored and bool(cost.get("p50")) and spent > 0
    timed = scored and actual_hours > 0
    return {"job_id": record["job_id"], "name": record["name"], "status": record["status"], "complete": scored,
            "used_by_estimates": usable(record), "runs": len(record["segments"]), "trials": record["trials"],
            "preemptions": record["preemptions"], "actual_usd": spent, "actual_hours": actual_hours,
            "cost_ratio": cost["p50"] / spent if priced else None,
            "cost_p90_covered": cost["p90"] >= spent if priced else None,
            "by_price_history_usd": (record.get("bill_check") or {}).get("by_price_history_usd"),
            "wall_ratio": wall["p50"] / actual_hours if timed else None,
            "wall_p90_covered": wall["p90"] >= actual_hours if timed else None}

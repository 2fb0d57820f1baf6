"""A job as any machine sees it: its bucket (ledger, progress, events, exit record) and its groups.

Observers decide nothing about the money (the instance does); they only tidy what the instance could not:
the ledger entry of an instance killed without warning (closed from the provider's own times), a group a
dead instance left above 0 after the job ended, and what costs nothing once the groups are at 0
(the empty group, templates, roles) is deleted by the next `status`, `watch` or `gc`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

from nascloud.errors import NascloudError
from nascloud.jobbucket import FINAL, JobBucket

HALTED = "halted"  # the groups were ended without an exit record: the instance said why on the group
SHOWN_FINAL = FINAL + (HALTED,)
EXIT_CODES = {"finished": 0, "stopped": 0, "budget": 3, "deadline": 3, "failed": 1, HALTED: 1}


def open_job(ref: str) -> JobBucket:
    """A job by its bucket URL (from any machine), or by an id or name this machine launched or looked at."""
    from nascloud.state import JobCache

    cache = JobCache()
    if "://" in ref:
        bucket = JobBucket.open(ref.rstrip("/"))
        bundle = bucket.bundle()
        cache.remember(bundle.job_id, bundle.name, bucket.url, bundle.created_at)
        return bucket
    return JobBucket.open(cache.find(ref).job_url)


def provisioner(bucket: JobBucket):
    from nascloud.provisioners import provisioner_for

    return provisioner_for(bucket.bundle())


def groups(bucket: JobBucket) -> Optional[list]:
    """The job's groups as the provider lists them; None when the provider cannot be asked now."""
    try:
        return provisioner(bucket).groups(bucket.bundle().job_id)
    except NascloudError:
        return None


def job_status(bucket: JobBucket, found: Optional[list]) -> tuple[str, Optional[str]]:
    """(status, why): an exit record's final status; halted when the groups were ended without one;
    launching before the first instance recorded itself; else running (stopping once a stop is asked)."""
    record = bucket.exit_record() or {}
    if record.get("status") in FINAL:
        return record["status"], record.get("message")
    if found is not None and (not found or all(g.size == 0 for g in found)):
        return HALTED, "; ".join(g.reason for g in found if g.reason) or "the job's groups are at 0"
    if bucket.stop_request():
        return "stopping", None
    if not bucket.ledger():
        return "launching", None
    return "running", None


def tidy(bucket: JobBucket, found: Optional[list], status: str) -> None:
    """Close the ledger from the provider's listing; once the job ended, nothing of it may still bill."""
    if found is None:
        return
    bundle = bucket.bundle()
    bucket.reconcile([i for g in found for i in g.instances], time.time())
    if status not in SHOWN_FINAL:
        return
    prov = provisioner(bucket)
    for group in found:
        if group.size:
            prov.resize(bundle.job_id, group.name, 0, reason=f"the job is {status}")
    if all(not g.live for g in found):
        prov.delete(bundle.job_id)


def summary(bucket: JobBucket, now: Optional[float] = None, tidy_up: bool = True) -> dict:
    """What `status --json` prints and the live view shows."""
    from nascloud.jobbucket import money

    now = now or time.time()
    bundle = bucket.bundle()
    found = groups(bucket)
    status, reason = job_status(bucket, found)
    if tidy_up:
        tidy(bucket, found, status)
    tick = money(bucket, now)
    ledger = bucket.ledger()
    budget = bucket.budget()
    estimate = bundle.estimate or {}
    ended = max([e.ended_at or e.last_seen for e in ledger], default=now) if status in SHOWN_FINAL else now
    bucket_usd = bucket.charges_usd()
    return {
        "job_id": bundle.job_id, "name": bundle.name, "status": status, "reason": reason, "job_url": bucket.url,
        "created_at": bundle.created_at,
        "offer": {k: getattr(bundle.offer, k) for k in ("cloud", "region", "instance_type", "gpu", "spot")},
        "price_per_hour": bundle.offer.price_per_hour,
        "budget_usd": budget.get("usd"), "max_hours": budget.get("max_hours"),
        "spent_usd": round(tick.spent_usd, 6), "bucket_usd": round(bucket_usd, 6),
        "money": {k: v for k, v in tick.as_dict().items() if k not in ("alerts", "stop", "reason")},
        "estimate": {"cost_usd": estimate.get("cost_usd"), "wall_hours": estimate.get("wall_hours")},
        "actual": {"cost_usd": round(tick.spent_usd, 6), "wall_hours": round((ended - bundle.created_at) / 3600, 4)},
        "instances": [{"instance_id": e.instance_id, "group": e.group, "zone": e.zone, "launched_at": e.launched_at,
                       "last_seen": e.last_seen, "ended_at": e.ended_at, "end_reason": e.end_reason,
                       "price_per_hour": e.price_per_hour, "spot": e.spot} for e in ledger],
        "groups": None if found is None else [{"name": g.name, "size": g.size, "live": len(g.live), "reason": g.reason}
                                              for g in found],
        "preemptions": sum(1 for e in ledger if e.end_reason in ("preempted", "lost")),
        # Until the agent reports, the job file says how many trials there will be.
        "progress": {"max_trials": bundle.spec.search.max_trials, **bucket.progress()},
        "alerts": [{"time": e.time, "message": e.message, **(e.data or {})} for e in bucket.events() if e.kind == "alert"],
    }


def all_summaries() -> list[dict]:
    """Every job this machine knows, newest last; a job whose bucket cannot be read says so in its row
    instead of taking the table down."""
    from nascloud.state import JobCache

    rows = []
    for known in JobCache().jobs():
        try:
            rows.append(summary(JobBucket.open(known.job_url)))
        except NascloudError as error:
            rows.append({"job_id": known.job_id, "name": known.name, "status": "unreadable", "reason": str(error),
                         "job_url": known.job_url, "progress": {}, "estimate": {}, "spent_usd": 0.0,
                         "budget_usd": None, "preemptions": 0})
    return rows


def follow(bucket: JobBucket, poll_seconds: float = 2.0) -> str:
    """Show the job live until it is final; returns its final status. It decides nothing: Ctrl-C leaves the
    job running."""
    from nascloud.dashboard import Dashboard

    with Dashboard(sys.stdout) as board:
        seen = ""
        while True:
            view = summary(bucket)
            events = bucket.events(after=seen)
            seen = events[-1].name if events else seen
            board.update(view, events)
            if view["status"] in SHOWN_FINAL:
                return view["status"]
            time.sleep(poll_seconds)


def render_summaries(summaries: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("job", "status", "trials", "best", "spent", "budget", "estimate P50", "preemptions")
    for s in summaries:
        progress = s["progress"]
        estimate = (s["estimate"].get("cost_usd") or {}).get("p50")
        table.add_row(
            s["job_id"], s["status"],
            f"{progress.get('trials_done', 0)}/{progress.get('max_trials', '?')}",
            _fmt(progress.get("best_score")),
            f"${s['spent_usd']:.2f}",
            f"${s['budget_usd']:.2f}" if s["budget_usd"] else "-",
            f"${estimate:.2f}" if estimate is not None else "-",
            str(s["preemptions"]),
        )
    Console().print(table if summaries else "no jobs yet; start one with `nascloud launch JOB.yaml`")
    for s in summaries:
        if s.get("reason") and s["status"] not in ("running", "launching"):
            Console().print(f"{s['job_id']}: {s['reason']}")


def render_leaderboard(board: dict, folder: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    trials = board.get("trials", board if isinstance(board, list) else [])
    table = Table("trial", "score", "status", "params", "seconds", "hyperparameters")
    for trial in trials:
        table.add_row(str(trial.get("trial_id")), _fmt(trial.get("score")), str(trial.get("status", "")),
                      str(trial.get("parameters", "")), _fmt(trial.get("duration_seconds")),
                      ", ".join(f"{k}={v}" for k, v in (trial.get("hyperparameters") or {}).items())[:80])
    console = Console()
    console.print(table)
    model = folder / "best_model.keras"
    if model.exists():
        console.print(f"best model: {model} (labels: {folder / 'labels.json'})")


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"

"""What the job commands show: a summary record per job, and the loop that follows a job live.

The records are plain dicts (they are also `status --json`); rendering is Rich on a terminal and plain
lines otherwise.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

from nascloud.state import JobRow, State

FINAL = ("finished", "stopped", "budget", "deadline", "failed")


def job_summary(state: State, job: JobRow, progress: Optional[dict] = None, now: Optional[float] = None) -> dict:
    from nascloud.orchestrator import WatchSettings, bucket_usd, money

    now = now or time.time()
    if progress is None:
        progress = _progress(job)
    instances = state.instances(job.job_id)
    tick = money(state, job, progress, now, WatchSettings.from_env())
    spent = tick.spent_usd
    estimate = job.estimate or {}
    return {
        "job_id": job.job_id,
        "name": job.name,
        "status": job.status,
        "job_url": job.job_url,
        "offer": {k: job.bundle["offer"].get(k) for k in ("cloud", "region", "instance_type", "gpu", "spot")},
        "price_per_hour": job.bundle["offer"]["price_per_hour"],
        "budget_usd": job.budget_usd,
        "max_hours": job.max_hours,
        "spent_usd": round(spent, 6),
        "bucket_usd": round(bucket_usd(state, job.job_id), 6),  # storage and requests, inside spent_usd
        "money": {k: v for k, v in tick.as_dict().items() if k not in ("alerts", "stop", "reason")},
        "estimate": {"cost_usd": estimate.get("cost_usd"), "wall_hours": estimate.get("wall_hours")},
        "actual": {"cost_usd": round(spent, 6), "wall_hours": round(((job.ended_at or now) - job.created_at) / 3600, 4)},
        "instances": [
            {"instance_id": i.instance_id, "launched_at": i.launched_at, "ended_at": i.ended_at,
             "end_reason": i.end_reason, "price_per_hour": i.price_per_hour, "spot": i.spot}
            for i in instances
        ],
        "preemptions": sum(1 for i in instances if i.end_reason in ("preempted", "lost")),
        # Until the agent reports, the job file says how many trials there will be.
        "progress": {"max_trials": job.bundle["spec"]["search"]["max_trials"], **(progress or {})},
        "alerts": [{"time": e.time, "message": e.message, **(e.data or {})} for e in state.events(job.job_id, "alert")],
    }


def _progress(job: JobRow) -> dict:
    from nascloud.checkpoints import open_store
    from nascloud.errors import NascloudError

    try:
        return open_store(job.job_url).get_json("agent/progress.json") or {}
    except NascloudError:
        return {}


def follow(state: State, job_id: str, orchestrator=None) -> str:
    """Tick the orchestrator (when this process owns the job) and show the job until it is final."""
    from nascloud.dashboard import Dashboard

    with Dashboard(sys.stdout) as board:
        seen = 0
        while True:
            outcome = orchestrator.tick() if orchestrator else None
            job = state.job(job_id)
            events = state.events(job_id, after=seen)
            seen = events[-1].seq if events else seen
            board.update(job_summary(state, job), events)
            if outcome or job.status in FINAL:
                return outcome or job.status
            time.sleep(orchestrator.pause_seconds() if orchestrator else 2.0)


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

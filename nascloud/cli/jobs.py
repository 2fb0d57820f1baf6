"""`nascloud launch`, `status`, `watch`, `logs`, `stop`, `resume`, `results`, `drill`, `gc` (issues 5-7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from nascloud.cli.app import app
from nascloud.errors import NascloudError, UsageError

EXIT_CODES = {"finished": 0, "stopped": 0, "budget": 3, "deadline": 3, "failed": 1}


def _state():
    from nascloud.state import State

    return State()


def _provisioner(job):
    return _provisioner_for(job.bundle["offer"])


def _provisioner_for(offer: dict):
    from nascloud.provisioners import get_provisioner

    if offer["cloud"] == "local":
        return get_provisioner("local", price_per_hour=offer["price_per_hour"])
    return get_provisioner(offer["cloud"])


def _orchestrator(state, job_id: str):
    from nascloud.orchestrator import Orchestrator

    return Orchestrator(state, job_id, _provisioner(state.job(job_id)))


@app.command()
def launch(
    job_file: Path = typer.Argument(..., help="The job YAML (see examples/)."),
    cloud: Optional[str] = typer.Option(None, help="local | aws | gcp (overrides compute.cloud)."),
    bucket: Optional[str] = typer.Option(None, help="file://DIR, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX."),
    budget: Optional[float] = typer.Option(None, help="Hard budget in USD (overrides budget.usd)."),
    max_hours: Optional[float] = typer.Option(None, help="Deadline on the job's wall time, in hours."),
    price_per_hour: Optional[float] = typer.Option(
        None, help="Price used for the ledger and the cap instead of the catalog's (rehearse a budget on local)."),
    detach: bool = typer.Option(False, help="Return at once; the watch loop goes on in the background."),
    dry_run: bool = typer.Option(False, help="Print, as JSON, the exact request the cloud would receive; spend nothing."),
    force: bool = typer.Option(False, help="Launch even if the estimate's P50 already exceeds the budget."),
) -> int:
    """Run the search on a (spot) instance, resume it after every preemption, stop at the budget."""
    from nascloud import launching
    from nascloud.job import load_job

    spec = load_job(job_file)
    spec = spec.with_overrides(compute={"cloud": cloud, "price_per_hour": price_per_hour},
                               checkpoint={"bucket": bucket}, budget={"usd": budget, "max_hours": max_hours})
    launching.check_bucket_suits(spec)
    offer = launching.choose_offer(spec, price_per_hour)
    if dry_run:
        from nascloud.provisioners import launch_request

        typer.echo(json.dumps(launch_request(spec, offer), indent=2))
        return 0
    from nascloud.agent.data import check_data_source

    check_data_source(spec.search)
    from nascloud.estimating import estimate_for_offer

    estimate, interval_minutes = estimate_for_offer(spec, offer)
    if spec.checkpoint.interval_minutes != "auto":
        interval_minutes = spec.checkpoint.interval_minutes
    if spec.budget.usd and estimate["cost_usd"]["p50"] > spec.budget.usd and not force:
        raise UsageError(
            f"the estimate's P50 cost ${estimate['cost_usd']['p50']:.2f} (P90 ${estimate['cost_usd']['p90']:.2f}, "
            f"{estimate['wall_hours']['p50']:.1f} h) already exceeds the budget ${spec.budget.usd:.2f}; "
            "raise --budget, shrink the search, or pass --force")
    _provisioner_for(offer).preflight(offer, spec)  # quota, names, the bucket: before anything is created
    state = _state()
    job_id = launching.create_job(state, spec, offer, estimate, interval_minutes)
    typer.echo(f"job {job_id}: {offer['cloud']} {offer['instance_type']} at ${offer['price_per_hour']:.4f}/h; "
               f"state in {state.job(job_id).job_url}")
    typer.echo(f"estimate: ${estimate['cost_usd']['p50']:.2f} (P90 ${estimate['cost_usd']['p90']:.2f}), "
               f"{estimate['wall_hours']['p50']:.2f} h")
    if detach:
        log = _spawn_watcher(job_id)
        typer.echo(f"watching in the background (log: {log}); `nascloud watch {job_id}` re-attaches, "
                   f"`nascloud stop {job_id}` stops it")
        return 0
    return _watch(state, job_id)


def _spawn_watcher(job_id: str) -> Path:
    from nascloud.paths import nascloud_home

    logs = nascloud_home() / "logs"
    logs.mkdir(exist_ok=True)
    log = logs / f"{job_id}.log"
    with open(log, "ab") as out:
        subprocess.Popen([sys.executable, "-m", "nascloud", "watch", job_id], stdin=subprocess.DEVNULL,
                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return log


def _watch(state, job_id: str) -> int:
    from nascloud.orchestrator import JobLock
    from nascloud.view import follow

    lock = JobLock(job_id)
    if not lock.acquire():
        # Another loop (a detached one, or another terminal) owns the job: only show it.
        typer.echo(f"job {job_id} is watched by process {lock.holder()}; showing it (Ctrl-C leaves it running)")
        return EXIT_CODES.get(follow(state, job_id, orchestrator=None), 0)
    try:
        orchestrator = _orchestrator(state, job_id)
        return EXIT_CODES.get(follow(state, job_id, orchestrator=orchestrator), 0)
    except KeyboardInterrupt:
        job = state.job(job_id)
        lease = job.bundle["spec"]["checkpoint"]["lease_minutes"]
        typer.echo(f"\nwatch loop stopped; the search goes on and stops itself {lease:g} min after the last lease "
                   f"renewal unless `nascloud watch {job_id}` re-attaches; `nascloud stop {job_id}` stops it now")
        return 130
    finally:
        lock.release()


@app.command()
def watch(job: str = typer.Argument(..., help="Job id or name.")) -> int:
    """Follow a job live (and run its watch loop if nothing else does): spend, trials, events."""
    state = _state()
    return _watch(state, state.job(job).job_id)


@app.command()
def status(
    job: Optional[str] = typer.Argument(None, help="Job id or name; all jobs when left out."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Jobs, their spend against budget and estimate, instances, and recent alerts."""
    from nascloud.view import job_summary, render_summaries

    state = _state()
    jobs = [state.job(job)] if job else state.jobs()
    summaries = [job_summary(state, j) for j in jobs]
    if as_json:
        typer.echo(json.dumps(summaries[0] if job else summaries, indent=2))
    else:
        render_summaries(summaries)


@app.command()
def logs(
    job: str = typer.Argument(..., help="Job id or name."),
    follow_: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events."),
    agent: int = typer.Option(0, help="Also print the last N lines of the agent's log on the current instance."),
) -> None:
    """The job's events (launches, preemptions, recoveries, alerts), and with --agent N the agent's log."""
    state = _state()
    row = state.job(job)
    if agent:
        typer.echo(_orchestrator(state, row.job_id).agent_log(agent))
    seen = 0
    while True:
        for event in state.events(row.job_id, after=seen):
            typer.echo(f"{time.strftime('%H:%M:%S', time.localtime(event.time))} {event.kind:<14} {event.message}")
            seen = event.seq
        if not follow_ or state.job(row.job_id).status in ("finished", "stopped", "budget", "deadline", "failed"):
            return
        time.sleep(1)


@app.command()
def stop(job: str = typer.Argument(..., help="Job id or name.")) -> None:
    """Final snapshot, terminate the instance, delete what the job created; the job stays resumable."""
    from nascloud.orchestrator import JobLock

    state = _state()
    row = state.job(job)
    if row.status in ("finished", "failed"):
        raise UsageError(f"job {row.job_id} is already {row.status}; nothing to stop")
    lock = JobLock(row.job_id)
    holder = None if lock.acquire() else lock.holder()
    if holder:
        _end_watcher(holder)
        if not lock.acquire():
            raise NascloudError(f"the watch loop (process {holder}) did not let go of job {row.job_id}; try again")
    try:
        _orchestrator(state, row.job_id).stop()
    finally:
        lock.release()
    typer.echo(f"job {row.job_id} stopped; its search state stays in {row.job_url}; `nascloud resume {row.job_id}`")


def _end_watcher(pid: int) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


@app.command()
def resume(
    job: str = typer.Argument(..., help="Job id or name."),
    budget: Optional[str] = typer.Option(None, help="New budget: +USD adds to it, USD sets it."),
    max_hours: Optional[float] = typer.Option(None, help="New deadline on the job's wall time, in hours."),
    detach: bool = typer.Option(False, help="Return at once; the watch loop goes on in the background."),
) -> int:
    """Continue a stopped job (at its budget, deadline, or by `stop`) from its last snapshot."""
    from nascloud.budget import parse_budget_change

    state = _state()
    row = state.job(job)
    if row.status == "finished":
        raise UsageError(f"job {row.job_id} has finished; see `nascloud results {row.job_id}`")
    changes: dict = {"status": "running", "ended_at": None}
    if budget is not None:
        changes["budget_usd"] = parse_budget_change(budget, row.budget_usd)
    if max_hours is not None:
        changes["max_hours"] = max_hours
    state.set_job(row.job_id, **changes)
    state.add_event(row.job_id, "resumed", "job resumed" + (f" with budget ${changes['budget_usd']:.2f}"
                                                             if "budget_usd" in changes else ""), time.time())
    if detach:
        typer.echo(f"watching in the background (log: {_spawn_watcher(row.job_id)})")
        return 0
    return _watch(state, row.job_id)


@app.command()
def results(
    job: str = typer.Argument(..., help="Job id or name."),
    download: Optional[Path] = typer.Option(None, help="Copy the leaderboard, labels and best model here."),
    as_json: bool = typer.Option(False, "--json", help="Print the leaderboard as JSON."),
) -> None:
    """The leaderboard of trials and the best model."""
    from nascloud.view import render_leaderboard

    state = _state()
    row = state.job(job)
    orchestrator = _orchestrator(state, row.job_id)
    folder = orchestrator.fetch_results()
    board_path = folder / "leaderboard.json"
    if not board_path.exists():
        raise UsageError(f"job {row.job_id} has no results yet (status: {row.status}); see `nascloud status {row.job_id}`")
    board = json.loads(board_path.read_text())
    if download:
        import shutil

        download.mkdir(parents=True, exist_ok=True)
        for item in folder.iterdir():
            shutil.copy2(item, download / item.name)
        folder = download
    if as_json:
        typer.echo(json.dumps(board, indent=2))
    else:
        render_leaderboard(board, folder)


@app.command()
def drill(job: str = typer.Argument(..., help="Job id or name.")) -> None:
    """Fire drill: preempt the job's instance the way the cloud would, and time the recovery."""
    from nascloud.orchestrator import drill as run_drill

    state = _state()
    row = state.job(job)
    seconds = run_drill(state, row.job_id, _provisioner(row))
    typer.echo(f"recovered: training again {seconds:.1f} s after the preemption")


@app.command()
def gc(
    yes: bool = typer.Option(False, "--yes", help="Remove without asking."),
    cloud: str = typer.Option("local", help="local | aws | gcp."),
) -> None:
    """Find instances tagged by nascloud whose job is over or whose lease lapsed, and remove them."""
    from nascloud.orchestrator import find_garbage
    from nascloud.provisioners import get_provisioner

    state = _state()
    provisioner = get_provisioner(cloud)
    garbage = find_garbage(state, provisioner)
    if not garbage:
        typer.echo("nothing to collect")
        return
    for instance, why in garbage:
        typer.echo(f"{instance.instance_id} (job {instance.job_id}): {why}")
    if not yes and not typer.confirm(f"terminate these {len(garbage)} instance(s)?"):
        raise typer.Exit(1)
    provisioner.terminate([instance for instance, _ in garbage])
    for job_id in sorted({instance.job_id for instance, _ in garbage}):
        provisioner.release(job_id)
    typer.echo(f"removed {len(garbage)} instance(s)")

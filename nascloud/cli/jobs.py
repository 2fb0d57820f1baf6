"""`nascloud launch`, `status`, `watch`, `logs`, `stop`, `resume`, `results`, `drill`, `ssh`, `gc`.

Every command but launch takes a job id or name launched from this machine, or the job's bucket URL (from
any machine). The laptop launches and observes; the job's instances govern it (nascloud/agent/governor.py).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import typer

from nascloud.cli.app import SETTINGS, app, ask_first, complete_job
from nascloud.hints import command

JOB_HELP = "Job id or name launched here, or the job's bucket URL (file://.../JOB-ID, s3://..., gs://...)."


def _open(job: str):
    from nascloud.observer import open_job

    return open_job(job)


def _follow(bucket) -> int:
    from nascloud.observer import EXIT_CODES, follow

    job_id = bucket.bundle().job_id
    try:
        return EXIT_CODES.get(follow(bucket), 0)
    except KeyboardInterrupt:
        typer.echo(f"\nstopped watching; the job goes on by itself ({command('watch', job_id)} shows it again, "
                   f"{command('stop', job_id)} stops it)")
        return 130


@app.command()
def launch(
    job_file: Path = typer.Argument(..., metavar="JOB.yaml", help="The job file (see examples/)."),
    settings: Optional[list[str]] = SETTINGS,
    cloud: Optional[str] = typer.Option(None, help="local | aws | gcp (overrides compute.cloud)."),
    bucket: Optional[str] = typer.Option(None, help="file://DIR, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX."),
    budget: Optional[float] = typer.Option(None, help="Hard budget in USD (overrides budget.usd)."),
    max_hours: Optional[float] = typer.Option(None, help="Deadline on the job's wall time, in hours."),
    price_per_hour: Optional[float] = typer.Option(
        None, help="Price used for the ledger and the cap instead of the catalog's (rehearse a budget on local)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="On a cloud, spend without asking first."),
    detach: bool = typer.Option(False, "--detach", help="Return at once; the job runs by itself either way."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print, as JSON, the exact requests the cloud would "
                                 "receive (and what it would spend, on stderr); spend nothing."),
    force: bool = typer.Option(False, "--force", help="Launch even if the estimate's P50 already exceeds the budget."),
    another: bool = typer.Option(False, "--another", help="Launch even if a job of this job file's name still runs "
                                                          "(a second search, billed apart)."),
) -> int:
    """Run the search on a group of (spot) instances that replaces a preempted one and stops at the budget,
    all without this machine; then follow it live (Ctrl-C leaves it running). On a cloud it says what it is
    about to spend and asks first."""
    from nascloud import launching
    from nascloud.job import load_job

    spec = load_job(job_file, settings).with_overrides(compute={"cloud": cloud, "price_per_hour": price_per_hour},
                                                       checkpoint={"bucket": bucket},
                                                       budget={"usd": budget, "max_hours": max_hours})
    if dry_run:
        quote, request = launching.dry_run(spec, price_per_hour)
        typer.echo("\n".join(["dry run, nothing launched:", *_spending(quote)]), err=True)
        typer.echo(json.dumps(request, indent=2))
        return 0
    if not another and (running := launching.running_namesakes(spec)):
        ask_first([f"job {', '.join(running)} of this job file ({spec.name}) is still running; a launch starts a "
                   "second search beside it, billed apart"], "Start a second job?",
                  f"job {running[-1]} of this job file is still running ({command('status', running[-1])})",
                  flag="--another")
    prepared = launching.prepare(spec, price_per_hour, force)
    for warning in prepared.warnings:  # before the question: they may change the user's mind
        typer.echo(f"Warning: {warning}", err=True)
    if prepared.costs_money and not yes:
        ask_first(_spending(prepared.quote), "Launch, and start spending?",
                  f"a launch on {spec.compute.cloud} spends money")
    job = launching.launch(prepared)
    job_id = prepared.bundle.job_id
    typer.echo(f"job {job_id}: {'; '.join(_spending(prepared.quote)[:2])}; state in {job.url}")
    if detach:
        typer.echo(f"the job runs by itself; {command('watch', job_id)} follows it, {command('stop', job_id)} stops it")
        return 0
    return _follow(job)


def _spending(quote) -> list[str]:
    """What a launch will spend, one line each: offer and price, estimate, budget, bucket."""
    from nascloud.formats import dollars, duration, per_hour
    from nascloud.job import is_placeholder

    offer, estimate, spec = quote.offer, quote.estimate, quote.spec
    market = "spot" if offer.get("spot") else "on-demand"
    gpu = offer.get("gpu") or "no GPU"
    where = ("this machine (local provider)" if offer["cloud"] == "local" else
             f"{offer['cloud']} {offer['instance_type']} ({gpu}, {market}) in {offer['region']}")
    deadline = f", deadline {duration(spec.budget.max_hours)}" if spec.budget.max_hours else ""
    bucket = spec.checkpoint.bucket
    return [
        f"{where} at {per_hour(offer['price_per_hour'])}",
        # The compute as `estimate`'s cost columns give it, then its "expected in all" (disk, IPv4, storage too).
        f"estimate {dollars(estimate['cost_usd']['p50'])} for compute (P90 {dollars(estimate['cost_usd']['p90'])}), "
        f"{dollars(estimate['total_usd']['mean'])} expected in all with extras, in "
        f"{duration(estimate['wall_hours']['p50'])}"
        + (" (over the budget: launch refuses it without --force)" if quote.over_budget else ""),
        f"budget {dollars(spec.budget.usd) if spec.budget.usd else 'none'}{deadline}",
        f"bucket {bucket}" + (" (the example's placeholder: set your own)"
                              if is_placeholder(bucket) else ""),
    ]


@app.command()
def watch(job: str = typer.Argument(..., help=JOB_HELP, autocompletion=complete_job)) -> int:
    """Follow a job live: spend, burn rate, projection, trials, events. Exit code: the job's final one."""
    return _follow(_open(job))


@app.command()
def status(
    job: Optional[str] = typer.Argument(None, help=JOB_HELP + " All jobs launched here when left out.",
                                         autocompletion=complete_job),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Jobs, their spend against budget and estimate, instances, and recent alerts."""
    from nascloud.observer import all_summaries, render_summaries, summary

    summaries = [summary(_open(job))] if job is not None else all_summaries()
    if as_json:
        typer.echo(json.dumps(summaries[0] if job is not None else summaries, indent=2))
    else:
        render_summaries(summaries)


@app.command()
def logs(
    job: str = typer.Argument(..., help=JOB_HELP, autocompletion=complete_job),
    follow_: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events."),
    agent: int = typer.Option(0, help="Also print the last N lines of the agent's log (from the bucket)."),
) -> None:
    """The job's events (launches, preemptions, alerts, stops), and with --agent N the agent's log."""
    from nascloud.formats import moment
    from nascloud.observer import SHOWN_FINAL, groups, job_status

    bucket = _open(job)
    if agent:
        typer.echo(bucket.log_tail(agent))
    seen = ""
    while True:
        for event in bucket.events(after=seen):
            typer.echo(f"{moment(event.time)} {event.kind:<14} {event.message}")
            seen = event.name
        if not follow_ or job_status(bucket, groups(bucket))[0] in SHOWN_FINAL:
            return
        time.sleep(1)


@app.command()
def stop(job: str = typer.Argument(..., help=JOB_HELP, autocompletion=complete_job)) -> None:
    """Ask the job's instance for a final snapshot and to end its groups; the job stays resumable."""
    from nascloud import launching
    from nascloud.errors import UsageError
    from nascloud.observer import groups, job_status

    bucket = _open(job)
    job_id = bucket.bundle().job_id
    if job_status(bucket, groups(bucket))[0] in ("finished", "failed"):
        raise UsageError(f"job {job_id} has already ended; nothing to stop")
    final = launching.stop(bucket, float(os.environ.get("NASCLOUD_STOP_TIMEOUT", "300")))
    from nascloud.dashboard import ENDINGS

    # A job that ended by itself meanwhile goes on as its ending says (a finished one is not resumed).
    typer.echo(f"job {job_id} {final}; its search state stays in {bucket.url}; {ENDINGS[final][1].format(job=job_id)}")


@app.command()
def resume(
    job: str = typer.Argument(..., help=JOB_HELP, autocompletion=complete_job),
    budget: Optional[str] = typer.Option(None, help="New budget: +USD adds to it, USD sets it."),
    max_hours: Optional[float] = typer.Option(None, help="New deadline on the job's wall time, in hours."),
    detach: bool = typer.Option(False, "--detach", help="Return at once; the job runs by itself either way."),
) -> int:
    """Continue a stopped job (at its budget, deadline, by `stop`, or halted) from its last snapshot."""
    from nascloud import launching
    from nascloud.budget import parse_budget_change
    from nascloud.job import check_field

    bucket = _open(job)
    usd = parse_budget_change(budget, bucket.budget().get("usd")) if budget is not None else None
    if usd is not None:
        check_field("budget.usd", usd, "--budget")
    if max_hours is not None:
        check_field("budget.max_hours", max_hours, "--max-hours")
    launching.resume(bucket, usd, max_hours)
    if detach:
        typer.echo(f"job {bucket.bundle().job_id} resumed; {command('watch', bucket.bundle().job_id)} follows it")
        return 0
    return _follow(bucket)


@app.command()
def results(
    job: str = typer.Argument(..., help=JOB_HELP, autocompletion=complete_job),
    download: Optional[Path] = typer.Option(
        None, help="Copy the leaderboard, labels, best model and its TFLite files here."),
    as_json: bool = typer.Option(False, "--json", help="Print the leaderboard as JSON."),
) -> None:
    """The leaderboard of trials and the best model."""
    from nascloud import launching
    from nascloud.errors import UsageError
    from nascloud.observer import render_leaderboard
    from nascloud.paths import nascloud_home

    bucket = _open(job)
    job_id = bucket.bundle().job_id
    folder = download or nascloud_home() / "results" / job_id
    board = launching.results(bucket, folder)
    if board is None:
        raise UsageError(f"job {job_id} has no results yet; see {command('status', job_id)}")
    if as_json:
        typer.echo(json.dumps(board, indent=2))
    else:
        render_leaderboard(board, folder)


@app.command()
def rm(
    job: str = typer.Argument(..., help=JOB_HELP, autocompletion=complete_job),
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking."),
) -> None:
    """Delete an ended job: its data in the bucket (snapshots, results, ledger, logs) and this machine's record
    of it, after saying how much it holds. A running job must be stopped first; one whose bucket no longer
    holds it (removed from another machine) is only forgotten here."""
    from nascloud import launching
    from nascloud.errors import JobGone
    from nascloud.formats import data_size
    from nascloud.state import JobCache

    try:
        bucket = _open(job)
    except JobGone as gone:  # removed from another machine: only this machine's record of it is left
        JobCache().forget(gone.job_id)
        typer.echo(f"forgot job {gone.job_id} here: its bucket no longer holds it")
        return
    job_id = bucket.bundle().job_id
    status, count, size = launching.holdings(bucket)
    if not yes:
        ask_first([f"job {job_id} ({status}) holds {count} objects, {data_size(size)}, in {bucket.url}"],
                  "Delete them all?", f"rm deletes job {job_id}'s data")
    launching.remove(bucket)
    typer.echo(f"removed job {job_id}: {count} objects, {data_size(size)}")


@app.command()
def drill(job: str = typer.Argument(..., help=JOB_HELP, autocompletion=complete_job)) -> None:
    """Fire drill: preempt the job's instance the way the cloud would, and time the group's recovery."""
    from nascloud import launching

    seconds = launching.drill(_open(job))
    typer.echo(f"recovered: training again {seconds:.1f} s after the preemption")


@app.command()
def ssh(
    job: str = typer.Argument(..., help=JOB_HELP, autocompletion=complete_job),
    command: Optional[str] = typer.Option(None, "--command", help="Run this on the instance, print its output "
                                          "and exit with its exit code, instead of opening a shell."),
) -> int:
    """Debug a job launched with compute.ssh_cidr: a shell (OpenSSH) on its running instance, pinned to the
    host key the instance published in the bucket; a key that differs is refused."""
    import sys

    from nascloud import remote

    target = remote.find_target(_open(job))
    if command is None:
        remote.exec_shell(target)
    code = remote.run(target, command, sys.stdout.buffer)
    if code:
        typer.echo(f"exit code {code}", err=True)
    return code


@app.command()
def gc(
    yes: bool = typer.Option(False, "--yes", "-y", help="Remove without asking."),
    cloud: str = typer.Option("local", help="local | aws | gcp."),
) -> None:
    """Find groups nascloud created whose job is over, halted or silent for an hour, and remove them."""
    from nascloud import launching
    from nascloud.provisioners import get_provisioner

    provisioner = get_provisioner(cloud)
    garbage = launching.find_garbage(provisioner)
    if not garbage:
        typer.echo("nothing to collect")
        return
    found = [f"group {group.name} of job {group.job_id} ({len(group.live)} running): {why}" for group, why in garbage]
    if yes:
        typer.echo("\n".join(found))
    else:
        ask_first(found, f"End and delete these {len(garbage)} group(s)?",
                  f"gc ends and deletes {len(garbage)} group(s)")
    launching.collect(provisioner, garbage)
    typer.echo(f"removed {len(garbage)} group(s)")

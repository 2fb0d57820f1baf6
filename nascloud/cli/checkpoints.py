"""`nascloud checkpoints list` and `pull`: a job's snapshots, and a copy of one on your own disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from nascloud.cli.app import Typer, app, ask_first, complete_job
from nascloud.errors import NascloudError, UsageError
from nascloud.formats import data_size, moment

checkpoints_app = Typer(help="A job's search-state snapshots in its bucket: list them, pull one.",
                        no_args_is_help=True)
app.add_typer(checkpoints_app, name="checkpoints")

JOB_HELP = ("A job id (or name) known to this machine, or the job's bucket URL: file:///path/JOB, "
            "s3://bucket/prefix/JOB or gs://bucket/prefix/JOB.")
# The COMMITTED column for each SnapshotInfo.status (the README's `nascloud checkpoints list`).
_STATUS = {"committed": "yes", "uncommitted": "no (a publish that never finished)",
           "damaged": "damaged (restore skips it)",
           "fallback": "fallback (older than a damaged snapshot: restore falls back to it)"}


def _open(job_or_url: str):
    """The job's store. A file:// job folder that does not exist is a wrong URL (exit 2), as a missing
    bucket is: launch writes the job's bundle there, so every job has its folder."""
    from nascloud.checkpoints import open_store, parse_url
    from nascloud.state import JobCache

    url = job_or_url if "://" in job_or_url else JobCache().find(job_or_url).job_url
    parsed = parse_url(url)
    if parsed.scheme == "file" and not Path(parsed.bucket).is_dir():
        raise UsageError(f"no folder {parsed.bucket} for {url}: check the job's bucket URL "
                         "(checkpoint.bucket in the job file, then the job id)")
    return open_store(url)


@checkpoints_app.command("list")
def list_snapshots(
    job_or_url: str = typer.Argument(..., metavar="JOB", help=JOB_HELP, autocompletion=complete_job),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: a list of snapshots, oldest first."),
) -> None:
    """List a job's kept snapshots, oldest first: id, time, files, size, and whether HEAD's chain holds it."""
    from nascloud.jobbucket import JobBucket

    store = _open(job_or_url)
    snapshots = store.list()
    if not snapshots:  # and no bundle either: a folder that is no job's, refused as `status` refuses it
        JobBucket(store).bundle()
    if as_json:
        typer.echo(json.dumps([{"snapshot_id": s.snapshot_id, "created_at": s.created_at, "files": s.files,
                                "bytes": s.bytes, "committed": s.committed, "status": s.status}
                               for s in snapshots], indent=2))
        return
    if not snapshots:
        typer.echo(f"no snapshots yet in {store.url}")
        return
    created = [moment(s.created_at) for s in snapshots]
    width = max(len("CREATED"), *map(len, created))
    typer.echo(f"{'SNAPSHOT':<10} {'CREATED':<{width}} {'FILES':>6} {'SIZE':>10}  COMMITTED")
    for s, when in zip(snapshots, created):
        files, size = ("-", "-") if s.files is None else (s.files, data_size(s.bytes))
        typer.echo(f"{s.snapshot_id:<10} {when:<{width}} {files:>6} {size:>10}  {_STATUS[s.status]}")


@checkpoints_app.command("pull")
def pull(
    job_or_url: str = typer.Argument(..., metavar="JOB", help=JOB_HELP, autocompletion=complete_job),
    directory: Path = typer.Argument(..., metavar="DIR", help="Made exactly equal to the snapshot "
                                     "(files not in it are removed)."),
    snapshot: Optional[str] = typer.Option(None, "--snapshot", help="This snapshot id instead of the "
                                           "latest committed one (see `nascloud checkpoints list`)."),
    force: bool = typer.Option(False, "--force", help="Remove or replace DIR's files the snapshot does not hold "
                                                      "without asking."),
) -> None:
    """Download a verified snapshot of a job's search state (the tuner's project directory) into DIR."""
    store = _open(job_or_url)
    overwritten = [] if force else store.overwrites(directory, snapshot)
    if overwritten:
        shown = [f"  {rel}" for rel in overwritten[:20]] + ([f"  ... and {len(overwritten) - 20} more"]
                                                           if len(overwritten) > 20 else [])
        ask_first([f"{directory} holds {len(overwritten)} file(s) the snapshot does not, which the pull would remove "
                   "or replace:", *shown], "Remove or replace them?",
                  f"{directory} is not empty: the pull would remove or replace {len(overwritten)} file(s) there "
                  f"({', '.join(overwritten[:3])}{', ...' if len(overwritten) > 3 else ''}); pull into an empty "
                  "folder", flag="--force")
    restored = store.restore(directory, snapshot)
    if restored is None:
        raise NascloudError(f"{store.url} has no snapshot yet: the job has not checkpointed; try again later")
    if store.last_restore_warning:
        typer.echo(f"Warning: {store.last_restore_warning}", err=True)
    info = next((s for s in store.list() if s.snapshot_id == restored), None)
    detail = f" ({info.files} files, {data_size(info.bytes)})" if info else ""
    typer.echo(f"restored snapshot {restored}{detail} into {directory}")

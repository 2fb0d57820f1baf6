"""`nascloud agent` (the command an instance runs) and `nascloud calibrate` (issue 4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from nascloud.cli.app import app


@app.command(hidden=True)  # what an instance runs: it still runs, but `nascloud --help` does not list it
def agent(
    job: str = typer.Argument(..., help="The job prefix URL (file://, s3://, gs://) holding bundle/job.json, "
                                        "or a job YAML to run the search on this machine."),
    instance_id: str = typer.Option("local", help="This instance's id, for the heartbeat, ledger and exit record."),
    work_dir: Path = typer.Option(Path("nascloud-work"), help="Local directory for the restored search."),
) -> int:
    """Run (or resume) the job's search: restore, search, snapshot, export. Exit 0 finished or stopped, 3
    budget or deadline, 75 preempted (resumable), 2 bad input, 1 failure."""
    import logging

    from nascloud.agent.runner import AgentOptions, run_agent

    logging.basicConfig(level=logging.INFO, format="nascloud agent: %(message)s")
    result = run_agent(AgentOptions(job, instance_id, work_dir))
    typer.echo(f"{result.status}: {result.message}")
    return result.exit_code


@app.command(hidden=True)
def instance(
    halt: Optional[str] = typer.Option(None, help="End the job's groups and this machine now, saying why."),
    instance_id: str = typer.Option("", help="With --halt: this instance's id (the budget timer knows it)."),
) -> None:
    """What the bootstrap becomes on an instance (its values come from the NASCLOUD_* environment): record
    the instance in the ledger, govern the budget, run the agent, and at the end set the groups to 0 and
    power off."""
    from nascloud.agent.governor import govern, halt_now

    if halt:
        halt_now(halt, instance_id)
    else:
        govern()


@app.command()
def calibrate(
    job_file: Path = typer.Argument(..., metavar="JOB.yaml", help="The job file whose search to time."),
) -> int:
    """Time one short trial of the job's search on this machine; `estimate` then uses the measured
    seconds per epoch and per sample instead of a guess."""
    import tempfile

    from nascloud.agent.runner import calibrate as measure
    from nascloud.estimating import calibration_path
    from nascloud.job import load_job

    spec = load_job(job_file)
    with tempfile.TemporaryDirectory(prefix="nascloud-calibrate-") as scratch:
        record = measure(spec, Path(scratch))
    path = calibration_path(spec.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    typer.echo(f"{record['seconds_per_epoch']:.2f} s per epoch of {record['samples']} samples on "
               f"{record['gpu'] or 'CPU'}; written to {path}")
    return 0

"""`nascloud agent` (the command an instance runs) and `nascloud calibrate` (issue 4)."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Optional

import typer

from nascloud.cli.app import app


@app.command()
def agent(
    job: str = typer.Argument(..., help="The job prefix URL (file://, s3://, gs://) holding bundle/job.json, "
                                        "or a job YAML to run the search on this machine."),
    instance_id: str = typer.Option("local", help="This instance's id, for the heartbeat and exit status."),
    spent_usd: float = typer.Option(0.0, help="Spend before this instance, in USD."),
    price_per_hour: Optional[float] = typer.Option(None, help="This instance's price (USD/h) for the budget "
                                                              "check; default: the bundle's."),
    budget_usd: Optional[float] = typer.Option(None, help="The job's hard budget in USD: stop (exit 3) at it."),
    deadline_at: Optional[float] = typer.Option(None, help="Unix time to stop at (exit 3)."),
    work_dir: Path = typer.Option(Path("nascloud-work"), help="Local directory for the restored search."),
) -> int:
    """Run (or resume) the job's search: restore, search, snapshot, export. Exit 0 finished, 3 budget or
    deadline, 75 preempted (resumable), 4 lease lapsed, 2 bad input, 1 failure."""
    from nascloud.agent.runner import AgentOptions, run_agent

    logging.basicConfig(level=logging.INFO, format="nascloud agent: %(message)s")
    result = run_agent(AgentOptions(job, instance_id, spent_usd, price_per_hour, budget_usd, deadline_at, work_dir))
    typer.echo(f"{result.status}: {result.message}")
    return result.exit_code


@app.command()
def calibrate(
    job_file: Path = typer.Argument(..., help="The job YAML whose search to time."),
) -> int:
    """Time one short trial of the job's search on this machine; `estimate` then uses the measured
    seconds per epoch and per sample instead of a guess."""
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

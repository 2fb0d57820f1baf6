"""`nascloud prices`, `estimate`, `plan`: what a search will cost, before any money is spent.

Thin: parse, call nascloud.estimating / nascloud.cost, render. matplotlib is imported only for --plot.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from nascloud.cli.app import SETTINGS, app
from nascloud.errors import UsageError
from nascloud.formats import dollars, duration, per_hour, significant
from nascloud.hints import command

# Options the three commands share, declared once (the flags are the job file's fields).
GPU_HELP = "Only this GPU (T4, V100, A10G, L4, A100...)."
GPU = typer.Option(None, help=GPU_HELP)
CLOUD = typer.Option(None, help="aws, gcp, lambda, paperspace or any.")
REGION = typer.Option(None, help="Only this region.")
SPOT = typer.Option(None, "--spot/--on-demand", help="Only spot, or only on-demand (default: both).",
                    show_default=False)
TRIALS = typer.Option(None, help="search.max_trials: candidates in one search.")
EPOCHS = typer.Option(None, help="search.epochs per candidate.")
SAMPLES = typer.Option(None, help="search.samples: training samples per epoch.")
SECONDS_PER_EPOCH = typer.Option(None, help="search.seconds_per_epoch on a T4.")
PRICE = typer.Option(None, help="Replace the catalog's $/h (reproduce a quoted figure).")
RATE = typer.Option(None, help="Replace the default spot interruption rate (per hour).")
CATALOG = typer.Option(None, "--catalog", help="A folder of catalog CSVs to use instead of the packaged one "
                       "(or set NASCLOUD_CATALOG).")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _console():
    import sys

    from rich.console import Console

    # Piped or captured output gets room for the whole table instead of rich's 80 columns. The text is data,
    # never markup: a note's "[min, max]" or a setting's "=[vanilla]" prints as written (and no emoji table
    # is loaded: ~4 ms of every estimate).
    return Console(highlight=False, markup=False, emoji=False, width=None if sys.stdout.isatty() else 200)


@app.command()
def prices(
    gpu: Optional[str] = GPU,
    cloud: Optional[str] = CLOUD,
    region: Optional[str] = REGION,
    as_json: bool = JSON,
    catalog_dir: Optional[Path] = CATALOG,
    refresh: Optional[str] = typer.Option(None, help="aws or gcp: fetch today's prices for the catalog's offers "
                                          "(needs credentials) and write them to --catalog DIR/<cloud>.csv first."),
) -> None:
    """List the catalog's GPU offers, cheapest first, with on-demand and spot $/h and where each came from."""
    from nascloud.pricing import load_catalog

    if refresh:
        _refresh(refresh, catalog_dir)
    catalog = load_catalog(catalog_dir)
    offers = sorted(catalog.select(gpu=gpu, cloud=cloud, region=region),
                    key=lambda o: (min(p for p in (o.spot, o.on_demand) if p is not None), o.cloud, o.zone))
    if as_json:
        typer.echo(json.dumps({"catalog": catalog.folder, "offers": [
            {"cloud": o.cloud, "region": o.region, "zone": o.zone, "instance_type": o.instance_type,
             "accelerator_type": o.accelerator_type or None, "gpu": o.gpu, "gpu_count": o.gpu_count,
             "vcpus": o.vcpus, "memory_gib": o.memory_gib, "on_demand_usd_per_hour": o.on_demand,
             "spot_usd_per_hour": o.spot, "speed_vs_t4": catalog.gpus[o.gpu].speed if o.gpu in catalog.gpus else None,
             "source": o.source, "as_of": o.as_of} for o in offers]}, indent=2))
        return
    from rich.table import Table

    table = Table("cloud", "region", "zone", "instance", "GPU", "vCPU", "GiB", "on-demand $/h", "spot $/h",
                  "speed", "as of", title=f"{len(offers)} offers, cheapest first ({catalog.folder})")
    for o in offers:
        speed = catalog.gpus.get(o.gpu)
        table.add_row(o.cloud, o.region, o.zone or "-", o.instance_type,
                      f"{o.gpu_count}×{o.gpu}" if o.gpu_count > 1 else o.gpu, f"{o.vcpus:g}", f"{o.memory_gib:g}",
                      significant(o.on_demand), significant(o.spot) if o.spot is not None else "-",
                      f"{speed.speed:g}{'*' if speed.basis == 'estimated' else ''}" if speed else "?", o.as_of)
    console = _console()
    console.print(table)
    console.print("speed: training speed relative to the T4 (* estimated; sources in gpus.csv). Multi-GPU rows "
                  "are listed, but a single search runs on one GPU. `--json` shows each row's source.")


def _refresh(cloud: str, catalog_dir: Optional[Path]) -> None:
    from nascloud.pricing import load_catalog, refresh

    if catalog_dir is None:
        raise UsageError("--refresh writes a catalog file: give --catalog DIR (then use it with NASCLOUD_CATALOG=DIR)")
    refreshers = {"aws": refresh.refresh_aws, "gcp": refresh.refresh_gcp}
    if cloud not in refreshers:
        raise UsageError(f"--refresh knows {', '.join(refreshers)}, not {cloud!r}")
    offers = refreshers[cloud](list(load_catalog().offers))
    refresh.write_offers(offers, catalog_dir / f"{cloud}.csv")


def _load_job(job: Optional[Path], settings: Optional[list[str]]):
    if settings and not job:
        raise UsageError("--set changes a job file's fields: give the job file too (e.g. examples/digits-local.yaml)")
    if job is None:
        return None
    from nascloud.job import load_job  # the job's schema (pydantic, ~15 ms): not for `estimate --hours`

    return load_job(job, settings or ())


# The numeric flags and the job-file field each one sets: a flag is checked by its field's rule.
FLAG_FIELDS = {"--trials": "search.max_trials", "--epochs": "search.epochs", "--samples": "search.samples",
               "--seconds-per-epoch": "search.seconds_per_epoch", "--price-per-hour": "compute.price_per_hour",
               "--interruptions-per-hour": "compute.interruptions_per_hour",
               "--checkpoint-minutes": "checkpoint.interval_minutes", "--budget": "budget.usd"}
MAX_HOURS = 100_000  # --hours: the work, not a job-file field


def _check_flags(hours: Optional[float], **flags) -> None:
    """Before the job file is read and anything slow runs: each flag given is finite and in its range."""
    if hours is not None and not (math.isfinite(hours) and 0 < hours <= MAX_HOURS):
        raise UsageError(f"--hours must be a number of hours in (0, {MAX_HOURS:,}], got {hours:g}")
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is not None:
            from nascloud.job import check_field  # the job's schema (pydantic): only for a flag to check

            check_field(FLAG_FIELDS[flag], value, flag)


def _prepare(job, settings, gpu, cloud, region, spot, hours, trials, epochs, samples, seconds_per_epoch, price_per_hour,
             interruptions_per_hour, checkpoint_minutes, budget, catalog_dir, all_offers=False):
    """Job file + flags -> the question estimate, plan and launch answer alike (nascloud.estimating.ask)."""
    from nascloud import estimating
    from nascloud.pricing import load_catalog

    _check_flags(hours=hours, trials=trials, epochs=epochs, samples=samples, seconds_per_epoch=seconds_per_epoch,
                 price_per_hour=price_per_hour, interruptions_per_hour=interruptions_per_hour,
                 checkpoint_minutes=checkpoint_minutes, budget=budget)
    spec = _load_job(job, settings)
    return estimating.ask(load_catalog(catalog_dir), spec, gpu=gpu, cloud=cloud, region=region, spot=spot, hours=hours,
                          trials=trials, epochs=epochs, samples=samples, seconds_per_epoch=seconds_per_epoch,
                          price_per_hour=price_per_hour, interruptions_per_hour=interruptions_per_hour,
                          checkpoint_minutes=checkpoint_minutes, budget=budget, all_offers=all_offers)


JOB_ARG = typer.Argument(None, metavar="JOB.yaml", show_default=False,
                         help="A job file: the workload, compute and budget come from it; flags override.")


@app.command()
def estimate(
    job: Optional[Path] = JOB_ARG,
    settings: Optional[list[str]] = SETTINGS,
    gpu: Optional[str] = typer.Option(None, help=f"{GPU_HELP} With --hours, the hours are on it."),
    cloud: Optional[str] = CLOUD,
    region: Optional[str] = REGION,
    spot: Optional[bool] = SPOT,
    hours: Optional[float] = typer.Option(None, help="The work as hours of training (on --gpu, else on a T4)."),
    trials: Optional[int] = TRIALS,
    epochs: Optional[int] = EPOCHS,
    samples: Optional[int] = SAMPLES,
    seconds_per_epoch: Optional[float] = SECONDS_PER_EPOCH,
    price_per_hour: Optional[float] = PRICE,
    interruptions_per_hour: Optional[float] = RATE,
    checkpoint_minutes: Optional[float] = typer.Option(None, help="Checkpoint interval (default: Young/Daly's optimum)."),
    budget: Optional[float] = typer.Option(None, help="USD: adds the probability of going over it."),
    all_offers: bool = typer.Option(False, "--all", help="Ignore the job file's pins (GPU, region, zone, "
                                    "instance type; a local job adds the clouds) and rank every offer."),
    top: int = typer.Option(12, min=1, help="Rows in the table (--json lists every option)."),
    as_json: bool = JSON,
    plot: Optional[Path] = typer.Option(None, help="Write a PNG of cost against wall time for the options."),
    catalog_dir: Optional[Path] = CATALOG,
) -> None:
    """Estimate a search's cost and wall time on every matching offer, cheapest expected cost first:
    P50/P90 from a Monte Carlo over spot interruptions and trial times, and P(over budget)."""
    from nascloud import estimating

    question = _prepare(
        job, settings, gpu, cloud, region, spot, hours, trials, epochs, samples, seconds_per_epoch, price_per_hour,
        interruptions_per_hour, checkpoint_minutes, budget, catalog_dir, all_offers)
    stated = samples if samples is not None else question.spec.search.samples if question.spec else None
    if stated is not None:
        from nascloud.formats import small_data_warning

        warning = small_data_warning(stated, "the workload states")
        if warning:  # stderr: stdout stays the estimate (and valid JSON with --json)
            typer.echo(f"Warning: {warning}", err=True)
    ranking = estimating.rank(question)
    if plot:
        _plot(ranking.estimates, plot, question.budget)
    if as_json:
        typer.echo(json.dumps({"workload": estimating.workload_json(question.resolved), "budget_usd": question.budget,
                               "options": [estimating.estimate_json(e, question.terms[estimating.option_key(e.option)])
                                           for e in ranking.estimates],
                               "skipped": ranking.skipped, "plot": str(plot) if plot else None}, indent=2))
        return
    chosen_interval = checkpoint_minutes is not None or bool(
        question.spec and question.spec.checkpoint.interval_minutes != "auto")
    _render_estimates(question, ranking, top, plot, chosen_interval)


def backstop_note(budget: float, usd_per_hour: float) -> str:
    """What a loop of failed boots can cost at most (README "When a boot fails")."""
    from nascloud.budget import backstop_bound_usd

    return (f"If boots fail and the instance cannot end its group, the launch's backstop ends it: at most "
            f"{dollars(backstop_bound_usd(budget, usd_per_hour, 60))} in all (the budget + 10 % + 11 min at "
            f"{per_hour(usd_per_hour)}).")


# The speed column's basis (gpus.csv): the reference GPU, the seed article, an estimate, this machine.
SPEED_MARKS = {"reference": " ref", "seed": " seed", "estimated": " est.", "measured": " meas.",
               "this machine": " here"}


def _speed(option, resolved) -> str:
    # This machine's pace is what calibrate (or a job's history) measured; before that, a guess of seconds per
    # epoch is all there is, and "1 here" would read as a measurement.
    if option.speed_basis == "this machine" and resolved.seconds_per_epoch_basis == "guess":
        return "not calibrated"
    return f"{option.speed:g}{SPEED_MARKS.get(option.speed_basis, '')}"


def _render_estimates(question, ranking, top, plot, chosen_interval: bool) -> None:
    from nascloud import estimating

    resolved, budget = question.resolved, question.budget
    from rich.table import Table

    shown = ranking.estimates[:top]
    from rich import box

    table = Table("#", "cloud", "region", "instance", "GPU", "speed", "kind", "$/h", "wall P50", "wall P90",
                  "cost P50", "cost P90", "+extras", "preempt.", *(["P(>budget)"] if budget else []), "note",
                  title=f"Work: {resolved.description}", box=box.SIMPLE)
    for i, e in enumerate(shown, 1):
        o = e.option
        table.add_row(str(i), o.offer.cloud, o.offer.region, o.offer.instance_type,
                      f"{o.offer.gpu_count}×{o.offer.gpu}" if o.offer.gpu_count > 1 else o.offer.gpu,
                      _speed(o, resolved), o.kind,
                      significant(o.price_per_hour), duration(e.wall_hours.p50), duration(e.wall_hours.p90),
                      dollars(e.cost_usd.p50), dollars(e.cost_usd.p90), dollars(e.extras_usd.mean),
                      f"{e.expected_preemptions:.2f}", *([f"{e.p_over_budget:.0%}"] if budget else []),
                      o.note or "")
    console = _console()
    console.print(table)
    best = ranking.estimates[0]
    basis = "as asked" if chosen_interval else "Young/Daly"
    interval = (f"checkpoint every {duration(best.interval_hours)} ({basis})"
                if math.isfinite(best.interval_hours) else "no periodic checkpoints needed")
    console.print("speed: × T4 and its basis (ref: the T4 itself, seed: the seed article, est.: estimated, here: "
                  "this machine as calibrated); --json gives each one's source")
    console.print(f"Cheapest: {best.option.offer.cloud} {best.option.offer.instance_type} {best.option.kind}, "
                  f"${best.total_usd.mean:,.2f} expected in all; {interval}. Extras: disk, IPv4, checkpoint storage, "
                  "model download.")
    if len(ranking.estimates) > top:
        console.print(f"{len(ranking.estimates) - top} more options: --top N or --json.")
    try:
        pick = ranking.launchable().option
        console.print(f"`launch` runs on the first row it can run: {pick.offer.cloud} {pick.offer.instance_type} "
                      f"{pick.kind}.")
        # GCP's backstop is a time limit, which legacy preemptible VMs cannot have (README "When a boot fails")
        preemptible = question.spec is not None and question.spec.compute.provisioning == "preemptible"
        if budget and (pick.offer.cloud == "aws" or pick.offer.cloud == "gcp" and not preemptible):
            console.print(backstop_note(budget, pick.price_per_hour))
    except UsageError as error:
        console.print(f"Note: {error}")
    for note in resolved.notes:
        console.print(f"Note: {note}")
    terms = question.terms[estimating.option_key(best.option)]
    shown = {**{k: resolved.terms[k] for k in ("trial_overhead", "job_cv") if k in resolved.terms}, **terms}
    console.print("Terms: " + "; ".join(f"{name} {term.value:.3g}{'' if name == 'job_cv' else ' s'} ({term.basis})"
                                        for name, term in shown.items())
                  + f"; speed {best.option.speed:g}× T4 ({best.option.speed_basis}). --json shows each one's source.")
    for skipped in ranking.skipped:
        console.print(f"Skipped: {skipped}")
    if plot:
        console.print(f"Plot written to {plot}")


def _plot(estimates, path: Path, budget: Optional[float]) -> None:
    if path.suffix.lower() != ".png":
        raise UsageError(f"--plot writes a PNG; give a file name ending in .png, got {path.name}")
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'nascloud[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = estimate_figure(estimates, budget)
    try:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as error:
        raise UsageError(f"cannot write {path}: {error.strerror}") from None
    finally:
        plt.close(fig)


PLOT_LABELS = 12  # the table's default rows: the options after them are drawn without a label


def estimate_figure(estimates, budget: Optional[float]):
    """Total cost against wall time, one point per option (bars to P90). Both axes start at 0, so that a
    spread is not magnified; the budget is a dashed line; each of the first options is labelled with its
    row number in the table, and labels are moved apart until none covers another."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for e in estimates:
        ax.errorbar(e.wall_hours.p50, e.total_usd.p50, xerr=[[0], [e.wall_hours.p90 - e.wall_hours.p50]],
                    yerr=[[0], [e.total_usd.p90 - e.total_usd.p50]], fmt="o" if e.option.spot else "s", capsize=3)
    top = max([e.total_usd.p90 for e in estimates] + [budget or 0])
    if budget:
        ax.axhline(budget, color="tab:red", linestyle="--", linewidth=1)
        ax.annotate(f"budget {dollars(budget)}", (0, budget), xytext=(4, 3), textcoords="offset points",
                    color="tab:red", fontsize=8)
    ax.set_xlim(left=0, right=max(e.wall_hours.p90 for e in estimates) * 1.25)
    ax.set_ylim(bottom=0, top=top * 1.15)
    ax.set_xlabel("wall time, hours (P50, bar to P90)")
    ax.set_ylabel("total cost, USD (P50, bar to P90)")
    ax.set_title("nascloud estimate: circles spot, squares on-demand; numbers are the table's rows")
    ax.grid(alpha=0.3)
    _spread_labels(fig, ax, [((e.wall_hours.p50, e.total_usd.p50),
                              f"{i} {e.option.offer.cloud} {e.option.offer.instance_type} {e.option.kind}")
                             for i, e in enumerate(estimates[:PLOT_LABELS], 1)])
    return fig


def _spread_labels(fig, ax, labels: list) -> None:
    """Each label beside its point; one that would cover a label already placed moves up above it, with
    a line back to its point."""
    renderer = fig.canvas.get_renderer()
    placed = []
    for point, text in sorted(labels, key=lambda label: label[0][1]):  # bottom up
        note = ax.annotate(text, point, xytext=(5, 0), textcoords="offset points", fontsize=7, va="center")
        box = note.get_window_extent(renderer)
        while any(box.overlaps(other) for other in placed):
            lift = max(other.y1 for other in placed if box.overlaps(other)) - box.y0 + 1  # pixels
            note.xyann = (5, note.xyann[1] + lift * 72 / fig.dpi)
            box = note.get_window_extent(renderer)
        if note.xyann[1]:
            note.arrow_patch = None
            note.set_annotation_clip(False)
            ax.annotate("", point, xytext=(5, note.xyann[1]), textcoords="offset points",
                        arrowprops={"arrowstyle": "-", "linewidth": 0.5, "color": "0.5"})
        placed.append(box)


def _setting(path: str, value) -> str:
    """One pasteable `--set`: a list as the job file writes it, quoted for the shell (brackets are a glob)."""
    import shlex

    text = json.dumps(value, separators=(",", ":")) if isinstance(value, list) else value
    return f"--set {shlex.quote(f'{path}={text}')}"


@app.command()
def plan(
    job: Optional[Path] = JOB_ARG,
    settings: Optional[list[str]] = SETTINGS,
    budget: Optional[float] = typer.Option(None, help="USD to split into stages (default: the job's budget.usd)."),
    gpu: Optional[str] = GPU,
    cloud: Optional[str] = CLOUD,
    region: Optional[str] = REGION,
    spot: Optional[bool] = SPOT,
    trials: Optional[int] = TRIALS,
    epochs: Optional[int] = EPOCHS,
    samples: Optional[int] = SAMPLES,
    seconds_per_epoch: Optional[float] = SECONDS_PER_EPOCH,
    price_per_hour: Optional[float] = PRICE,
    interruptions_per_hour: Optional[float] = RATE,
    as_json: bool = JSON,
    catalog_dir: Optional[Path] = CATALOG,
) -> None:
    """Split a budget into stages sized from the estimate: explore on a data subset, full searches with
    several seeds, refine the best, and a reserve; each with its cost, what it buys and the job-file
    overrides that run it."""
    from nascloud import cost, estimating

    if job is None and (trials is None or epochs is None):  # stages are trials and epochs, not hours
        raise UsageError("plan splits a search into stages: give its job file (nascloud plan "
                         "examples/digits-aws-t4-spot.yaml --budget 800) or --trials N --epochs E")
    question = _prepare(
        job, settings, gpu, cloud, region, spot, None, trials, epochs, samples, seconds_per_epoch, price_per_hour,
        interruptions_per_hour, None, budget, catalog_dir)
    spec, resolved, budget = question.spec, question.resolved, question.budget
    if budget is None:
        raise UsageError("plan needs a budget: give --budget USD or set budget.usd in the job file")
    best = estimating.rank(question).launchable().option  # what `launch` of the job would run on
    result = cost.plan(budget, resolved.trials, resolved.epochs, spec.search.seed_list[0] if spec else 1,
                       resolved.for_stage, best, question.assumptions[estimating.option_key(best)],
                       resolved.data_fraction)
    if as_json:
        typer.echo(json.dumps({"workload": estimating.workload_json(resolved)} | estimating.plan_json(result),
                              indent=2))
        return
    from rich.table import Table

    offer = best.offer
    from rich.table import Column

    table = Table("stage", "runs", "cost", "P90", "wall per run", "buys",
                  Column("launch JOB.yaml with (one line a run)", no_wrap=True),
                  title=f"Plan for {dollars(budget)} on {offer.cloud} {offer.instance_type} ({offer.gpu}, {best.kind}, "
                        f"{per_hour(best.price_per_hour)})")
    for s in result.stages:
        overrides = "\n".join(" ".join(_setting(k, v) for k, v in run.items()) for run in s.runs)
        table.add_row(s.name, str(len(s.runs)), dollars(s.mean_usd), dollars(s.estimate.total_usd.p90 * len(s.runs)),
                      duration(s.estimate.wall_hours.p50), s.buys, overrides)
    table.add_row("reserve", "", dollars(result.reserve_usd), "", "", "the P90 spread of the stages above: "
                  "preemptions and slow trials", "")
    console = _console()
    console.print(table)
    if result.unallocated_usd > 0.005:
        console.print(f"Unallocated: {dollars(result.unallocated_usd)}: the job's search fits with room to spare; "
                      "raise search.max_trials (or --trials) to spend it on a wider search.")
    for note in resolved.notes:
        console.print(f"Note: {note}")


@app.command()
def check(
    job: Optional[Path] = typer.Argument(None, metavar="JOB.yaml", show_default=False,
                                         help="The job file whose launch to check (else --cloud and --bucket)."),
    settings: Optional[list[str]] = SETTINGS,
    cloud: Optional[str] = typer.Option(None, help="aws | gcp (overrides compute.cloud)."),
    bucket: Optional[str] = typer.Option(None, help="s3://BUCKET/PREFIX or gs://BUCKET/PREFIX (overrides "
                                         "checkpoint.bucket)."),
) -> int:
    """Check what a launch needs from the cloud before any money moves: credentials, the offer and GPU quota,
    the permissions the launch uses, the bucket reachable and writable. One line each (ok, FAIL, or skip when
    the cloud would not say); exit 1 when any fails."""
    from nascloud.checking import check as check_launch
    from nascloud.job import parse_job

    spec = _load_job(job, settings)
    if spec is None:
        if not (cloud and bucket):
            raise UsageError("check needs a cloud and a bucket to try: give --cloud aws|gcp and --bucket URL, "
                             "or a job file")
        spec = parse_job({"name": "nascloud-check"})
    spec = spec.with_overrides(compute={"cloud": cloud}, checkpoint={"bucket": bucket})
    if spec.compute.cloud == "local":
        raise UsageError("the local provider needs no credentials, quota or bucket check; give --cloud aws or gcp")
    answers = check_launch(spec)
    for answer in answers:
        typer.echo(f"{'skip' if answer.ok is None else 'ok' if answer.ok else 'FAIL':<4}  {answer.what}: "
                   f"{answer.detail}")
    return 1 if any(answer.ok is False for answer in answers) else 0


@app.command()
def history(
    job: Optional[Path] = typer.Argument(None, metavar="JOB.yaml", show_default=False,
                                         help="Only jobs like this one (same data set, space, provider and GPU)."),
    as_json: bool = JSON,
) -> None:
    """How close past launch estimates were: each ended job's P50 cost and wall time against what it
    spent and took, and whether the P90 covered them. Read from the local cache that `status`, `watch` and
    the other observer commands fill from each job's bucket; `estimate` and `launch` set the model's
    terms from the same records."""
    from nascloud import history as past

    records = past.records()
    if job is not None:
        spec = _load_job(job, None)
        cloud = spec.compute.cloud
        key = past.similarity_key(spec, cloud, None if cloud == "local" else spec.compute.gpu)
        records = [r for r in records if r.get("similar") == key]
    rows = [row for row in (past.accuracy(r) for r in records) if row]
    if as_json:
        typer.echo(json.dumps({"jobs": rows}, indent=2))
        return
    if not rows:
        typer.echo(f"no ended job in the history yet; {command('status', 'JOB')} copies a finished job's history here")
        return
    from rich.table import Table

    table = Table("job", "runs", "trials", "preempt.", "spent", "by price history", "cost P50 / actual", "P90 covers",
                  "took", "wall P50 / actual", "P90 covers", "estimates use it",
                  title="Launch estimates against the bill")

    def ratio(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.2f}"

    def covers(value: Optional[bool]) -> str:
        return "-" if value is None else "yes" if value else "no"

    for r in rows:
        checked = r["by_price_history_usd"]
        used = "yes" if r["used_by_estimates"] else f"no ({r['status']}{', not complete' * (not r['complete'])})"
        table.add_row(r["job_id"], str(r["runs"]), str(r["trials"]), str(r["preemptions"]), dollars(r["actual_usd"]),
                      "-" if checked is None else dollars(checked), ratio(r["cost_ratio"]),
                      covers(r["cost_p90_covered"]),
                      duration(r["actual_hours"]), ratio(r["wall_ratio"]), covers(r["wall_p90_covered"]), used)
    console = _console()
    console.print(table)
    console.print(f"An estimate of a job like these rests on the {sum(r['used_by_estimates'] for r in rows)} marked "
                  "yes: complete (ended finished, or at its budget or deadline, with its ledger closed), with trials.")

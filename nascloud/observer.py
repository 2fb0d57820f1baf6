"""A job as any machine sees it: its bucket (ledger, progress, events, exit record) and its groups.

Observers decide nothing about the money (the instance does); they only tidy what the instance could not:
the ledger entry of an instance killed without warning (closed from the provider's own times), a group a
dead instance left above 0 after the job ended, and what costs nothing once the groups are at 0
(the empty group, templates, roles) is deleted by the next `status`, `watch` or `gc`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

from nascloud.errors import JobGone, NascloudError, UsageError
from nascloud.hints import command
from nascloud.jobbucket import FINAL, JobBucket, heartbeat_seconds

ENDING_GRACE_SECONDS = 60.0  # how long an instance at the job's end may take to write it (seconds, normally)
HALTED = "halted"  # the groups were ended without an exit record: the instance said why on the group (an
# observer then copies it into the exit record)
SHOWN_FINAL = FINAL + (HALTED,)
GONE = "gone"  # `status`'s word for a job this machine remembers whose bucket no longer holds it
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
    known = cache.find(ref)
    return remembered(JobBucket.open(known.job_url), known.job_id)


def remembered(bucket: JobBucket, job_id: str) -> JobBucket:
    """A job this machine's record names, with its bundle read; JobGone when the bucket no longer holds it
    (removed from another machine), rather than "not a job launch made"."""
    try:
        bucket.bundle()
    except UsageError:
        if bucket.store.get_json("bundle/job.json") is None:
            raise JobGone(job_id) from None
        raise
    return bucket


def provisioner(bucket: JobBucket):
    from nascloud.provisioners import provisioner_for

    return provisioner_for(bucket.bundle())


def groups(bucket: JobBucket, prov=None) -> Optional[list]:
    """The job's groups as the provider (or `prov`, its provisioner) lists them; None when it cannot be asked."""
    try:
        return (prov or provisioner(bucket)).groups(bucket.bundle().job_id)
    except NascloudError:
        return None


def job_status(bucket: JobBucket, found: Optional[list]) -> tuple[str, Optional[str]]:
    """(status, why): an exit record's final status; halted when the groups were ended without one;
    launching before the first instance recorded itself; else running (stopping once a stop is asked)."""
    record = bucket.exit_record() or {}
    if record.get("status") in SHOWN_FINAL:
        return record["status"], record.get("message")
    if found is not None and (not found or all(g.size == 0 for g in found)):
        reasons = list(dict.fromkeys(g.reason for g in found if g.reason))
        if boots := bucket.failed_boots():
            reasons.append(f"{len(boots)} boot{'s' * (len(boots) > 1)} failed, the last: "
                           f"{boots[-1].reason}")
        return HALTED, "; ".join(reasons) or "the job's groups are at 0"
    if bucket.stop_request():
        return "stopping", None
    if not bucket.ledger():
        return "launching", None
    return "running", None


def revive(bucket: JobBucket, prov) -> None:
    """A job that runs must have its engine: a dead one (the local supervisor; a cloud's never dies) is started
    again, and the job's events say so."""
    try:
        for name in prov.revive(bucket.bundle().job_id):
            bucket.add_event("engine-revived", f"the engine of group {name} (its supervisor on this machine) had "
                                               "died: started it again, so a lost instance is replaced")
    except NascloudError:
        pass  # an unreadable bucket or provider: the view says what it can


def tidy(bucket: JobBucket, found: Optional[list], status: str, reason: Optional[str] = None) -> None:
    """Close the ledger from the provider's listing; once the job ended, nothing of it may still bill. A halted
    job's reason goes into its exit record, and its instances into the ledger, before its groups, which
    held both, are deleted: where the bucket refuses, the groups stay (at 0 they cost nothing), so the next
    look, once the bucket is fixed, finds every instance that ran with its times, and the reason."""
    if found is None:
        return
    bundle = bucket.bundle()
    try:
        bucket.reconcile([i for g in found for i in g.instances], time.time())
        recorded = True
    except NascloudError:
        recorded = False  # a bucket this machine cannot write either: the view still shows what it can read
    if status not in SHOWN_FINAL:
        return
    prov = provisioner(bucket)
    ending = _ending(bucket, found, time.time())
    for group in found:
        if group.size and group.name not in ending:
            prov.resize(bundle.job_id, group.name, 0, reason=f"the job is {status}")
    if status == HALTED and found and (bucket.exit_record() or {}).get("status") != HALTED:
        try:
            bucket.write_exit(HALTED, reason or "the job's groups are at 0", "observer")
        except NascloudError:
            return
    if recorded and all(not g.live for g in found):
        prov.delete(bundle.job_id)


def _ending(bucket: JobBucket, found: list, now: float) -> set[str]:
    """The groups with an instance that is still writing the job's end (its final event, history, log and
    notice come after the exit record): live at the provider and seen in the ledger within the grace. It
    ends its groups itself when it is done; ending them now would cut those writes short. A silent one is
    ended once the grace is over."""
    grace = max(2 * heartbeat_seconds(), ENDING_GRACE_SECONDS)
    entries = {e.instance_id: e for e in bucket.ledger()}
    return {g.name for g in found for i in g.live
            if (e := entries.get(i.instance_id)) and now - max(e.last_seen, e.ended_at or 0) <= grace}


def summary(bucket: JobBucket, now: Optional[float] = None, tidy_up: bool = True) -> dict:
    """What `status --json` prints and the live view shows: one reading of the bucket (every figure below
    uses the ledger, events or charges; each is listed and read once)."""
    with bucket.reading():
        return _summary(bucket, now, tidy_up)


def _summary(bucket: JobBucket, now: Optional[float], tidy_up: bool) -> dict:
    from nascloud.jobbucket import money

    now = now or time.time()
    bundle = bucket.bundle()
    found = groups(bucket)
    status, reason = job_status(bucket, found)
    if tidy_up:
        tidy(bucket, found, status, reason)
        if status in ("running", "launching"):
            revive(bucket, provisioner(bucket))
    if status in SHOWN_FINAL:
        from nascloud import history

        history.cache(bucket, bundle.job_id, lambda: provisioner(bucket))  # so `estimate` learns from it offline
    tick = money(bucket, now)
    ledger = bucket.instances()
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
        # An ended job burns nothing, whatever its last instance cost.
        "money": {k: v for k, v in tick.as_dict().items() if k not in ("alerts", "stop", "reason")}
        | ({"burn_usd_per_hour": 0.0, "projected_usd": tick.spent_usd, "remaining_hours": 0.0}
           if status in SHOWN_FINAL else {}),
        "alert_thresholds": list(bundle.spec.budget.alerts),
        "estimate": {"cost_usd": estimate.get("cost_usd"), "wall_hours": estimate.get("wall_hours")},
        "actual": {"cost_usd": round(tick.spent_usd, 6), "wall_hours": round((ended - bundle.created_at) / 3600, 4)},
        "instances": [{"instance_id": e.instance_id, "group": e.group, "zone": e.zone, "launched_at": e.launched_at,
                       "last_seen": e.last_seen, "ended_at": e.ended_at, "end_reason": e.end_reason,
                       "price_per_hour": e.price_per_hour, "spot": e.spot} for e in ledger],
        "groups": None if found is None else [{"name": g.name, "size": g.size, "live": len(g.live), "reason": g.reason}
                                              for g in found],
        "preemptions": sum(1 for e in ledger if e.end_reason in ("preempted", "lost")),
        # Until the agent reports, the job file says how many trials there will be.
        "progress": {"max_trials": bundle.spec.search.job_trials, "epochs": bundle.spec.search.epochs,
                     **bucket.progress()},
        "alerts": [{"time": e.time, "message": e.message, **(e.data or {})} for e in bucket.events() if e.kind == "alert"],
    }


def all_summaries() -> list[dict]:
    """Every job this machine knows, newest last; a job whose bucket cannot be read, or no longer holds it,
    says so in its row instead of taking the table down."""
    from nascloud.state import JobCache

    rows = []
    for known in JobCache().jobs():
        try:
            rows.append(summary(remembered(JobBucket.open(known.job_url), known.job_id)))
        except NascloudError as error:
            status, reason = (GONE, error.why) if isinstance(error, JobGone) else ("unreadable", str(error))
            rows.append({"job_id": known.job_id, "name": known.name, "status": status, "reason": reason,
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


# What a narrow terminal loses first. The job id (what every other command takes), the status and the money
# are never cut; where even they do not fit, a few lines a job.
DROPPED_FIRST = ("preempt.", "region", "cloud", "GPU", "best", "started", "trials")


def render_summaries(summaries: list[dict], now: Optional[float] = None) -> None:
    """`nascloud status`: a table, one row a job, as wide as the terminal (or COLUMNS) allows: the columns of
    DROPPED_FIRST go in that order, and a start's age wraps under its time, before anything is cut. A pipe
    gets the whole table; colour only on a terminal, and not with NO_COLOR (rich's rules)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    now = now or time.time()
    console = Console(highlight=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200)
    if not summaries:
        console.print(f"no jobs yet; start one with {command('launch', 'JOB.yaml')}")
        return
    header = ("job", "status", "started", "cloud", "GPU", "region", "trials", "best", "spent", "budget",
              "estimate P50", "preempt.")
    rows = [_status_row(s, now) for s in summaries]
    # The narrowest each column can be: whole cells, but a start's " (3 d 04 h ago)" may go under its time.
    least = {column[0]: max(len(cell.partition(" (")[0] if column[0] == "started" else cell) for cell in column)
             for column in zip(header, *rows)}

    def fits(columns: list[str]) -> bool:  # the cells, and the table's borders and padding
        return sum(least[c] for c in columns) + 3 * len(columns) + 1 <= console.width

    shown = list(header)
    for name in DROPPED_FIRST:
        if fits(shown):
            break
        shown.remove(name)
    if fits(shown):
        table = Table()
        for name in shown:
            table.add_column(name, no_wrap=name != "started", min_width=least[name])
        for s, row in zip(summaries, rows):
            cells = dict(zip(header, row))
            status, spent = _glance(s)
            cells["status"], cells["spent"] = Text(cells["status"], status), Text(cells["spent"], spent)
            table.add_row(*(cells[name] for name in shown))
        console.print(table)
    else:
        for s, row in zip(summaries, rows):
            cells = dict(zip(header, row))
            console.print(Text.assemble((cells["job"], "bold"), "  ", (cells["status"], _glance(s)[0])),
                          soft_wrap=True)
            console.print(f"  started {cells['started']} on {cells['cloud']} {cells['GPU']} in {cells['region']}")
            console.print(f"  trials {cells['trials']}, best {cells['best']}; spent {cells['spent']} of "
                          f"{cells['budget']} (estimate P50 {cells['estimate P50']}); "
                          f"{cells['preempt.']} preemption(s)")
    for s in summaries:
        if s.get("reason") and s["status"] not in ("running", "launching"):
            console.print(f"{s['job_id']}: {s['reason']}", soft_wrap=True)


def _glance(s: dict) -> tuple[str, str]:
    """The styles of a row's status and spent cells: red over the budget (or failed), yellow once an alert
    fired, a running job green."""
    over = bool(s["budget_usd"]) and s["spent_usd"] >= s["budget_usd"]
    if over or s["status"] in ("failed", HALTED, "budget"):
        return "red", "red" if over else ""
    if s.get("alerts") and s["status"] not in SHOWN_FINAL:
        return "yellow", "yellow"
    return "green" if s["status"] == "running" else "", ""


def _status_row(s: dict, now: float) -> tuple[str, ...]:
    from nascloud.formats import dollars

    progress, offer = s["progress"], s.get("offer") or {}
    estimate = ((s.get("estimate") or {}).get("cost_usd") or {}).get("p50")
    local = offer.get("cloud") == "local"
    return (s["job_id"], s["status"], _started(s.get("created_at"), now), offer.get("cloud") or "-",
            offer.get("gpu") or ("CPU" if local else "-"), "-" if local else offer.get("region") or "-",
            f"{progress.get('trials_done', 0)}/{progress.get('max_trials', '?')}", _fmt(progress.get("best_score")),
            dollars(s["spent_usd"]), dollars(s["budget_usd"]) if s["budget_usd"] else "-",
            dollars(estimate) if estimate is not None else "-", str(s["preemptions"]))


def _started(created_at: Optional[float], now: float) -> str:
    """When a job started, and how long ago: 2024-11-30 14:02:05 CET (3 d 04 h ago), 14:02:05 CET (40 s ago)."""
    from nascloud.formats import duration, moment

    if created_at is None:
        return "-"
    return f"{moment(created_at, now)} ({duration(max(0.0, now - created_at) / 3600)} ago)"


def render_leaderboard(board: dict, folder: Path) -> None:
    """`nascloud results`: the trials, best first, with the searched hyperparameters in words and the best
    model's accuracy on the held-out test set."""
    from rich.console import Console
    from rich.table import Table

    from nascloud.formats import trial_number

    trials = board.get("trials", board if isinstance(board, list) else [])
    objective = board.get("objective") or "score"
    best = board.get("best_trial_id")
    test = board.get("test_accuracy")
    seeded = bool(board.get("seeds"))  # several seeds: each trial says whose search it was
    shown: set = set()
    readable = [readable_hyperparameters(trial.get("hyperparameters") or {}, shown) for trial in trials]
    others = differing_hyperparameters([trial.get("hyperparameters") or {} for trial in trials], shown)
    table = Table("trial", *(["seed"] if seeded else []), objective, "test accuracy", "block", "depth", "kernel",
                  "dropout", "optimizer", *("/".join(path.split("/")[-2:]) for path in others), "params", "seconds",
                  "")
    for trial, hp in zip(trials, readable):
        is_best = trial.get("trial_id") == best
        values = trial.get("hyperparameters") or {}
        table.add_row(trial_number(trial.get("trial_id")), *([str(trial.get("seed", ""))] if seeded else []),
                      _fmt(trial.get("score")),
                      _fmt(test) if is_best else "", hp["block"], hp["depth"], hp["kernel"], hp["dropout"],
                      hp["optimizer"], *(_value(values.get(path)) for path in others),
                      f"{trial['parameters']:,}" if trial.get("parameters") else "-",
                      f"{trial['duration_seconds']:.0f}" if trial.get("duration_seconds") is not None else "-",
                      "★ best" if is_best else ("" if trial.get("status") == "COMPLETED"
                                               else str(trial.get("status", "")).lower()),
                      style="bold green" if is_best else "")
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    console.print(table)
    if best is not None and test is not None:
        console.print(f"best: trial {trial_number(best)}, test accuracy {test:.4f} on "
                      f"{board.get('test_samples', '?')} held-out samples")
    _print_seeds(console, board.get("seeds"), objective)
    _print_test_report(console, board.get("test_report"), board.get("baseline"))
    model = folder / "best_model.keras"
    if model.exists():
        console.print(f"best model: {model} (labels: {folder / 'labels.json'})")
    if board.get("deploy"):
        render_deploy(console, board["deploy"], folder)


def render_deploy(console, deploy: dict, folder: Path) -> None:
    """The deployability report: one row per model (Keras, TFLite, INT8), or why a conversion failed."""
    from rich.table import Table

    from nascloud.formats import data_size

    keras = deploy["keras"]
    console.print(f"deployability: {deploy['parameters']:,} parameters; CPU latency per sample (batch 1, median "
                  f"of {deploy['latency_runs']}); the files in {folder}, the .tflite ones run with {deploy['runtime']}",
                  soft_wrap=True)
    table = Table("model", "test accuracy", "kept", "size", "latency", "file")
    table.add_row("keras", _fmt(keras["test_accuracy"]), "", data_size(deploy["keras_bytes"]),
                  _latency(keras["latency_ms"]), "best_model.keras")
    for name, label in (("tflite", "tflite"), ("int8", "tflite int8")):
        part = deploy[name]
        if "error" in part:
            table.add_row(label, f"conversion failed: {part['error']}", "", "", "", "", style="red")
            continue
        kept = part.get("accuracy_kept")
        table.add_row(label, _fmt(part["test_accuracy"]), f"{kept:.1%}" if kept is not None else "",
                      data_size(part["bytes"]), _latency(part["latency_ms"]), part["file"])
    console.print(table)


def _latency(ms: float) -> str:
    return f"{ms * 1000:.0f} µs" if ms < 1 else f"{ms:.1f} ms"


MATRIX_CLASSES = 12  # more classes than this: the confusion matrix is left to `results --json`


def _print_test_report(console, report: Optional[dict], baseline: Optional[dict]) -> None:
    """The best model against the plain baseline, then per class on the test split: precision, recall, F1,
    support and the confusion matrix's row (how the class's samples were predicted)."""
    from rich.table import Table

    if baseline:
        metric = baseline["compared_on"].replace("_", " ")
        margin = baseline["margin"]
        verdict = (f"the search beat the baseline by {margin * 100:.1f} points of test {metric}"
                   if baseline["search_beat_it"] else "the search did not beat it ("
                   + (f"{-margin * 100:.1f} points below" if margin < 0 else "a tie") + f" on test {metric})")
        console.print(f"baseline ({baseline['kind']}, same split): test accuracy {baseline['test_accuracy']:.4f}, "
                      f"balanced accuracy {baseline['balanced_accuracy']:.4f}; {verdict}", soft_wrap=True)
    if not report:
        return
    classes, matrix = report["classes"], report["confusion_matrix"]
    shown = len(classes) <= MATRIX_CLASSES
    console.print(f"best model per class on the test split, balanced accuracy {report['balanced_accuracy']:.4f}"
                  + ("; rows: the true class, → columns: predicted as" if shown else ""), soft_wrap=True)
    table = Table("class", "precision", "recall", "F1", "support", *(
        [f"→ {c['label']}" for c in classes] if shown else []))
    for c, row in zip(classes, matrix):
        table.add_row(c["label"], f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"]),
                      *([str(n) for n in row] if shown else []), style="red" if c["recall"] == 0 else "")
    console.print(table)
    if not shown:
        console.print(f"confusion matrix ({len(classes)} classes): {command('results', 'JOB', '--json')}, test_report")


def _print_seeds(console, seeds: Optional[dict], objective: str) -> None:
    """Several seeds: each one's best score, test accuracy, time and cost, then how far apart they ended."""
    if not seeds:
        return
    from rich.table import Table

    from nascloud.formats import dollars, trial_number

    table = Table("seed", f"best {objective}", "trial", "test accuracy", "seconds", "cost", "")
    for run in seeds["runs"]:
        table.add_row(str(run["seed"]), _fmt(run["best_score"]), trial_number(run["best_trial_id"] or "-"),
                      _fmt(run["test_accuracy"]), f"{run['seconds']:.0f}", dollars(run["cost_usd"]),
                      "★ exported" if run["seed"] == seeds.get("best_seed") else "")
    console.print(table)
    for name, label in (("best_score", f"best {objective}"), ("test_accuracy", "test accuracy")):
        if seeds.get(name):
            figures = seeds[name]
            console.print(f"{label} over {len(seeds['runs'])} seeds: mean {figures['mean']:.4f}, spread (max - min) "
                          f"{figures['spread']:.4f}, standard deviation {figures['std']:.4f}")
    ledger = seeds["ledger"]
    console.print(f"cost: {dollars(ledger['total_usd'])} in the ledger at the export, of which "
                  f"{dollars(ledger['outside_seeds_usd'])} outside any seed (boot, restore, export, billing minimum, "
                  "bucket) shared among the seeds in proportion to their own cost", soft_wrap=True)


# The block each AutoKeras block's hyperparameter path names (image_block/<this>_1/...).
BLOCKS = {"conv_block": "vanilla", "res_net_block": "resnet", "xception_block": "xception",
          "efficient_net_block": "efficient", "dense_block": "dense"}


def readable_hyperparameters(values: dict, shown: Optional[set] = None) -> dict:
    """AutoKeras' hyperparameter paths as the job file's space names them: block type, depth (blocks ×
    layers), kernel size, dropout, and the optimizer with its learning rate; "-" where a trial had none.
    The paths these columns show are added to `shown`."""
    shown = set() if shown is None else shown
    shown.update(("optimizer", "learning_rate"))

    def last(name: str, inside: str = ""):
        path = next((k for k in values if k.endswith("/" + name) and inside in k), None)
        shown.add(path)
        return values.get(path)

    block = last("block_type") or next((label for path, label in BLOCKS.items()
                                        if any(f"/{path}_" in k for k in values)), None)
    blocks, layers = last("num_blocks"), last("num_layers")
    depth = "×".join(str(v) for v in (blocks, layers) if v is not None)
    body = next((f"/{path}_" for path in BLOCKS if any(f"/{path}_" in k for k in values)), "/")
    optimizer = values.get("optimizer")
    rate = values.get("learning_rate")
    return {"block": str(block or "-"), "depth": depth or "-",
            "kernel": str(last("kernel_size") or "-"),
            "dropout": "-" if last("dropout", body) is None else f"{last('dropout', body):g}",
            "optimizer": f"{optimizer}, lr {rate:g}" if optimizer and rate is not None else str(optimizer or "-")}


def differing_hyperparameters(trials: list[dict], shown: set) -> list[str]:
    """The paths, other than those `shown`, whose value differs between the trials that have them (a trial
    without one did not search it): two trials are never shown as identical rows."""
    seen: dict[str, list] = {}
    for values in trials:
        for path, value in values.items():
            if path not in shown and value not in seen.setdefault(path, []):
                seen[path].append(value)
    return sorted(path for path, found in seen.items() if len(found) > 1)


def _value(value) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"

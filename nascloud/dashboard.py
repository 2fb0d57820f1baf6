"""The live view of one job: a Rich renderable on a terminal, plain lines when stdout is a pipe or a log.

Everything shown comes from one plain `JobView` record, built from the job summary that `status --json`
also prints (observer.summary, with the budget tick under "money") and the job's events. New alerts
ring the terminal bell; each alert is shown once, as the event it is.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, TextIO

from nascloud.formats import dollars, duration, moment, per_hour, trial_number
from nascloud.hints import command

RECENT_EVENTS = 8
FINAL = ("finished", "stopped", "budget", "deadline", "failed", "halted")
# What a final status means, and how to go on from it ({job}: the job's id).
ENDINGS = {
    "finished": ("finished", f"{command('results', '{job}')} shows the leaderboard and the best model"),
    "stopped": ("stopped on request, with a final snapshot", f"{command('resume', '{job}')} continues it"),
    "budget": ("stopped at its budget, with a final snapshot",
               f"{command('resume', '{job}', '--budget', '+USD')} continues it with more money"),
    "deadline": ("stopped at its deadline, with a final snapshot",
                 f"{command('resume', '{job}', '--max-hours', 'H')} continues it with more time"),
    "failed": ("failed", f"{command('logs', '{job}', '--agent', 50)} shows why"),
    "halted": ("halted: its instance ended the job's groups", f"{command('resume', '{job}')} continues it once fixed"),
}


@dataclass(frozen=True)
class InstanceView:
    instance_id: str
    price_per_hour: float
    spot: bool
    launched_at: Optional[float]
    ended_at: Optional[float]
    end_reason: Optional[str]


@dataclass(frozen=True)
class TrialView:
    number: str  # as every screen numbers trials (formats.trial_number)
    score: Optional[float]
    seconds: Optional[float]
    status: str


@dataclass(frozen=True)
class EventView:
    time: float
    kind: str
    message: str


@dataclass(frozen=True)
class JobView:
    job_id: str
    status: str
    now: float
    spent_usd: float
    bucket_usd: float = 0.0  # the part of spent_usd that is bucket storage and requests
    budget_usd: Optional[float] = None
    alert_thresholds: tuple[float, ...] = ()  # fractions of the budget at which alerts fire
    burn_usd_per_hour: Optional[float] = None
    projected_usd: Optional[float] = None
    p_over: Optional[float] = None
    remaining_hours: Optional[float] = None
    elapsed_hours: Optional[float] = None
    max_hours: Optional[float] = None
    reason: Optional[str] = None  # why a final job ended, from its exit record
    cloud: str = ""
    instance_type: str = ""
    instances: tuple[InstanceView, ...] = ()
    max_trials: int = 0
    epochs: int = 0  # per trial
    trials_done: int = 0
    trials_failed: int = 0
    trials: tuple[TrialView, ...] = ()  # in trial order
    running_trial: Optional[str] = None
    running_epoch: Optional[int] = None  # the epoch being trained, from 1
    seed: Optional[str] = None  # a job of several seeds: the one searching, "2/3"
    best_score: Optional[float] = None
    objective: str = ""
    events: tuple[EventView, ...] = ()
    alerts: tuple[str, ...] = ()  # alerts new since the last view: they ring the bell

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def preemptions(self) -> int:
        return sum(1 for i in self.instances if i.end_reason in ("preempted", "lost"))

    @property
    def best_trial(self) -> Optional[str]:
        scored = [t for t in self.trials if t.score is not None and t.status == "COMPLETED"]
        return next((t.number for t in scored if t.score == self.best_score), None)

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any], events: Sequence[Any] = (),
                     now: Optional[float] = None, new_alerts: Sequence[str] = ()) -> "JobView":
        """From observer.summary's dict (also `status --json`) and Event rows (time, kind, message)."""
        money = summary.get("money") or {}
        progress = summary.get("progress") or {}
        running = progress.get("running")
        offer = summary.get("offer") or {}
        epochs = progress.get("epochs") or 0
        return cls(
            job_id=summary["job_id"], status=summary["status"], now=now if now is not None else time.time(),
            spent_usd=money.get("spent_usd", summary.get("spent_usd", 0.0)), budget_usd=summary.get("budget_usd"),
            alert_thresholds=tuple(sorted(summary.get("alert_thresholds") or ())),
            bucket_usd=summary.get("bucket_usd", 0.0),
            burn_usd_per_hour=money.get("burn_usd_per_hour"), projected_usd=money.get("projected_usd"),
            p_over=money.get("p_over"), remaining_hours=money.get("remaining_hours"),
            elapsed_hours=(summary.get("actual") or {}).get("wall_hours"), max_hours=summary.get("max_hours"),
            reason=summary.get("reason"), cloud=offer.get("cloud") or "",
            instance_type=offer.get("instance_type") or "",
            instances=tuple(InstanceView(i["instance_id"] or "(launching)", i["price_per_hour"], bool(i["spot"]),
                                         i["launched_at"], i["ended_at"], i["end_reason"])
                            for i in summary.get("instances") or ()),
            max_trials=progress.get("max_trials") or 0, epochs=epochs, trials_done=progress.get("trials_done") or 0,
            trials_failed=progress.get("trials_failed") or 0,
            trials=tuple(sorted((TrialView(trial_number(t["trial_id"]), t.get("score"), t.get("duration_seconds"),
                                           t.get("status") or "") for t in progress.get("trials") or ()),
                                key=lambda t: int(t.number) if t.number.isdigit() else 0)),
            running_trial=trial_number(running["trial_id"]) if running else None,
            # The agent reports the epochs a trial has done; the one training now is the next.
            running_epoch=min(running["epoch"] + 1, epochs or running["epoch"] + 1) if running else None,
            seed=f"{progress['seed']['index']}/{progress['seed']['of']}" if progress.get("seed") else None,
            best_score=progress.get("best_score"), objective=progress.get("objective") or "",
            events=tuple(EventView(e.time, e.kind, e.message) for e in events), alerts=tuple(new_alerts))


# ---- formatting shared by both renderers -------------------------------------------------------

def _score(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4g}"


def headline(view: JobView) -> str:
    if view.final:
        words, _ = ENDINGS.get(view.status, (view.status, ""))
        return f"{view.job_id}: {words}, after {duration(view.elapsed_hours)}"
    return f"{view.job_id}: {view.status}, {duration(view.elapsed_hours)} elapsed"


def money_line(view: JobView) -> str:
    budget = f" of {dollars(view.budget_usd)}" if view.budget_usd else ""
    bucket = f" (bucket {dollars(view.bucket_usd)})" if view.bucket_usd >= 0.005 else ""
    line = f"spent {dollars(view.spent_usd)}{budget}{bucket}, burn {per_hour(view.burn_usd_per_hour)}"
    if view.final:  # nothing more will be spent, and nothing is left to finish
        return line
    over = f", P(over budget) {view.p_over:.0%}" if view.p_over is not None else ""
    return f"{line}, projected {dollars(view.projected_usd)}{over}, finish in {duration(view.remaining_hours)}"


def trials_line(view: JobView) -> str:
    running = ""
    if view.running_trial and not view.final:
        of = f"/{view.epochs}" if view.epochs else ""
        running = f", running trial {view.running_trial} (epoch {view.running_epoch}{of})"
    failed = f", {view.trials_failed} failed" if view.trials_failed else ""
    seed = f"seed {view.seed}, " if view.seed and not view.final else ""
    best = ""
    if view.best_score is not None:
        which = f" (trial {view.best_trial})" if view.best_trial else ""
        best = f", best {view.objective or 'score'} {_score(view.best_score)}{which}"
    return f"{seed}trials {view.trials_done}/{view.max_trials or '?'}{failed}{running}{best}"


def instance_line(view: JobView) -> str:
    current = view.instances[-1] if view.instances else None
    if current is None:
        return "no instance yet"
    kind = "this machine" if view.cloud == "local" else (
        f"{view.instance_type or '?'}, {'spot' if current.spot else 'on-demand'}")
    return (f"instance {current.instance_id} ({kind}, {per_hour(current.price_per_hour)}), "
            f"{view.preemptions} preemption(s)")


def ending_lines(view: JobView) -> list[str]:
    """For a final job: why it ended, and the command that goes on from there (with the real job id)."""
    if not view.final:
        return []
    _, then = ENDINGS.get(view.status, ("", ""))
    lines = [f"why: {view.reason}"] if view.reason else []
    return lines + ([f"next: {then.format(job=view.job_id)}"] if then else [])


def status_lines(view: JobView) -> list[str]:
    """Where the job stands, as log lines: headline, money, trials, instance, deadline, how it ended."""
    lines = [headline(view), money_line(view), trials_line(view), instance_line(view)]
    if view.max_hours:
        lines.append(f"wall time {duration(view.elapsed_hours)} of {duration(view.max_hours)} (deadline)")
    return lines + ending_lines(view)


def bar_style(view: JobView) -> str:
    """The budget bar's colour: green until the first alert threshold, yellow past it, orange past the
    next ones, red past the last (or over the budget)."""
    fraction = view.spent_usd / view.budget_usd
    thresholds = view.alert_thresholds or (1.0,)
    passed = sum(fraction >= t for t in thresholds)
    if fraction >= 1 or passed == len(thresholds):
        return "red"
    return ("green", "yellow")[passed] if passed < 2 else "dark_orange"


def trials_table(view: JobView):
    """A score per trial (the best marked), then the trial training now with its epoch."""
    from rich.table import Table

    trials = Table("trial", view.objective or "score", "seconds", "")
    running = view.running_trial if not view.final else None
    for t in view.trials:
        if t.number == running:  # the trial's own record says RUNNING: its row is the one with its epoch, below
            continue
        best = t.number == view.best_trial
        trials.add_row(t.number, _score(t.score), "-" if t.seconds is None else f"{t.seconds:.0f}",
                       "★ best" if best else ("" if t.status == "COMPLETED" else t.status.lower()),
                       style="bold green" if best else "")
    if running:
        trials.add_row(running, "-", "-",
                       f"epoch {view.running_epoch}" + (f"/{view.epochs}" if view.epochs else ""))
    return trials


def render(view: JobView):
    """The Rich renderable: spend bar, money, instances, trials, recent events (alerts among them, once)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text(headline(view), style="bold")]
    if view.budget_usd:
        style = bar_style(view)
        bar = ProgressBar(total=view.budget_usd, completed=min(view.spent_usd, view.budget_usd), width=40,
                          complete_style=style, finished_style=style)
        parts.append(Table.grid(padding=(0, 1)))
        parts[-1].add_row(bar, Text(f"{dollars(view.spent_usd)} / {dollars(view.budget_usd)}"))
    projected_over = (not view.final and view.budget_usd is not None and view.projected_usd is not None
                      and view.projected_usd > view.budget_usd)
    parts.append(Text(money_line(view), style="red" if projected_over else ""))
    if view.max_hours:
        parts.append(Text(f"wall time {duration(view.elapsed_hours)} of {duration(view.max_hours)} (deadline)"))

    instances = Table("instance", "kind", "price", "launched", "ended", "why",
                      title=f"instances ({view.instance_type if view.cloud != 'local' else 'this machine'}; "
                            f"{view.preemptions} preemption(s))", title_justify="left")
    for i in view.instances:
        instances.add_row(i.instance_id, "spot" if i.spot else "on-demand", per_hour(i.price_per_hour),
                          moment(i.launched_at, view.now), moment(i.ended_at, view.now), i.end_reason or "running")
    parts.append(instances)

    parts.append(Text(trials_line(view), style="bold"))  # above the table: a title would wrap to its width
    if view.trials or (view.running_trial and not view.final):
        parts.append(trials_table(view))
    if view.events:
        recent = Table("time", "event", "", title="recent events", title_justify="left", show_header=False)
        for e in view.events[-RECENT_EVENTS:]:
            alert = e.kind == "alert"
            recent.add_row(moment(e.time, view.now), e.kind, f"🔔 {e.message}" if alert else e.message,
                           style="bold red" if alert else "")
        parts.append(recent)
    for line in ending_lines(view):
        parts.append(Text(line, style="bold"))
    return Panel(Group(*parts), title="nascloud watch", title_align="left")


class Dashboard:
    """Shows a job live: `with Dashboard(sys.stdout) as board: board.update(...)`.
    A terminal gets a Rich Live view and a bell per new alert; anything else gets each change as lines."""

    def __init__(self, stream: TextIO, force_terminal: Optional[bool] = None):
        from rich.console import Console

        self.stream = stream
        self.terminal = stream.isatty() if force_terminal is None else force_terminal
        self.console = Console(file=stream, force_terminal=self.terminal)
        self.events: deque = deque(maxlen=RECENT_EVENTS)
        self._live = None
        self._last_lines: list[str] = []

    def __enter__(self) -> "Dashboard":
        if self.terminal:
            from rich.live import Live

            self._live = Live(console=self.console, auto_refresh=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def update(self, summary: Mapping[str, Any], new_events: Sequence[Any] = (),
               now: Optional[float] = None) -> JobView:
        """Add the events new since the last update; alerts among them ring the bell once."""
        self.events.extend(new_events)
        alerts = [e.message for e in new_events if e.kind == "alert"]
        view = JobView.from_summary(summary, list(self.events), now, alerts)
        if self._live is not None:
            self._live.update(render(view), refresh=True)
            if alerts:
                self.console.bell()
        else:
            # A log gets what changed: the status lines when they differ (the elapsed time alone is no
            # change), every new event once.
            lines = status_lines(view)
            if [view.status, *lines[1:]] != self._last_lines:
                self.stream.write("\n".join(lines) + "\n")
                self._last_lines = [view.status, *lines[1:]]
            for e in new_events:
                prefix = "ALERT" if e.kind == "alert" else e.kind
                self.stream.write(f"{moment(e.time, view.now)} {prefix}: {e.message}\n")
            self.stream.flush()
        return view

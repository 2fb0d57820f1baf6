"""The live view of one job: a Rich renderable on a terminal, plain lines when stdout is a pipe or a log.

Everything shown comes from one plain `JobView` record, built from the job summary that `status --json`
also prints (observer.summary, with the budget tick under "money") and the job's events. New alerts
ring the terminal bell.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, TextIO

RECENT_EVENTS = 8


@dataclass(frozen=True)
class InstanceView:
    instance_id: str
    price_per_hour: float
    spot: bool
    launched_at: Optional[float]
    ended_at: Optional[float]
    end_reason: Optional[str]


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
    burn_usd_per_hour: Optional[float] = None
    projected_usd: Optional[float] = None
    p_over: Optional[float] = None
    remaining_hours: Optional[float] = None
    elapsed_hours: Optional[float] = None
    max_hours: Optional[float] = None
    instance_type: str = ""
    instances: tuple[InstanceView, ...] = ()
    max_trials: int = 0
    trials_done: int = 0
    trials_failed: int = 0
    trial_durations: tuple[float, ...] = ()
    running: Optional[str] = None  # "trial 3, epoch 2"
    best_score: Optional[float] = None
    objective: str = ""
    events: tuple[EventView, ...] = ()
    alerts: tuple[str, ...] = field(default=())  # alerts new since the last view: they ring the bell

    @property
    def preemptions(self) -> int:
        return sum(1 for i in self.instances if i.end_reason in ("preempted", "lost"))

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any], events: Sequence[Any] = (),
                     now: Optional[float] = None, new_alerts: Sequence[str] = ()) -> "JobView":
        """From observer.summary's dict (also `status --json`) and Event rows (time, kind, message)."""
        money = summary.get("money") or {}
        progress = summary.get("progress") or {}
        running = progress.get("running")
        actual = summary.get("actual") or {}
        return cls(
            job_id=summary["job_id"], status=summary["status"], now=now if now is not None else time.time(),
            spent_usd=money.get("spent_usd", summary.get("spent_usd", 0.0)), budget_usd=summary.get("budget_usd"),
            bucket_usd=summary.get("bucket_usd", 0.0),
            burn_usd_per_hour=money.get("burn_usd_per_hour"), projected_usd=money.get("projected_usd"),
            p_over=money.get("p_over"), remaining_hours=money.get("remaining_hours"),
            elapsed_hours=actual.get("wall_hours"), max_hours=summary.get("max_hours"),
            instance_type=(summary.get("offer") or {}).get("instance_type") or "",
            instances=tuple(InstanceView(i["instance_id"] or "(launching)", i["price_per_hour"], bool(i["spot"]),
                                         i["launched_at"], i["ended_at"], i["end_reason"])
                            for i in summary.get("instances") or ()),
            max_trials=progress.get("max_trials") or 0, trials_done=progress.get("trials_done") or 0,
            trials_failed=progress.get("trials_failed") or 0,
            trial_durations=tuple(progress.get("trial_durations") or ()),
            running=f"trial {running['trial_id']}, epoch {running['epoch']}" if running else None,
            best_score=progress.get("best_score"), objective=progress.get("objective") or "",
            events=tuple(EventView(e.time, e.kind, e.message) for e in events), alerts=tuple(new_alerts))


# ---- formatting shared by both renderers -------------------------------------------------------

def _money(usd: Optional[float]) -> str:
    return "-" if usd is None else f"${usd:,.2f}"


def _duration(hours: Optional[float]) -> str:
    if hours is None:
        return "-"
    minutes = round(hours * 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _clock(t: Optional[float]) -> str:
    return "-" if t is None else time.strftime("%H:%M:%S", time.gmtime(t))


def _score(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4g}"


def money_line(view: JobView) -> str:
    budget = f" of {_money(view.budget_usd)}" if view.budget_usd else ""
    burn = f"{_money(view.burn_usd_per_hour)}/h" if view.burn_usd_per_hour is not None else "-"
    over = f", P(over budget) {view.p_over:.0%}" if view.p_over is not None else ""
    bucket = f" (bucket {_money(view.bucket_usd)})" if view.bucket_usd >= 0.005 else ""
    return (f"spent {_money(view.spent_usd)}{budget}{bucket}, burn {burn}, projected {_money(view.projected_usd)}{over}, "
            f"finish in {_duration(view.remaining_hours)}")


def trials_line(view: JobView) -> str:
    running = f", running {view.running}" if view.running else ""
    failed = f", {view.trials_failed} failed" if view.trials_failed else ""
    best = f", best {view.objective or 'score'} {_score(view.best_score)}" if view.best_score is not None else ""
    return f"trials {view.trials_done}/{view.max_trials or '?'}{failed}{running}{best}"


def status_lines(view: JobView) -> list[str]:
    """Where the job stands, as log lines: status, money, trials, instance, deadline."""
    current = view.instances[-1] if view.instances else None
    instance = (f"instance {current.instance_id} ({view.instance_type or '?'}, "
                f"{'spot' if current.spot else 'on-demand'}, {_money(current.price_per_hour)}/h), "
                f"{view.preemptions} preemption(s)") if current else "no instance yet"
    lines = [f"{view.job_id}: {view.status}", money_line(view), trials_line(view), instance]
    if view.max_hours:
        lines.append(f"wall time {_duration(view.elapsed_hours)} of {_duration(view.max_hours)} (deadline)")
    return lines


def plain_lines(view: JobView) -> list[str]:
    """The whole view as lines without colour: the status lines, then the new alerts."""
    return status_lines(view) + [f"ALERT: {alert}" for alert in view.alerts]


def render(view: JobView):
    """The Rich renderable: spend bar, money, instances, trials, recent events, alerts."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text(f"{view.job_id}  {view.status}", style="bold")]
    if view.budget_usd:
        over = view.spent_usd > view.budget_usd
        bar = ProgressBar(total=view.budget_usd, completed=min(view.spent_usd, view.budget_usd), width=40,
                          complete_style="red" if over else "green")
        parts.append(Table.grid(padding=(0, 1)))
        parts[-1].add_row(bar, Text(f"{_money(view.spent_usd)} / {_money(view.budget_usd)}"))
    projected_over = (view.budget_usd is not None and view.projected_usd is not None
                      and view.projected_usd > view.budget_usd)
    parts.append(Text(money_line(view), style="red" if projected_over else ""))
    if view.max_hours:
        parts.append(Text(f"wall time {_duration(view.elapsed_hours)} of {_duration(view.max_hours)} (deadline)"))

    instances = Table("instance", "kind", "$/h", "launched", "ended", "why",
                      title=f"instances ({view.instance_type or '?'}; {view.preemptions} preemption(s))",
                      title_justify="left")
    for i in view.instances:
        instances.add_row(i.instance_id, "spot" if i.spot else "on-demand", f"{i.price_per_hour:.4f}",
                          _clock(i.launched_at), _clock(i.ended_at), i.end_reason or "running")
    parts.append(instances)

    parts.append(Text(trials_line(view), style="bold"))  # above the table: a title would wrap to its width
    trials = Table("trial", "seconds")
    for number, seconds in enumerate(view.trial_durations, 1):
        trials.add_row(str(number), f"{seconds:.0f}")
    if view.running:
        trials.add_row(view.running, "running")
    parts.append(trials)

    if view.events:
        recent = Table("time", "event", "", title="recent events", title_justify="left", show_header=False)
        for e in view.events[-RECENT_EVENTS:]:
            recent.add_row(_clock(e.time), e.kind, e.message, style="bold red" if e.kind == "alert" else "")
        parts.append(recent)
    for alert in view.alerts:
        parts.append(Text(f"🔔 {alert}", style="bold red"))
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
            # A log gets what changed: the status lines when they differ, every new event once.
            lines = status_lines(view)
            if lines != self._last_lines:
                self.stream.write("\n".join(lines) + "\n")
                self._last_lines = lines
            for e in new_events:
                prefix = "ALERT" if e.kind == "alert" else e.kind
                self.stream.write(f"{_clock(e.time)} {prefix}: {e.message}\n")
            self.stream.flush()
        return view

"""The live view: what a user sees on a terminal, and the plain lines a log gets."""

from __future__ import annotations

import io

from rich.console import Console

from nascloud import budget
from nascloud.budget import BudgetConfig, Progress
from nascloud.dashboard import Dashboard, JobView, plain_lines, render
from nascloud.jobbucket import Event, LedgerEntry

NOW = 1_700_010_000.0
PROGRESS = {"max_trials": 6, "trials_done": 2, "trials_failed": 0, "running": {"trial_id": "3", "epoch": 1},
            "best_score": 0.9512, "objective": "val_accuracy", "trial_durations": [1700.0, 1900.0],
            "finished": False}


def summary(status="running") -> dict:
    """observer.summary's shape, with the budget tick under "money" (as `status --json` has it)."""
    rows = [LedgerEntry("i-first", "search", "aws", "g4dn.xlarge", None, True, 0.25, NOW - 9000, NOW - 5000,
                        NOW - 5000, "preempted"),
            LedgerEntry("i-second", "search", "aws", "g4dn.xlarge", None, True, 0.30, NOW - 4000, NOW)]
    tick = budget.evaluate(rows, Progress.of(PROGRESS, epochs=4), BudgetConfig(budget_usd=2.0), set(), NOW)
    return {
        "job_id": "digits-1a2b3c", "status": status, "budget_usd": 2.0, "max_hours": 4.0,
        "spent_usd": tick.spent_usd, "offer": {"instance_type": "g4dn.xlarge"},
        "actual": {"wall_hours": 2.5},
        "instances": [{"instance_id": r.instance_id, "launched_at": r.launched_at, "ended_at": r.ended_at,
                       "end_reason": r.end_reason, "price_per_hour": r.price_per_hour, "spot": r.spot}
                      for r in rows],
        "progress": PROGRESS, "money": tick.as_dict(),
    }


EVENTS = [Event("events/1", NOW - 5000, "preempted", "instance i-first preempted: recovering", None),
          Event("events/2", NOW - 10, "alert", "50% of the $2.00 budget spent ($1.03)", {"key": "x"})]


def test_plain_lines_say_money_trials_instance_and_deadline():
    view = JobView.from_summary(summary(), EVENTS, NOW, new_alerts=["50% of the $2.00 budget spent ($1.03)"])
    # $0.25/h × 4000 s + $0.30/h × 4000 s; 3.75 trials left at 1800 s on $0.30/h.
    assert plain_lines(view) == [
        "digits-1a2b3c: running",
        "spent $0.61 of $2.00, burn $0.30/h, projected $1.17, P(over budget) 0%, finish in 1 h 52 min",
        "trials 2/6, running trial 3, epoch 1, best val_accuracy 0.9512",
        "instance i-second (g4dn.xlarge, spot, $0.30/h), 1 preemption(s)",
        "wall time 2 h 30 min of 4 h 00 min (deadline)",
        "ALERT: 50% of the $2.00 budget spent ($1.03)",
    ]


def test_rich_view_has_the_bar_tables_events_and_the_bell():
    view = JobView.from_summary(summary(), EVENTS, NOW, new_alerts=["50% of the $2.00 budget spent ($1.03)"])
    console = Console(record=True, width=140, force_terminal=False)
    console.print(render(view))
    text = console.export_text()
    assert "━" in text and "$0.61 / $2.00" in text  # the spend bar against the budget
    assert "projected $1.17" in text and "finish in 1 h 52 min" in text
    assert "instances (g4dn.xlarge; 1 preemption(s))" in text
    assert "i-first" in text and "preempted" in text and "i-second" in text and "running" in text
    assert "best val_accuracy 0.9512" in text and "1900" in text and "trial 3, epoch 1" in text
    assert "instance i-first preempted: recovering" in text
    assert "🔔 50% of the $2.00 budget spent ($1.03)" in text


def test_projection_over_budget_is_shown_in_red():
    data = summary()
    data["money"]["projected_usd"] = 2.5
    console = Console(record=True, width=140, force_terminal=True, color_system="standard")
    console.print(render(JobView.from_summary(data, (), NOW)))
    assert "\x1b[31mspent $0.61 of $2.00, burn $0.30/h, projected $2.50" in console.export_text(styles=True)
    console.print(render(JobView.from_summary(summary(), (), NOW)))  # within the budget: not red
    assert "\x1b[31mspent" not in console.export_text(styles=True)


def test_dashboard_on_a_pipe_writes_changes_and_each_event_once():
    out = io.StringIO()
    with Dashboard(out) as board:
        board.update(summary(), EVENTS[:1], now=NOW)
        board.update(summary(), [], now=NOW)  # nothing changed: nothing written
        board.update(summary("stopping"), EVENTS[1:], now=NOW)
    lines = out.getvalue().splitlines()
    assert lines.count("digits-1a2b3c: running") == 1 and lines.count("digits-1a2b3c: stopping") == 1
    assert sum("preempted: instance i-first preempted" in line for line in lines) == 1
    assert lines[-1].endswith("ALERT: 50% of the $2.00 budget spent ($1.03)")
    assert "\a" not in out.getvalue() and "\x1b[" not in out.getvalue()


def test_dashboard_on_a_terminal_rings_the_bell_once_per_alert():
    out = io.StringIO()
    with Dashboard(out, force_terminal=True) as board:
        board.update(summary(), EVENTS[:1], now=NOW)
        assert "\a" not in out.getvalue()
        board.update(summary(), EVENTS[1:], now=NOW)
        board.update(summary(), [], now=NOW)
    assert out.getvalue().count("\a") == 1
    assert "spent $0.61 of $2.00" in out.getvalue()


def test_a_summary_without_the_money_tick_still_renders():
    data = summary()
    del data["money"]
    view = JobView.from_summary(data, (), NOW)
    assert plain_lines(view)[1] == "spent $0.61 of $2.00, burn -, projected -, finish in -"

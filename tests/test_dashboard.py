"""The live view: what a user sees on a terminal, and the plain lines a log gets."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console

from nascloud import budget
from nascloud.budget import BudgetConfig, Progress
from nascloud.dashboard import Dashboard, JobView, bar_style, render, status_lines
from nascloud.formats import moment
from nascloud.jobbucket import Event, JobBucket, LedgerEntry
from tests.fixtures.search import make_bundle

NOW = 1_700_010_000.0
# KerasTuner's trial ids count from 0; every screen counts from 1.
PROGRESS = {"max_trials": 6, "epochs": 4, "trials_done": 2, "trials_failed": 0,
            "running": {"trial_id": "2", "epoch": 1}, "best_score": 0.9512, "objective": "val_accuracy",
            "trial_durations": [1900.0, 1700.0], "finished": False,
            "trials": [{"trial_id": "1", "status": "COMPLETED", "score": 0.9512, "duration_seconds": 1900.0},
                       {"trial_id": "0", "status": "COMPLETED", "score": 0.9011, "duration_seconds": 1700.0}]}
ALERT = "50% of the $2.00 budget spent ($1.03)"


def summary(status="running", reason=None, cloud="aws") -> dict:
    """observer.summary's shape, with the budget tick under "money" (as `status --json` has it)."""
    rows = [LedgerEntry("i-first", "search", cloud, "g4dn.xlarge", None, True, 0.25, NOW - 9000, NOW - 5000,
                        NOW - 5000, "preempted"),
            LedgerEntry("i-second", "search", cloud, "g4dn.xlarge", None, True, 0.30, NOW - 4000, NOW)]
    config = BudgetConfig(budget_usd=2.0, minimum_billed_seconds=60)
    tick = budget.evaluate(rows, Progress.of(PROGRESS, epochs=4), config, set(), NOW)
    return {
        "job_id": "digits-1a2b3c", "status": status, "reason": reason, "budget_usd": 2.0, "max_hours": 4.0,
        "alert_thresholds": [0.5, 0.8, 1.0], "spent_usd": tick.spent_usd,
        "offer": {"cloud": cloud, "instance_type": "g4dn.xlarge"}, "actual": {"wall_hours": 2.5},
        "instances": [{"instance_id": r.instance_id, "launched_at": r.launched_at, "ended_at": r.ended_at,
                       "end_reason": r.end_reason, "price_per_hour": r.price_per_hour, "spot": r.spot}
                      for r in rows],
        "progress": PROGRESS, "money": tick.as_dict(),
    }


EVENTS = [Event("events/1", NOW - 5000, "preempted", "instance i-first preempted: recovering", None),
          Event("events/2", NOW - 10, "alert", ALERT, {"key": "x"})]


def text_of(view: JobView, styles: bool = False) -> str:
    console = Console(record=True, width=140, force_terminal=styles, color_system="standard" if styles else None)
    console.print(render(view))
    return console.export_text(styles=styles)


def test_plain_lines_say_elapsed_money_trials_with_epochs_instance_and_deadline():
    view = JobView.from_summary(summary(), EVENTS, NOW)
    # $0.25/h × 4000 s + $0.30/h × 4000 s; 3.75 trials left at 1800 s on $0.30/h.
    assert status_lines(view) == [
        "digits-1a2b3c: running, 2 h 30 min elapsed",
        "spent $0.61 of $2.00, burn $0.3000/h, projected $1.17, P(over budget) 0%, finish in 1 h 52 min",
        "trials 2/6, running trial 3 (epoch 2/4), best val_accuracy 0.9512 (trial 2)",
        "instance i-second (g4dn.xlarge, spot, $0.3000/h), 1 preemption(s)",
        "wall time 2 h 30 min of 4 h 00 min (deadline)",
    ]


def test_a_capped_job_says_why_in_words_and_how_to_go_on_with_its_id_and_nothing_about_finishing():
    why = ("spent $1.98 of the $2.00 budget, and running on to the next check and the shutdown would have made "
           "it $2.01")
    data = summary("budget", reason=why)
    data["money"] |= {"burn_usd_per_hour": 0.0, "remaining_hours": 0.0}  # as observer.summary has it, ended
    lines = status_lines(JobView.from_summary(data, (), NOW))
    assert lines[0] == "digits-1a2b3c: stopped at its budget, with a final snapshot, after 2 h 30 min"
    assert lines[1] == "spent $0.61 of $2.00, burn $0/h"
    assert lines[2] == "trials 2/6, best val_accuracy 0.9512 (trial 2)"  # nothing running any more
    assert lines[-2] == f"why: {why}"
    assert lines[-1] == "next: `nascloud resume digits-1a2b3c --budget +USD` continues it with more money"
    text = text_of(JobView.from_summary(data, (), NOW))
    assert "finish in" not in text and "projected" not in text and "epoch 2/4" not in text
    data["progress"] = {"max_trials": 6, "trials_done": 0}  # stopped before its first trial: no empty table
    assert "┃ trial" not in text_of(JobView.from_summary(data, (), NOW))
    assert "nascloud resume digits-1a2b3c --budget +USD" in text


def test_rich_view_has_the_bar_a_score_per_trial_with_the_best_marked_and_each_alert_once():
    text = text_of(JobView.from_summary(summary(), EVENTS, NOW, new_alerts=[ALERT]))
    assert "━" in text and "$0.61 / $2.00" in text  # the spend bar against the budget
    assert "projected $1.17" in text and "finish in 1 h 52 min" in text
    assert "instances (g4dn.xlarge; 1 preemption(s))" in text and "$0.2500/h" in text
    assert "i-first" in text and "preempted" in text and "i-second" in text and "running" in text
    cells = [[cell.strip() for cell in line.split("│")[2:-2]] for line in text.splitlines() if "│ │" in line]
    assert ["1", "0.9011", "1700", ""] in cells and ["2", "0.9512", "1900", "★ best"] in cells
    assert ["3", "-", "-", "epoch 2/4"] in cells
    assert "instance i-first preempted: recovering" in text
    assert text.count(ALERT) == 1 and f"🔔 {ALERT}" in text
    assert moment(NOW - 10, NOW) in text  # times with their zone (and the date, another day)


def test_the_budget_bar_changes_colour_at_each_alert_threshold():
    def style(spent: float) -> str:
        data = summary()
        data["money"]["spent_usd"] = spent
        return bar_style(JobView.from_summary(data, (), NOW))

    assert [style(x) for x in (0.5, 0.99, 1.0, 1.59, 1.6, 1.99, 2.0, 2.5)] == \
        ["green", "green", "yellow", "yellow", "dark_orange", "dark_orange", "red", "red"]
    data = summary()
    data["money"]["spent_usd"] = 1.2
    assert "\x1b[33m━" in text_of(JobView.from_summary(data, (), NOW), styles=True)  # yellow, past 50%


def test_projection_over_budget_is_shown_in_red():
    data = summary()
    data["money"]["projected_usd"] = 2.5
    assert "\x1b[31mspent $0.61 of $2.00, burn $0.3000/h, projected $2.50" in text_of(
        JobView.from_summary(data, (), NOW), styles=True)
    assert "\x1b[31mspent" not in text_of(JobView.from_summary(summary(), (), NOW), styles=True)


def test_the_local_provider_is_this_machine_not_local_local():
    view = JobView.from_summary(summary(cloud="local"), (), NOW)
    assert status_lines(view)[3] == "instance i-second (this machine, $0.3000/h), 1 preemption(s)"
    assert "local local" not in text_of(view) and "instances (this machine;" in text_of(view)


def test_dashboard_on_a_pipe_writes_changes_and_each_event_once():
    out = io.StringIO()
    with Dashboard(out) as board:
        board.update(summary(), EVENTS[:1], now=NOW)
        board.update(summary(), [], now=NOW)  # nothing changed: nothing written
        board.update(summary("stopping"), EVENTS[1:], now=NOW)
    lines = out.getvalue().splitlines()
    assert lines.count("digits-1a2b3c: running, 2 h 30 min elapsed") == 1
    assert lines.count("digits-1a2b3c: stopping, 2 h 30 min elapsed") == 1
    assert sum("preempted: instance i-first preempted" in line for line in lines) == 1
    assert sum(ALERT in line for line in lines) == 1 and lines[-1].endswith(f"ALERT: {ALERT}")
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
    assert status_lines(view)[1] == "spent $0.61 of $2.00, burn -, projected -, finish in -"


def test_a_finished_jobs_summary_burns_nothing(tmp_path, monkeypatch):
    from nascloud.observer import summary as observe

    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path / "home"))
    url = make_bundle(tmp_path, "burn-0a1b2c", price_per_hour=36.0)
    bucket, now = JobBucket.open(url), time.time()
    bucket.put_entry(LedgerEntry("local-0001", "search", "local", "local", None, True, 36.0, now - 600, now - 60,
                                 now - 60, "finished"))
    bucket.write_exit("finished", "3 trials completed", "local-0001")
    shown = observe(JobBucket.open(url))
    assert shown["status"] == "finished" and shown["spent_usd"] > 5
    assert shown["money"]["burn_usd_per_hour"] == 0 and shown["money"]["projected_usd"] == shown["spent_usd"]
    assert shown["alert_thresholds"] == [0.5, 0.8, 1.0] and shown["progress"]["epochs"] >= 1
    assert "burn $0/h" in status_lines(JobView.from_summary(shown))[1]


# ---- status and results ---------------------------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def status_rows(job_id: str) -> list[dict]:
    return [{"job_id": job_id, "status": "running", "created_at": NOW - 3 * 86400, "reason": None,
             "offer": {"cloud": "aws", "gpu": "T4", "region": "us-east-1"}, "spent_usd": 1.2, "budget_usd": 25.0,
             "progress": {"trials_done": 3, "max_trials": 20, "best_score": 0.8989},
             "estimate": {"cost_usd": {"p50": 0.08}}, "preemptions": 1}]


def test_status_shows_started_cloud_gpu_region_and_whole_job_ids_piped_and_at_80_columns(monkeypatch, capsys):
    from nascloud.observer import render_summaries

    job_id = "digits-aws-experiment-long-1a2b3c"  # the longest a job name allows is 40 characters + 7
    started = moment(NOW - 3 * 86400, NOW) + " (3 d 00 h ago)"
    monkeypatch.delenv("COLUMNS", raising=False)  # a pipe with no width given
    render_summaries(status_rows(job_id), now=NOW)  # piped: the whole table
    piped = capsys.readouterr().out
    header = next(line for line in piped.splitlines() if "job" in line and "status" in line)
    assert [c.strip() for c in header.split("┃")[1:-1]] == [
        "job", "status", "started", "cloud", "GPU", "region", "trials", "best", "spent", "budget", "estimate P50",
        "preempt."]
    row = next(line for line in piped.splitlines() if job_id in line)
    assert [c.strip() for c in row.split("│")[1:-1]] == [
        job_id, "running", started, "aws", "T4", "us-east-1", "3/20", "0.8989", "$1.20", "$25.00", "$0.08", "1"]

    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    monkeypatch.setenv("COLUMNS", "80")  # the columns a glance needs least go first; the money stays whole
    render_summaries(status_rows(job_id), now=NOW)
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in terminal.getvalue().splitlines()]
    assert all(len(line) <= 80 for line in lines)
    assert [c.strip() for c in lines[3].split("│")[1:-1]] == [job_id, "running", "$1.20", "$25.00", "$0.08"]

    terminal = Terminal()  # too narrow even for those: a few lines a job
    monkeypatch.setattr("sys.stdout", terminal)
    monkeypatch.setenv("COLUMNS", "60")
    render_summaries(status_rows(job_id), now=NOW)
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in terminal.getvalue().splitlines()]
    assert lines[0] == f"{job_id}  running" and all(len(line) <= 60 for line in lines)
    assert f"started {started}" in " ".join(lines) and "spent $1.20 of $25.00" in " ".join(lines)


def test_results_read_the_hyperparameters_in_words_with_the_test_accuracy_and_one_numbering(capsys, tmp_path):
    from nascloud.observer import render_leaderboard

    conv = "image_block/conv_block_1"
    board = {"objective": "val_accuracy", "best_trial_id": "1", "test_accuracy": 0.9053, "test_samples": 359,
             "trials": [
                 {"trial_id": "1", "status": "COMPLETED", "score": 0.95, "parameters": 19434, "duration_seconds": 40.2,
                  "hyperparameters": {f"{conv}/dropout": 0.25, f"{conv}/kernel_size": 5, f"{conv}/num_blocks": 2,
                                      f"{conv}/num_layers": 1, "classification_head/dropout": 0.5,
                                      "optimizer": "adam", "learning_rate": 0.001}},
                 {"trial_id": "0", "status": "COMPLETED", "score": 0.90, "parameters": 3210, "duration_seconds": 30,
                  "hyperparameters": {"image_block/block_type": "resnet", "optimizer": "sgd",
                                      "learning_rate": 0.01}},
                 {"trial_id": "2", "status": "FAILED", "score": None, "hyperparameters": {}}]}
    render_leaderboard(board, tmp_path)
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    assert rows == [["2", "0.95", "0.9053", "vanilla", "2×1", "5", "0.25", "adam, lr 0.001", "19,434", "40", "★ best"],
                    ["1", "0.9", "", "resnet", "-", "-", "-", "sgd, lr 0.01", "3,210", "30", ""],
                    ["3", "-", "", "-", "-", "-", "-", "-", "-", "-", "failed"]]
    assert "best: trial 2, test accuracy 0.9053 on 359 held-out samples" in out

"""Screens that tell the truth (issue 25): the commands they suggest run as written, a trial is listed once,
a snapshot that does not exist is not called damaged, two different trials never read as the same row, the
placeholder bucket is named as such by `check`, and the figures say what they count. Fast: no search runs
here (one calibration trial does: the hint `estimate` prints)."""

from __future__ import annotations

import io
import json
import re
import shlex
import time
from types import SimpleNamespace

from rich.console import Console

from nascloud.jobbucket import JobBucket, LedgerEntry
from tests.fixtures.search import make_bundle
from tests.test_cli_conventions import AWS_JOB, LOCAL_JOB, aws_bucket, cli  # noqa: F401  (fixtures)

HINT = re.compile(r"`(nascloud [^`]+)`")


def hints(*outputs: str) -> list[str]:
    return list(dict.fromkeys(h for text in outputs for h in HINT.findall(text)))


def as_typed(hint: str, job_id: str) -> list[str]:
    """The hint's words with its placeholders filled as a user fills them."""
    values = {"JOB.yaml": LOCAL_JOB, "JOB": job_id, "+USD": "+5", "H": "2", "CMD": "true"}
    return [values.get(word, word) for word in shlex.split(hint)[1:]]


def finished_job(tmp_path) -> JobBucket:
    """A job whose search finished, with its results in the bucket."""
    job = JobBucket.open(make_bundle(tmp_path, "digits-truth-aaaaaa", budget={"usd": 5}))
    job.store.put_json("results/leaderboard.json", {"objective": "val_accuracy", "best_trial_id": "0", "trials": [
        {"trial_id": "0", "status": "COMPLETED", "score": 0.9, "hyperparameters": {"optimizer": "adam"}}]})
    job.write_exit("finished", "1 trials completed", "local-00000000")
    return job


def test_every_hint_the_local_scenarios_print_runs_as_written(cli, tmp_path):
    """`estimate` said "run `nascloud calibrate digits-local`" (calibrate takes a job file), and other hints named
    no argument at all: pasted, they stopped at a usage error."""
    job = finished_job(tmp_path)
    job_id = job.bundle().job_id
    printed = [cli("estimate", LOCAL_JOB), cli("status", job.url), cli("watch", job.url), cli("resume", job.url)]
    found = hints(*(out + err for _, out, err in printed))
    assert {h.split()[1] for h in found} >= {"calibrate", "results"}
    for hint in found:
        code, out, err = cli(*as_typed(hint, job_id))
        assert code != 2 and "No such command" not in err and "Missing argument" not in err, (hint, out, err)


def test_resume_of_a_job_whose_search_finished_does_not_ask_for_a_stop(cli, tmp_path):
    """A job whose search had finished, its instance still writing the end, was "running; `nascloud stop` it
    first": a stop then a resume, for a job with nothing left to search."""
    from tests.test_cli_jobs import with_group

    home = SimpleNamespace(home=tmp_path / "home")
    job = JobBucket.open(make_bundle(tmp_path, "digits-truth-bbbbbb", budget={"usd": 5}))
    provider = with_group(home, job, size=1)
    try:
        now = time.time()
        job.put_entry(LedgerEntry("local-0001", "search", "local", "local", None, True, 0.0, now, now))
        job.store.put_json("agent/progress.json", {"finished": True, "trials_done": 3, "max_trials": 3})
        code, _, err = cli("resume", job.url)
        assert code == 2
        message = err.strip().splitlines()[-1]
        assert "search has finished" in message and "stop" not in message, message
        assert f"`nascloud results {job.bundle().job_id}`" in message
    finally:
        provider.resize(job.bundle().job_id, "search", 0)


def test_the_running_trial_is_one_row_of_the_trials_table():
    """The trial training now was listed twice: its own record (status RUNNING) and the row with its epoch."""
    from nascloud.dashboard import JobView, render

    summary = {"job_id": "digits-truth-cccccc", "status": "running", "spent_usd": 0.0, "progress": {
        "max_trials": 3, "epochs": 3, "trials_done": 1, "running": {"trial_id": "1", "epoch": 1},
        "trials": [{"trial_id": "0", "status": "COMPLETED", "score": 0.9, "duration_seconds": 2.0},
                   {"trial_id": "1", "status": "RUNNING", "score": None, "duration_seconds": 0.0}]}}
    screen = io.StringIO()
    Console(file=screen, width=120).print(render(JobView.from_summary(summary, now=time.time())))
    rows = [line for line in screen.getvalue().splitlines() if re.match(r"│ *│ 2 ", line)]
    assert len(rows) == 1 and "epoch 2/3" in rows[0], screen.getvalue()


def test_a_snapshot_that_does_not_exist_is_named_so_with_those_that_do(cli, tmp_path):
    """`checkpoints pull --snapshot 999` said "snapshot 999 is damaged" (exit 1) for an id the job never had."""
    from nascloud.checkpoints import open_store

    url = f"file://{tmp_path}/bucket/digits-truth-dddddd"
    (tmp_path / "work").mkdir()
    (tmp_path / "work/oracle.json").write_text("{}")
    first = open_store(url).publish(tmp_path / "work")
    code, _, err = cli("checkpoints", "pull", url, str(tmp_path / "mine"), "--snapshot", "999")
    assert code == 2
    assert err.strip() == f"Error: snapshot 999 does not exist in {url}; it has: {first}"
    assert not (tmp_path / "mine").exists()


def test_results_show_the_hyperparameter_two_trials_differ_in(capsys, tmp_path):
    """Two trials of a real digits search differed only in the head's reduction type, which no column showed:
    the table had two identical rows."""
    from nascloud.observer import render_leaderboard

    conv = "image_block/conv_block_1"
    same = {"classification_head/dropout": 0, f"{conv}/dropout": 0.0, f"{conv}/filters_0_0": 32,
            f"{conv}/kernel_size": 3, f"{conv}/max_pooling": True, f"{conv}/num_blocks": 1, f"{conv}/num_layers": 1,
            f"{conv}/separable": False, "learning_rate": 0.001, "optimizer": "adam"}
    reduction = "classification_head/spatial_reduction_1/reduction_type"
    board = {"objective": "val_accuracy", "best_trial_id": "0", "trials": [
        {"trial_id": "0", "status": "COMPLETED", "score": 0.899, "parameters": 3210, "duration_seconds": 2,
         "hyperparameters": {**same, reduction: "flatten"}},
        {"trial_id": "1", "status": "COMPLETED", "score": 0.2544, "parameters": 3210, "duration_seconds": 2,
         "hyperparameters": {**same, reduction: "global_avg"}}]}
    render_leaderboard(board, tmp_path)
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    header = [c.strip() for c in next(line for line in out.splitlines() if "trial" in line).split("┃")[1:-1]]
    assert "spatial_reduction_1/reduction_type" in header
    column = header.index("spatial_reduction_1/reduction_type")
    assert [row[column] for row in rows] == ["flatten", "global_avg"]
    assert "separable" not in out  # what the trials share stays out of the table


def test_check_names_the_examples_placeholder_and_checks_the_rest(cli, aws_bucket):
    """`check` of an example stopped at "malformed s3:// URL 's3://YOUR-BUCKET/nascloud'" (exit 2): nothing
    else checked, and no word that it is the example's placeholder."""
    code, out, err = cli("check", AWS_JOB)
    assert code == 1, out + err
    lines = out.splitlines()
    assert lines[0].startswith("ok    credentials") and lines[1].startswith("ok    offer and GPU quota")
    assert lines[2].split()[1] == "permissions:"
    assert lines[3] == ("FAIL  bucket: checkpoint.bucket s3://YOUR-BUCKET/nascloud is the example's placeholder; set "
                        "your own bucket in the job file or with --bucket (e.g. --bucket s3://my-bucket/nascloud)")


def test_the_dry_run_and_estimate_say_which_cost_and_an_uncalibrated_speed(cli):
    """The dry run said "estimate $0.06" where `estimate` said "$0.07 expected in all" (compute against compute
    and extras), and the local speed read "1 here" before anything was calibrated."""
    code, out, _ = cli("estimate", AWS_JOB)
    assert code == 0
    in_all = re.search(r"(\$\d+\.\d\d) expected in all", out).group(1)
    code, _, err = cli("launch", AWS_JOB, "--dry-run")
    assert code == 0
    line = err.splitlines()[2]
    assert re.fullmatch(rf"estimate \$\d+\.\d\d for compute \(P90 \$\d+\.\d\d\), \{in_all} expected in all with "
                        r"extras, in \d+ min", line), line
    code, out, _ = cli("estimate", LOCAL_JOB)
    row = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    assert "not calibrated" in row and "here" not in row

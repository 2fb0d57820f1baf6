"""The agent killed at any moment still finishes the search exactly once: real AutoKeras on digits."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess

import numpy as np
import pytest

from tests.fixtures.search import DIGITS_SEARCH, agent_command, agent_env, check_chain, make_bundle

pytestmark = pytest.mark.search

MAX_TRIALS = DIGITS_SEARCH["max_trials"]


def leaderboard(url: str) -> dict:
    from nascloud.checkpoints import open_store

    return open_store(url).get_json("results/leaderboard.json")


def test_each_named_kill_point_killed_its_run(digits_chain):
    codes = [run.code for run in digits_chain["runs"]]
    assert codes == [-signal.SIGKILL] * 4 + [0], [run.log[-2000:] for run in digits_chain["runs"]]
    # The kill during the import left nothing behind it: the run before it ended mid-search.
    assert "restored snapshot" not in digits_chain["runs"][3].log


def test_named_kills_lose_no_completed_trial_and_resume_mid_trial(digits_chain):
    report = check_chain([run.log for run in digits_chain["runs"]])
    assert report.problems == []
    assert len(report.completed) == MAX_TRIALS
    # The mid-epoch kill (5th epoch: the second trial's second) resumes it at its published epoch 1 (the logs
    # number trials from 1, as the screens do; the leaderboard keeps KerasTuner's ids, from 0).
    assert (1, "2", 1) in report.resumes
    board = leaderboard(digits_chain["url"])
    assert [row["status"] for row in board["trials"]] == ["COMPLETED"] * MAX_TRIALS
    assert sorted(row["trial_id"] for row in board["trials"]) == ["0", "1", "2"]


def test_the_resumed_trial_is_scored_on_all_its_epochs(digits_chain):
    board = leaderboard(digits_chain["url"])
    trial = next(row for row in board["trials"] if row["trial_id"] == "1")
    assert trial["epochs"] == DIGITS_SEARCH["epochs"]
    assert trial["parameters"] > 0 and trial["duration_seconds"] > 0


def test_exported_model_predicts_the_test_split_with_the_reported_accuracy(digits_chain, tmp_path):
    import autokeras  # noqa: F401  the model's custom layers
    import keras

    from nascloud.agent.data import load_source, split
    from nascloud.checkpoints import open_store
    from nascloud.job import SearchSection

    store = open_store(digits_chain["url"])
    assert store.get_file("results/best_model.keras", tmp_path / "best.keras")
    labels = store.get_json("results/labels.json")["labels"]
    assert labels == [str(d) for d in range(10)]
    board = store.get_json("results/leaderboard.json")
    splits = split(load_source(SearchSection(**DIGITS_SEARCH)), seed=DIGITS_SEARCH["seed"])
    model = keras.models.load_model(tmp_path / "best.keras", compile=False)
    predicted = [labels[i] for i in np.argmax(model.predict(splits.x_test, verbose=0), axis=1)]
    accuracy = float(np.mean(np.array(predicted) == np.array([labels[i] for i in splits.y_test])))
    assert accuracy == pytest.approx(board["test_accuracy"], abs=1e-9)
    assert accuracy > 0.5  # ten classes: far above chance
    best = board["trials"][0]
    assert best["trial_id"] == board["best_trial_id"] and best["score"] == max(r["score"] for r in board["trials"])
    assert set(best) >= {"trial_id", "hyperparameters", "score", "duration_seconds", "parameters"}
    # The space was constrained: every trial used the allowed kernel size, depth and dropout.
    for row in board["trials"]:
        hp = row["hyperparameters"]
        assert hp["image_block/conv_block_1/kernel_size"] == 3
        assert hp["image_block/conv_block_1/num_blocks"] == 1
        assert hp["image_block/conv_block_1/dropout"] in (0.0, 0.25)


def test_progress_and_exit_status_say_finished(digits_chain):
    from nascloud.checkpoints import open_store

    store = open_store(digits_chain["url"])
    progress = store.get_json("agent/progress.json")
    assert progress["finished"] and progress["trials_done"] == MAX_TRIALS and progress["running"] is None
    assert len(progress["trial_durations"]) == MAX_TRIALS
    assert store.get_json("agent/exit.json")["status"] == "finished"
    assert store.get_json("agent/heartbeat.json")["phase"] == "done"


def test_a_rerun_of_a_finished_search_refits_nothing(digits_chain, tmp_path):
    from nascloud.checkpoints import open_store

    store = open_store(digits_chain["url"])
    before = [s.snapshot_id for s in store.list()]
    done = subprocess.run(agent_command(digits_chain["url"], tmp_path / "again", "--instance-id", "i-again"),
                          capture_output=True, text=True, timeout=120, env=agent_env())
    assert done.returncode == 0, done.stderr
    assert "finished before" in done.stdout
    exit_status = store.get_json("agent/exit.json")
    assert (exit_status["status"], exit_status["instance_id"]) == ("finished", "i-again")
    assert [s.snapshot_id for s in store.list()] == before
    assert not (tmp_path / "again").exists()  # nothing restored, nothing trained


def test_a_run_killed_during_export_exports_again_without_training(digits_chain, tmp_path):
    from nascloud.checkpoints import open_store

    bucket = tmp_path / "bucket"
    shutil.copytree(digits_chain["root"] / "bucket", bucket)
    url = f"file://{bucket}/{digits_chain['url'].rsplit('/', 1)[1]}"
    store = open_store(url)
    head = store.list()[-1].snapshot_id
    progress = store.get_json("agent/progress.json")
    store.put_json("agent/progress.json", {**progress, "finished": False})  # as if killed mid-export
    (bucket / url.rsplit("/", 1)[1] / "results" / "leaderboard.json").unlink()
    done = subprocess.run(agent_command(url, tmp_path / "work"), capture_output=True, text=True, timeout=300,
                          env=agent_env())
    assert done.returncode == 0, done.stderr
    assert f"restored snapshot {head}" in done.stderr
    assert "starts at epoch" not in done.stderr  # no trial and no refit
    assert store.list()[-1].snapshot_id == head
    assert store.get_json("results/leaderboard.json") == leaderboard(digits_chain["url"])


def test_random_sigkills_still_finish_exactly_once(tmp_path):
    url = make_bundle(tmp_path, "digits-random-1b1b1b")
    rng = random.Random(7)
    logs, finished = [], False
    for attempt in range(8):
        proc = subprocess.Popen(agent_command(url, tmp_path / f"work-{attempt}"), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=agent_env())
        try:
            out, _ = proc.communicate(timeout=rng.uniform(2.0, 9.0) if attempt < 6 else 300)
            finished = proc.returncode == 0
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate()
        logs.append(out)
        if finished:
            break
    assert finished, logs[-1][-2000:]
    assert len(logs) >= 2  # at least one kill landed
    report = check_chain(logs)
    assert report.problems == []
    assert len(report.completed) == MAX_TRIALS
    assert [row["status"] for row in leaderboard(url)["trials"]] == ["COMPLETED"] * MAX_TRIALS

"""Seeds (search.seeds): one job runs the same search once per seed, one seed after another on the instance.

One real search is shared: digits, three seeds of 2 trials × 2 epochs, billed at $36/h on a ledger entry of
its own. The agent is SIGKILLed in seed 2 (mid-epoch, in trial 3's second epoch) and run again in a fresh
directory from the bucket, as a replacement host would. What it proves: three best scores and their spread,
each seed's own measured cost, the seeds' costs adding up to the job's ledger, the best seed's model exported,
seed 2 resumed where its snapshot was and seed 1 never rerun, and `results` and the live view naming the seeds.
`estimate` pricing three seeds as three times the work needs no search."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import pytest
import yaml

from tests.fixtures.search import check_chain, make_bundle, run_agent

PRICE = 36.0  # $/h: a second of search is a cent, so every figure below is far from rounding
SEEDS = [1, 2, 3]
HOST = "seeds-host"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    from nascloud.dashboard import JobView, status_lines
    from nascloud.jobbucket import JobBucket, LedgerEntry
    from nascloud.observer import summary

    root = tmp_path_factory.mktemp("seeds")
    url = make_bundle(root, "seeds-0a0b0c", price_per_hour=PRICE, seeds=SEEDS, max_trials=2, epochs=2)
    bucket = JobBucket.open(url)
    now = time.time()  # the host's boot, as its governor records it: the ledger bills from here
    bucket.put_entry(LedgerEntry(HOST, "search", "local", "local", None, True, PRICE, now, now, booted_at=now))
    killed = run_agent(url, root / "work-1", "--instance-id", HOST, kill_at="epoch:6")  # trial 3, epoch 2
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NASCLOUD_HOME", str(root / "home"))
        # What the bucket held while seed 2 ran (the kill froze it), as the live view shows a running job.
        live = status_lines(JobView.from_summary(summary(JobBucket.open(url)) | {"status": "running"}))
    finished = run_agent(url, root / "work-2", "--instance-id", HOST)
    assert finished.code == 0, finished.log
    board = bucket.store.get_json("results/leaderboard.json")
    return {"url": url, "root": root, "bucket": bucket, "runs": [killed, finished], "live": live, "board": board}


@pytest.mark.search
def test_three_seeds_give_three_best_scores_their_spread_and_the_best_seeds_model(seeded, tmp_path):
    board = seeded["board"]
    seeds = board["seeds"]
    runs = seeds["runs"]
    assert [r["seed"] for r in runs] == SEEDS
    scores = [r["best_score"] for r in runs]
    assert all(0 < s <= 1 for s in scores) and all(0 < r["test_accuracy"] <= 1 for r in runs)
    assert seeds["best_score"] == pytest.approx({"mean": statistics.fmean(scores), "spread": max(scores) - min(scores),
                                                 "std": statistics.stdev(scores)})
    accuracies = [r["test_accuracy"] for r in runs]
    assert seeds["test_accuracy"]["spread"] == pytest.approx(max(accuracies) - min(accuracies))
    # Trials numbered through the job: seed n's are 2n-1 and 2n on the screens (ids from 0).
    assert sorted((t["trial_id"], t["seed"]) for t in board["trials"]) == [
        (str(i), SEEDS[i // 2]) for i in range(6)]
    # The best seed's model is the one exported, with its own test accuracy.
    best = max(runs, key=lambda r: r["best_score"])
    assert board["seed"] == seeds["best_seed"] == best["seed"]
    assert board["best_trial_id"] == best["best_trial_id"] and board["test_accuracy"] == best["test_accuracy"]
    snapshot = tmp_path / "snapshot"
    seeded["bucket"].store.restore(snapshot)
    exported = tmp_path / "best_model.keras"
    seeded["bucket"].store.get_file("results/best_model.keras", exported)
    assert exported.read_bytes() == (snapshot / f"seed-{best['seed']}" / "search" / "best_model.keras").read_bytes()


@pytest.mark.search
def test_each_seed_costs_its_own_time_and_the_seeds_add_up_to_the_ledger(seeded):
    from nascloud.jobbucket import spend

    seeds = seeded["board"]["seeds"]
    runs, ledger = seeds["runs"], seeds["ledger"]
    for run in runs:
        # Its own part: its measured seconds at the host's price (one host, so no other price applies).
        assert run["seconds"] > 1 and run["own_usd"] == pytest.approx(PRICE * run["seconds"] / 3600, rel=1e-3)
        assert run["shared_usd"] > 0 and run["cost_usd"] == pytest.approx(run["own_usd"] + run["shared_usd"])
    assert len({round(r["own_usd"], 6) for r in runs}) == 3  # measured, not split evenly
    # One seed after another: seed 2 starts after seed 1 ended, seed 3 after seed 2.
    assert runs[0]["ended_at"] <= runs[1]["started_at"] and runs[1]["ended_at"] <= runs[2]["started_at"]
    # The job's ledger at the export, read back through the one spend function, is what the seeds cost.
    total = spend(seeded["bucket"], ledger["at"])
    assert ledger["total_usd"] == pytest.approx(total, abs=1e-9) and total > 0
    assert sum(r["cost_usd"] for r in runs) == pytest.approx(total, abs=1e-6)
    # The time outside any seed (boot, TensorFlow, restore, data, the kill's lost work, export, the 60 s
    # minimum) is shared in proportion to the seeds' own cost.
    assert ledger["outside_seeds_usd"] == pytest.approx(total - sum(r["own_usd"] for r in runs), abs=1e-9)
    for run in runs:
        share = run["shared_usd"] / ledger["outside_seeds_usd"]
        assert share == pytest.approx(run["own_usd"] / ledger["seeds_own_usd"])


@pytest.mark.search
def test_a_kill_in_seed_2_resumes_seed_2_where_it_was_and_never_reruns_seed_1(seeded):
    killed, finished = seeded["runs"]
    assert killed.code == -9 and "seed 2/3 (seed 2): trials 3-4" in killed.log
    report = check_chain([killed.log, finished.log])
    assert report.problems == [] and report.completed == {str(n) for n in range(1, 7)}
    assert report.resumes == [(1, "3", 1)]  # the second run starts trial 3 at its second epoch
    assert "seed 1/3" not in finished.log and "seed 2/3 (seed 2)" in finished.log
    # The live view while seed 2 was the one searching.
    assert any(line.startswith("seed 2/3, trials 2/6") for line in seeded["live"]), seeded["live"]
    progress = seeded["bucket"].progress()
    assert progress["finished"] and progress["trials_done"] == 6 and progress["max_trials"] == 6


@pytest.mark.search
def test_results_shows_the_seeds_and_json_carries_them(seeded, tmp_path):
    env = {**os.environ, "NASCLOUD_HOME": str(tmp_path / "home"), "COLUMNS": "200"}

    def results(*flags: str) -> str:
        done = subprocess.run([sys.executable, "-m", "nascloud", "results", seeded["url"], *flags],
                              capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert json.loads(results("--json"))["seeds"] == seeded["board"]["seeds"]
    shown = results()
    seeds = seeded["board"]["seeds"]
    best = next(r for r in seeds["runs"] if r["seed"] == seeds["best_seed"])
    row = next(line for line in shown.splitlines() if "★ exported" in line)
    assert [c.strip() for c in row.split("│")[1:4]] == [str(best["seed"]), f"{best['best_score']:.4g}",
                                                        str(int(best["best_trial_id"]) + 1)]
    assert f"${best['cost_usd']:,.2f}" in row
    assert (f"best val_accuracy over 3 seeds: mean {seeds['best_score']['mean']:.4f}, spread (max - min) "
            f"{seeds['best_score']['spread']:.4f}, standard deviation {seeds['best_score']['std']:.4f}") in shown
    assert f"cost: ${seeds['ledger']['total_usd']:,.2f} in the ledger" in shown
    # The trials table says whose search each trial was: trial 3 is seed 2's first (2 trials per seed).
    trials_table = shown.split("best: trial", 1)[0]
    trial_rows = {cells[0]: cells[1] for line in trials_table.splitlines()
                  if (cells := [c.strip() for c in line.split("│")[1:3]]) and cells[0].isdigit()}
    assert {trial: trial_rows.get(trial) for trial in ("1", "3", "5")} == {"1": "1", "3": "2", "5": "3"}


def test_estimate_prices_three_seeds_as_three_times_the_work(tmp_path, monkeypatch, capsys):
    from nascloud import history
    from nascloud.cli import main

    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(history, "host_load_now", lambda: {"load_average": 0.0, "cpus": 2})
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "seeds-quick", "search": {
        "max_trials": 10, "epochs": 5, "seed": 1, "seconds_per_epoch": 36.0, "trial_overhead_seconds": 36.0},
        "compute": {"cloud": "aws", "gpu": "T4", "spot": False}}))

    def estimate(*settings: str) -> tuple[int, dict, str]:
        monkeypatch.setattr(sys, "argv", ["nascloud", "estimate", str(job), *settings, "--json"])
        with pytest.raises(SystemExit) as stop:
            main()
        out = capsys.readouterr()
        return stop.value.code or 0, json.loads(out.out) if not stop.value.code else {}, out.err

    _, one, _ = estimate()
    # The file says seed: 1; a setting of seeds replaces it (as the plan's pasted lines do).
    _, three, _ = estimate("--set", "search.seeds=[1,2,3]")
    assert three["workload"]["t4_hours"] == pytest.approx(3 * one["workload"]["t4_hours"], rel=1e-9)
    assert three["workload"]["overhead_hours"] == pytest.approx(3 * one["workload"]["overhead_hours"], rel=1e-9)
    assert three["workload"]["description"].startswith("3 seeds × 10 trials × 5 epochs")
    # The job's fixed term (boot, set-up, finish) is paid once: one job runs all three seeds.
    first, second = one["options"][0], three["options"][0]
    fixed = first["terms"]["job"]["value"] / 3600
    assert second["work_hours"] - fixed == pytest.approx(3 * (first["work_hours"] - fixed), abs=5e-4)  # 4 digits
    assert second["terms"]["job"] == first["terms"]["job"]
    assert second["total_usd"]["mean"] > 2.5 * first["total_usd"]["mean"]
    code, _, err = estimate("--set", "search.seeds=[1,2,1]")
    assert code == 2 and err.startswith("Error: --set search.seeds: ") and "repeats a seed" in err
    assert err.count("\n") == 1

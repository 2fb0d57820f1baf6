"""`nascloud estimate`, `prices`, `plan` as a user runs them: output, JSON shape, errors and exit codes."""

import json
import sys

import pytest
import yaml

from nascloud.cli import main


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    from nascloud import history

    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path / "home"))
    # The local provider's estimate follows this machine's load average; a test fixes it (an idle 2-core host).
    monkeypatch.setattr(history, "host_load_now", lambda: {"load_average": 0.0, "cpus": 2})
    monkeypatch.delenv("NASCLOUD_CATALOG", raising=False)

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["nascloud", *map(str, args)])
        with pytest.raises(SystemExit) as stop:
            main()
        out = capsys.readouterr()
        return stop.value.code or 0, out.out, out.err

    return run


def options(cli, *args):
    code, out, err = cli("estimate", *args, "--json")
    assert code == 0, err
    return json.loads(out)["options"]


def test_seed_figure_reproduces_exactly(cli):
    found = options(cli, "--gpu", "T4", "--price-per-hour", "0.70", "--hours", "72", "--on-demand")
    assert found and all(o["cost_usd"] == {"p50": 50.40, "p90": 50.40, "mean": 50.40} for o in found)
    assert all(o["wall_hours"]["p50"] == 72 and o["expected_preemptions"] == 0 for o in found)
    code, out, _ = cli("estimate", "--gpu", "T4", "--price-per-hour", "0.70", "--hours", "72", "--on-demand")
    assert code == 0 and "$50.40" in out


def test_json_shape_and_gcp_price_is_machine_plus_gpu(cli):
    found = options(cli, "--gpu", "T4", "--cloud", "gcp", "--hours", "10", "--on-demand", "--budget", "6")
    option = found[0]
    for key in ("cloud", "region", "instance_type", "gpu", "spot", "price_per_hour", "expected_preemptions",
                "p_over_budget"):
        assert key in option
    assert set(option["wall_hours"]) >= {"p50", "p90"} and set(option["cost_usd"]) >= {"p50", "p90"}
    assert (option["instance_type"], option["price_per_hour"], option["cost_usd"]["p50"]) == ("n1-standard-4", 0.54, 5.40)
    assert option["p_over_budget"] == 0


def test_worked_example_through_the_cli_with_its_measured_terms(cli):
    """The CLI prices with the model's measured terms (no 1-minute δ, no 6-minute restart), each with its
    source; the closed form and the Monte Carlo agree on them."""
    from nascloud import cost

    found = options(cli, "--gpu", "T4", "--cloud", "aws", "--spot", "--hours", "72", "--price-per-hour", "0.2147",
                    "--interruptions-per-hour", "0.01")
    option = found[0]
    terms = option["terms"]
    assert terms["checkpoint"]["value"] == 0.062 and "bench_checkpoints" in terms["checkpoint"]["source"]
    assert terms["restart"]["basis"] == "default" and "cloud-facts.md" in terms["restart"]["source"]
    closed = cost.first_order(72, 0.2147, 0.01, terms["restart"]["value"] / 3600, 0.062 / 3600,
                              option["checkpoint_interval_minutes"] / 60, 60 / 3600)
    assert option["first_order"]["wall_hours"] == pytest.approx(closed.wall_hours, abs=1e-3)
    assert option["cost_usd"]["mean"] == pytest.approx(closed.cost_usd, rel=0.02)
    assert option["first_order"]["cost_usd"] == pytest.approx(72 * 0.2147, rel=0.01)


def test_ranking_is_cheapest_expected_first_and_spot_beats_on_demand(cli):
    found = options(cli, "--trials", "20", "--epochs", "10", "--seconds-per-epoch", "60", "--budget", "5")
    totals = [o["total_usd"]["mean"] for o in found]
    assert totals == sorted(totals)
    assert {o["spot"] for o in found} == {True, False}
    spot_t4 = next(o for o in found if o["instance_type"] == "g4dn.xlarge" and o["spot"])
    # Interruptions only add: on average the bill is at least the work at the price (the run's own spread
    # moves its median a little below its mean).
    assert spot_t4["cost_usd"]["mean"] >= spot_t4["price_per_hour"] * spot_t4["work_hours"]
    # Known cases of the $5 budget: an option whose P90 is under half of it never goes over, one whose
    # P50 is over twice it always does.
    cheap = [o["p_over_budget"] for o in found if o["total_usd"]["p90"] < 2.5]
    dear = [o["p_over_budget"] for o in found if o["total_usd"]["p50"] > 10]
    assert cheap and dear and set(cheap) == {0} and set(dear) == {1}


def test_each_term_says_where_it_came_from_and_a_cloud_estimate_ignores_this_machine(cli, tmp_path):
    from nascloud import history
    from nascloud.job import load_job

    code, out, err = cli("estimate", "--trials", "20", "--epochs", "10", "--seconds-per-epoch", "3", "--json")
    assert code == 0, err
    terms = json.loads(out)["workload"]["terms"]
    assert terms["seconds_per_epoch"] == {"value": 3.0, "basis": "given", "source": "--seconds-per-epoch"}
    assert "host_load" not in terms  # cloud offers only: the load on this machine is not theirs
    # A size no job has run: the search may visit other architectures, and the P90 allows for it.
    assert terms["job_cv"]["value"] == 0.16 and "no similar job of 20 trials × 10 epochs" in terms["job_cv"]["source"]

    local = write_job(tmp_path, search={"max_trials": 4, "epochs": 3}, compute={"cloud": "local",
                                                                                "price_per_hour": 36})
    first = json.loads(cli("estimate", local, "--json")[1])
    assert first["workload"]["terms"]["job_cv"]["value"] == 0.16
    # A guess is not scaled by this machine's load, so none is sampled (a second) or shown.
    assert "host_load" not in first["workload"]["terms"] and first["workload"]["seconds_per_epoch_basis"] == "guess"
    folder = tmp_path / "home" / "history"
    folder.mkdir(parents=True)
    (folder / "j0.json").write_text(json.dumps({
        "schema": 1, "job_id": "j0", "name": "digits-quick", "status": "finished", "written_at": 0,
        "similar": history.similarity_key(load_job(local), "local", None), "trials": 4, "max_trials": 4, "epochs": 3,
        "data_fraction": 1.0, "trial_seconds": [4.0] * 4, "snapshot_seconds": [0.02], "recovery_seconds": [],
        "preemptions": 0, "wall_seconds": 30.0, "spend_usd": 0.3, "estimate": None}))
    # One job of this size: the spread of a run estimated from one record (the prior, widened for one).
    terms = json.loads(cli("estimate", local, "--json")[1])["workload"]["terms"]
    assert terms["host_load"]["basis"] == "measured"  # the history's times, scaled to the load now
    seen = terms["job_cv"]
    assert seen["value"] == pytest.approx(0.428, abs=1e-3) and "pooled with a prior (0.21" in seen["source"]


def write_job(tmp_path, **sections):
    data = {"name": "digits-quick", **sections}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_job_file_gives_the_workload_and_flags_override(cli, tmp_path):
    job = write_job(tmp_path, search={"max_trials": 10, "epochs": 5, "seconds_per_epoch": 36.0,
                                      "trial_overhead_seconds": 0},
                    compute={"cloud": "aws", "gpu": "T4", "spot": False})
    def training_hours(option):  # the work less the job's fixed term (boot, set-up, finish)
        return option["work_hours"] - option["terms"]["job"]["value"] / 3600

    found = options(cli, job)
    assert training_hours(found[0]) == pytest.approx(10 * 5 * 36 / 3600, abs=1e-4)
    assert {o["cloud"] for o in found} == {"aws"} and not any(o["spot"] for o in found)
    found = options(cli, job, "--trials", "20")
    assert training_hours(found[0]) == pytest.approx(20 * 5 * 36 / 3600, abs=1e-4)


def test_calibration_record_is_used_then_a_stated_guess(cli, tmp_path):
    job = write_job(tmp_path, search={"max_trials": 4, "epochs": 3, "trial_overhead_seconds": 0},
                    compute={"cloud": "gcp", "gpu": "T4", "spot": False})
    code, out, _ = cli("estimate", job)
    assert code == 0 and "seconds per epoch is a guess" in out and "`nascloud calibrate JOB.yaml`" in out
    record = tmp_path / "home" / "calibrations" / "digits-quick.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"seconds_per_epoch": 9.0, "seconds_per_sample": 0.005, "samples": 1797,
                                  "gpu": "T4", "measured_at": "2026-11-28T05:00:00Z"}))
    code, out, _ = cli("estimate", job, "--json")
    workload = json.loads(out)["workload"]
    assert workload["seconds_per_epoch_basis"] == "calibration"
    assert workload["t4_hours"] == pytest.approx(4 * 3 * 0.005 * 1797 / 3600, rel=1e-2)


def test_prices_cheapest_first_with_sources(cli):
    code, out, _ = cli("prices", "--gpu", "T4", "--json")
    offers = json.loads(out)["offers"]
    cheapest = [min(p for p in (o["spot_usd_per_hour"], o["on_demand_usd_per_hour"]) if p) for o in offers]
    assert cheapest == sorted(cheapest) and all(o["source"] and o["as_of"] for o in offers)
    code, out, _ = cli("prices", "--cloud", "lambda")
    assert code == 0 and "gpu_1x_a10" in out and "8×A100" in out


def test_plan_stages_with_overrides(cli, tmp_path):
    job = write_job(tmp_path, search={"max_trials": 20, "epochs": 10, "seconds_per_epoch": 60.0},
                    compute={"cloud": "aws", "gpu": "T4"})
    code, out, err = cli("plan", job, "--budget", "800", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert [s["name"] for s in result["stages"]] == ["explore", "full", "refine"]
    assert result["stages"][0]["runs"][0]["search.data_fraction"] == 0.25
    assert len(result["stages"][1]["runs"]) == 1 and len(result["stages"][1]["runs"][0]["search.seeds"]) >= 3
    # Each stage costs what `estimate` says its runs cost on the plan's offer (the job file's seconds per
    # epoch are for all the data: a quarter of the data takes a quarter of the time; one job runs all the seeds).
    chosen = (result["option"]["instance_type"], result["option"]["spot"])
    for stage in result["stages"]:
        run = stage["runs"][0]
        fraction = run.get("search.data_fraction", 1.0)
        seeds = ["--set", f"search.seeds={run['search.seeds']}"] if "search.seeds" in run else []
        found = options(cli, job, *seeds, "--trials", run["search.max_trials"],
                        "--epochs", run.get("search.epochs", 10), "--seconds-per-epoch", 60.0 * fraction)
        alone = next(o for o in found if (o["instance_type"], o["spot"]) == chosen)
        runs = len(stage["runs"])
        assert stage["cost_usd"] == pytest.approx(alone["total_usd"]["mean"] * runs, abs=0.01 * runs), stage["name"]
    code, out, _ = cli("plan", job, "--budget", "800")
    assert code == 0 and "reserve" in out and "--set 'search.seeds=[1,2,3" in out


@pytest.mark.parametrize("args, message", [
    (["estimate", "--gpu", "K80", "--hours", "3"], "Error: unknown GPU 'K80'; known: A10, A100,"),
    (["estimate", "--cloud", "azure", "--hours", "3"], "Error: unknown cloud 'azure'; known: aws, gcp, lambda, paperspace"),
    (["estimate", "--cloud", "aws", "--region", "mars-1", "--hours", "3"], "Error: unknown region 'mars-1'"),
    (["estimate", "--hours", "0"], "Error: --hours must be a number of hours in (0, 100,000], got 0"),
    (["estimate", "--hours", "-5"], "Error: --hours must be a number of hours in (0, 100,000], got -5"),
    (["estimate", "--hours", "5", "--budget", "0"], "Error: --budget must be a number of dollars in (0, 1,000,000]"),
    (["plan", "--trials", "5", "--epochs", "3", "--budget", "-1"],
     "Error: --budget must be a number of dollars in (0, 1,000,000]"),
    (["estimate", "--hours", "5", "--trials", "3"], "Error: give either --hours or a workload"),
    (["estimate"], "Error: nothing to estimate"),
    (["plan", "--trials", "5", "--epochs", "3"], "Error: plan needs a budget"),
    (["estimate", "--hours", "5", "--plot", "x.jpg"], "Error: --plot writes a PNG"),
    (["estimate", "--gpu", "T4", "--cloud", "lambda", "--hours", "3"], "Error: unknown GPU 'T4' on lambda"),
    (["prices", "--refresh", "aws"], "Error: --refresh writes a catalog file: give --catalog DIR"),
    (["estimate", "--hours", "abc"], "Error: Invalid value for '--hours'"),
])
def test_bad_input_is_one_line_exit_2(cli, args, message):
    code, out, err = cli(*args)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("job, message", [
    ({"search": {"max_trails": 3}}, "search.max_trails: unknown field"),
    ({"search": {"epochs": 0}}, "search.epochs: must be a whole number in [1, 10,000], got 0"),
    ({"compute": {"spot": "maybe"}}, "compute.spot: Input should be a valid boolean"),
])
def test_bad_job_file_names_the_field(cli, tmp_path, job, message):
    code, _, err = cli("estimate", write_job(tmp_path, **job))
    assert code == 2 and message in err and err.count("\n") == 1


def test_bad_catalog_row_via_env_and_flag(cli, tmp_path, monkeypatch):
    folder = tmp_path / "cat"
    folder.mkdir()
    (folder / "aws.csv").write_text(
        "cloud,region,zone,instance_type,accelerator_type,gpu,gpu_count,vcpus,memory_gib,on_demand_usd_per_hour,"
        "spot_usd_per_hour,source,as_of\naws,us-east-1,use1-az1,g4dn.xlarge,,T4,1,4,16,0.526,0.6,mine,2026-01-01\n")
    code, _, err = cli("prices", "--catalog", folder)
    assert code == 2 and "aws.csv line 2: spot price 0.6 is not below on-demand 0.526" in err
    monkeypatch.setenv("NASCLOUD_CATALOG", str(folder))
    code, _, err = cli("estimate", "--hours", "3")
    assert code == 2 and err.startswith("Error: ") and "line 2" in err


def test_plot_writes_a_png(cli, tmp_path):
    target = tmp_path / "options.png"
    code, out, err = cli("estimate", "--gpu", "T4", "--hours", "20", "--plot", target)
    assert code == 0, err
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_estimate_for_launch_records(tmp_path, monkeypatch):
    """What launch asks of the estimate: the JSON of one option and the checkpoint interval."""
    from nascloud.estimating import choose, estimate_for_offer
    from nascloud.job import parse_job

    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path))
    spec = parse_job({"name": "digits-quick", "search": {"seconds_per_epoch": 60.0, "max_trials": 10, "epochs": 6},
                      "compute": {"cloud": "aws", "gpu": "T4"}, "budget": {"usd": 5}})
    result, interval = estimate_for_offer(spec, choose(spec).launch_record())
    assert result["instance_type"] == "g4dn.xlarge" and result["spot"] is True
    assert result["wall_hours"]["p90"] >= result["wall_hours"]["p50"] >= 1.0
    # About $0.25 of work against a $5 budget: no run goes over.
    assert result["p_over_budget"] == 0 and 1 <= interval < 600  # Young/Daly at 0.01/h, at least one epoch
    local = spec.with_overrides(compute={"cloud": "local", "spot": False})
    result, interval = estimate_for_offer(local, choose(local).launch_record())
    assert result["cost_usd"]["p50"] == 0 and interval == 30


def _launch_quote(spec):
    from nascloud import launching

    return launching.quote(spec).estimate


@pytest.mark.parametrize("compute", [
    {"cloud": "local", "gpu": None, "price_per_hour": 36},
    {"cloud": "local", "gpu": None, "price_per_hour": 36, "interruptions_per_hour": 30},
    {"cloud": "aws", "gpu": "T4"},
    {"cloud": "gcp", "gpu": "T4", "spot": False},
])
def test_estimate_plan_and_launch_give_the_same_figure(cli, tmp_path, compute):
    from nascloud.job import load_job

    bucket = "file://" + str(tmp_path / "bucket") if compute["cloud"] == "local" else (
        "s3://my-bucket/p" if compute["cloud"] == "aws" else "gs://my-bucket/p")
    job = write_job(tmp_path, search={"max_trials": 8, "epochs": 10, "seconds_per_epoch": 1.2},
                    compute=compute, checkpoint={"bucket": bucket}, budget={"usd": 50})
    estimate = next(o for o in options(cli, job) if o["launchable"])
    launched = _launch_quote(load_job(job))
    for key in ("cloud", "instance_type", "spot", "price_per_hour", "total_usd", "wall_hours", "cost_usd"):
        assert launched[key] == estimate[key], key
    code, out, err = cli("plan", job, "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert (plan["option"]["cloud"], plan["option"]["instance_type"], plan["option"]["price_per_hour"]) == (
        estimate["cloud"], estimate["instance_type"], estimate["price_per_hour"])
    if compute["cloud"] == "local":  # a local job is the local provider at its price, not a cloud's GPUs
        found = options(cli, job)
        assert [(o["cloud"], o["price_per_hour"]) for o in found] == [("local", 36)]
        rate = compute.get("interruptions_per_hour", 0)
        assert found[0]["interruptions_per_hour"] == rate and (found[0]["expected_preemptions"] > 0) == bool(rate)


@pytest.mark.parametrize("compute, message", [
    ({"cloud": "aws", "gpu": "T4", "instance_type": "g9.huge"}, "no offer in the catalog matches"),
    ({"cloud": "aws", "gpu": "T4", "zone": "use1-az9"}, "no offer in the catalog matches"),
    ({"cloud": "gcp", "gpu": "K80"}, "unknown GPU 'K80' on gcp"),
])
def test_a_pinned_offer_that_does_not_exist_is_refused_by_estimate_too(cli, tmp_path, compute, message):
    job = write_job(tmp_path, search={"seconds_per_epoch": 5.0}, compute=compute)
    code, _, err = cli("estimate", job)
    assert code == 2 and message in err and err.count("\n") == 1
    code, _, err = cli("plan", job, "--budget", "10")
    assert code == 2 and message in err


def test_pins_hold_unless_all(cli, tmp_path):
    job = write_job(tmp_path, search={"seconds_per_epoch": 5.0}, compute={"cloud": "aws", "gpu": "T4",
                                                                          "instance_type": "g4dn.2xlarge"})
    assert {o["instance_type"] for o in options(cli, job)} == {"g4dn.2xlarge"}
    assert len({o["instance_type"] for o in options(cli, job, "--all")}) > 3


def test_price_per_hour_is_one_gpus_and_other_catalogs_are_marked_estimate_only(cli):
    found = options(cli, "--gpu", "A100", "--hours", "10", "--price-per-hour", "1.0", "--on-demand")
    by_type = {o["instance_type"]: o for o in found}
    assert by_type["p4d.24xlarge"]["price_per_hour"] == 8.0 and by_type["a2-highgpu-1g"]["price_per_hour"] == 1.0
    assert "1 of its 8 GPUs" in by_type["p4d.24xlarge"]["note"]
    lam = by_type["gpu_1x_a100"]
    assert lam["launchable"] is False and lam["note"].startswith("estimate only")
    assert all(o["launchable"] for o in found if o["cloud"] in ("aws", "gcp"))
    code, out, _ = cli("estimate", "--gpu", "A100", "--hours", "10", "--on-demand")
    assert code == 0 and "estimate only" in out and "`launch` runs on the first row it can run: gcp" in out


def test_terms_come_from_the_history_of_similar_jobs(cli, tmp_path):
    from nascloud import history
    from nascloud.job import load_job

    job = write_job(tmp_path, search={"max_trials": 6, "epochs": 4}, compute={"cloud": "local", "gpu": None,
                                                                             "price_per_hour": 36})
    before = options(cli, job)[0]
    assert {t["basis"] for t in before["terms"].values()} <= {"default"}
    key = history.similarity_key(load_job(job), "local", None)
    folder = tmp_path / "home" / "history"
    folder.mkdir(parents=True)
    for n, (trials, wall, recoveries) in enumerate([(4, 4 * 4.5 + 20, []), (8, 8 * 4.5 + 20, []),
                                                    (8, 8 * 4.5 + 50, [10.0, 12.0])]):
        (folder / f"j{n}.json").write_text(json.dumps({
            "schema": 1, "job_id": f"j{n}", "name": "digits-quick", "status": "finished", "written_at": n,
            "similar": key, "trials": trials, "epochs": 4, "data_fraction": 1.0, "trial_seconds": [4.0] * trials,
            "snapshot_seconds": [0.02, 0.04], "recovery_seconds": recoveries, "preemptions": len(recoveries),
            "wall_seconds": wall, "spend_usd": wall / 100, "estimate": None}))
    after = options(cli, job)[0]
    terms = after["terms"]
    assert terms["job"] == {"value": pytest.approx(20, abs=1e-3), "basis": "history",
                            "source": "the history of 3 similar job(s)"}
    assert terms["restart"]["value"] == pytest.approx(11) and terms["checkpoint"]["value"] == pytest.approx(0.03)
    code, out, _ = cli("estimate", job, "--json")
    workload = json.loads(out)["workload"]
    assert workload["seconds_per_epoch_basis"] == "history"
    assert workload["terms"]["trial_overhead"]["value"] == pytest.approx(0.5, abs=1e-3)
    # 6 trials × (4 × 1 s + 0.5 s) + 20 s, without interruptions: what the history says, exactly; the Monte
    # Carlo's mean within its noise (three records leave a spread of 35 % a run: 0.55 % on 4000 samples' mean).
    assert after["first_order"]["wall_hours"] * 3600 == pytest.approx(6 * 4.5 + 20, abs=0.4)
    assert after["wall_hours"]["mean"] * 3600 == pytest.approx(6 * 4.5 + 20, rel=0.02)

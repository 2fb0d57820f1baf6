"""`nascloud estimate`, `prices`, `plan` as a user runs them: output, JSON shape, errors and exit codes."""

import json
import sys

import pytest
import yaml

from nascloud.cli import main


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path / "home"))
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


def test_worked_example_through_the_cli(cli):
    found = options(cli, "--gpu", "T4", "--cloud", "aws", "--spot", "--hours", "72", "--price-per-hour", "0.2147",
                    "--interruptions-per-hour", "0.01")
    option = found[0]
    assert option["first_order"] == {"wall_hours": pytest.approx(73.4, abs=0.05), "cost_usd": 15.76,
                                     "preemptions": pytest.approx(0.734, abs=0.001)}
    assert option["cost_usd"]["mean"] == pytest.approx(15.76, rel=0.02)
    assert option["cost_usd"]["p90"] >= option["cost_usd"]["p50"] >= 0.2147 * 72


def test_ranking_is_cheapest_expected_first_and_spot_beats_on_demand(cli):
    found = options(cli, "--trials", "20", "--epochs", "10", "--seconds-per-epoch", "60", "--budget", "5")
    totals = [o["total_usd"]["mean"] for o in found]
    assert totals == sorted(totals)
    assert {o["spot"] for o in found} == {True, False}
    spot_t4 = next(o for o in found if o["instance_type"] == "g4dn.xlarge" and o["spot"])
    assert spot_t4["cost_usd"]["p50"] >= spot_t4["price_per_hour"] * spot_t4["work_hours"]
    # Known cases of the $5 budget: an option whose P90 is under half of it never goes over, one whose
    # P50 is over twice it always does.
    cheap = [o["p_over_budget"] for o in found if o["total_usd"]["p90"] < 2.5]
    dear = [o["p_over_budget"] for o in found if o["total_usd"]["p50"] > 10]
    assert cheap and dear and set(cheap) == {0} and set(dear) == {1}


def write_job(tmp_path, **sections):
    data = {"name": "digits-quick", **sections}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_job_file_gives_the_workload_and_flags_override(cli, tmp_path):
    job = write_job(tmp_path, search={"max_trials": 10, "epochs": 5, "seconds_per_epoch": 36.0,
                                      "trial_overhead_seconds": 0},
                    compute={"cloud": "aws", "gpu": "T4", "spot": False})
    found = options(cli, job)
    assert found[0]["work_hours"] == pytest.approx(10 * 5 * 36 / 3600)
    assert {o["cloud"] for o in found} == {"aws"} and not any(o["spot"] for o in found)
    found = options(cli, job, "--trials", "20")
    assert found[0]["work_hours"] == pytest.approx(20 * 5 * 36 / 3600)


def test_calibration_record_is_used_then_a_stated_guess(cli, tmp_path):
    job = write_job(tmp_path, search={"max_trials": 4, "epochs": 3, "trial_overhead_seconds": 0},
                    compute={"cloud": "gcp", "gpu": "T4", "spot": False})
    code, out, _ = cli("estimate", job)
    assert code == 0 and "seconds per epoch is a guess" in out and "nascloud calibrate digits-quick" in out
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
    assert len(result["stages"][1]["runs"]) >= 3
    # Each stage costs what `estimate` says its runs cost on the plan's offer (the job file's seconds per
    # epoch are for all the data: a quarter of the data takes a quarter of the time).
    chosen = (result["option"]["instance_type"], result["option"]["spot"])
    for stage in result["stages"]:
        run = stage["runs"][0]
        fraction = run.get("search.data_fraction", 1.0)
        found = options(cli, job, "--trials", run["search.max_trials"], "--epochs", run.get("search.epochs", 10),
                        "--seconds-per-epoch", 60.0 * fraction)
        alone = next(o for o in found if (o["instance_type"], o["spot"]) == chosen)
        runs = len(stage["runs"])
        assert stage["cost_usd"] == pytest.approx(alone["total_usd"]["mean"] * runs, abs=0.01 * runs), stage["name"]
    code, out, _ = cli("plan", job, "--budget", "800")
    assert code == 0 and "reserve" in out and "search.seed=2" in out


@pytest.mark.parametrize("args, message", [
    (["estimate", "--gpu", "K80", "--hours", "3"], "Error: unknown GPU 'K80'; known: A10, A100,"),
    (["estimate", "--cloud", "azure", "--hours", "3"], "Error: unknown cloud 'azure'; known: aws, gcp, lambda, paperspace"),
    (["estimate", "--cloud", "aws", "--region", "mars-1", "--hours", "3"], "Error: unknown region 'mars-1'"),
    (["estimate", "--hours", "0"], "Error: --hours must be a number of hours in (0, 100,000], got 0"),
    (["estimate", "--hours", "-5"], "Error: --hours must be a number of hours in (0, 100,000], got -5"),
    (["estimate", "--hours", "5", "--budget", "0"], "Error: --budget must be a number of dollars in (0, 1,000,000]"),
    (["plan", "--trials", "5", "--budget", "-1"], "Error: --budget must be a number of dollars in (0, 1,000,000]"),
    (["estimate", "--hours", "5", "--trials", "3"], "Error: give either --hours or a workload"),
    (["estimate"], "Error: nothing to estimate"),
    (["plan", "--trials", "5"], "Error: plan needs a budget"),
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
    from nascloud.estimating import estimate_for_offer
    from nascloud.job import parse_job
    from nascloud.pricing import cheapest_offer

    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path))
    spec = parse_job({"name": "digits-quick", "search": {"seconds_per_epoch": 60.0, "max_trials": 10, "epochs": 6},
                      "compute": {"cloud": "aws", "gpu": "T4"}, "budget": {"usd": 5}})
    record = cheapest_offer(cloud="aws", gpu="T4", spot=True).launch_record()
    result, interval = estimate_for_offer(spec, record)
    assert result["instance_type"] == "g4dn.xlarge" and result["spot"] is True
    assert result["wall_hours"]["p90"] >= result["wall_hours"]["p50"] >= 1.0
    # About $0.25 of work against a $5 budget: no run goes over.
    assert result["p_over_budget"] == 0 and 60 < interval < 600  # Young/Daly at 0.01/h and 1 min
    local = {"cloud": "local", "region": "local", "zone": None, "instance_type": "local", "gpu": None,
             "gpu_count": 0, "spot": False, "price_per_hour": 0.0, "on_demand_price_per_hour": 0.0, "source": "user"}
    result, interval = estimate_for_offer(spec, local)
    assert result["cost_usd"]["p50"] == 0 and interval == 30

"""The packaged catalog, its validation, and user catalogs (NASCLOUD_CATALOG / --catalog)."""

import csv
import datetime
import shutil

import pytest

from nascloud.errors import UsageError
from nascloud.pricing import load_catalog
from nascloud.pricing.catalog import OFFER_COLUMNS, PACKAGED


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(PACKAGED)


def test_every_row_has_a_source_and_date_and_every_gpu_a_speed(catalog):
    assert catalog.clouds() == ["aws", "gcp", "lambda", "paperspace"]
    today = datetime.date.today()
    for offer in catalog.offers:
        # The price data's date, or "unknown" where its source's commit date could not be found: never the
        # day the row was copied (the shipped rows' commit date was not retrievable).
        assert offer.source and (offer.as_of == "unknown" or
                                 datetime.date(2020, 1, 1) <= datetime.date.fromisoformat(offer.as_of) <= today), offer
        assert offer.gpu in catalog.gpus, offer
    assert {g.gpu: g.speed for g in catalog.gpus.values() if g.basis != "estimated"} == {"T4": 1.0, "V100": 2.5}
    assert all(g.source for g in catalog.gpus.values())
    assert {"on-demand", "aws-spot", "gcp-spot", "gcp-preemptible"} <= set(catalog.rates)
    assert catalog.rates["gcp-preemptible"].max_run_hours == 24
    assert all(r.source for r in catalog.rates.values())
    assert catalog.billing["aws"]["public_ipv4_hour"] == 0.005
    assert catalog.billing["aws"]["billing_minimum_seconds"] == 60


@pytest.mark.parametrize("cloud, us, eu", [("aws", {"us-east-1", "us-west-2"}, {"eu-central-1"}),
                                           ("gcp", {"us-central1", "us-west1"}, {"europe-west4"})])
def test_two_us_and_one_eu_region_with_t4_v100_a10g_or_l4_and_a100(catalog, cloud, us, eu):
    for region in us | eu:
        gpus = {o.gpu for o in catalog.offers if o.cloud == cloud and o.region == region}
        assert {"T4", "V100", "A100"} <= gpus and gpus & {"A10G", "L4"}, (region, gpus)
        assert all(o.spot is not None for o in catalog.offers if o.cloud == cloud and o.region == region)


def test_an_offer_whose_gpu_has_no_speed_or_whose_date_is_not_a_date_is_refused(tmp_path):
    header = ",".join(OFFER_COLUMNS)
    row = "aws,us-east-1,use1-az1,g9.xlarge,,{gpu},1,4,16,0.9,0.3,mine,{as_of}\n"
    (tmp_path / "aws.csv").write_text(header + "\n" + row.format(gpu="K80", as_of="unknown"))
    with pytest.raises(UsageError, match="no training speed for GPU K80 in gpus.csv"):
        load_catalog(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "aws.csv").write_text(header + "\n" + row.format(gpu="T4", as_of="last week"))
    with pytest.raises(UsageError, match="as_of 'last week' must be the price data's date"):
        load_catalog(other)


def test_gcp_offer_is_machine_plus_accelerator(catalog):
    """n1-standard-4 0.19 + T4 0.35 = 0.54; spot 0.06382 + 0.1915 = 0.25532 (cloud-facts.md)."""
    t4 = [o for o in catalog.select(gpu="T4", cloud="gcp", region="us-central1")]
    assert {o.zone for o in t4} == {"us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"}
    assert {(o.instance_type, o.accelerator_type, o.on_demand, o.spot) for o in t4} == {
        ("n1-standard-4", "nvidia-tesla-t4", 0.54, 0.25532)}
    a100 = catalog.select(gpu="A100", cloud="gcp")[0]
    assert a100.instance_type == "a2-highgpu-1g" and a100.on_demand == pytest.approx(3.67339)


def test_aws_spot_prices_are_per_zone_id_and_launch_record_keeps_what_launch_needs(catalog):
    from nascloud.estimating import options_for

    option = min(options_for(catalog, gpu="T4", cloud="aws", spot=True), key=lambda o: o.price_per_hour)
    record = option.launch_record()
    assert record["instance_type"] == "g4dn.xlarge" and record["zone_id"] == "use1-az2" and record["zone"] is None
    assert record["price_per_hour"] == 0.2132 and record["on_demand_price_per_hour"] == 0.526
    (gcp,) = [o.launch_record() for o in options_for(catalog, gpu="T4", cloud="gcp", region="us-central1", spot=False)]
    assert (gcp["instance_type"], gcp["accelerator_type"], gcp["gpu_count"], gcp["price_per_hour"]) == (
        "n1-standard-4", "nvidia-tesla-t4", 1, 0.54)
    assert gcp["zone"].startswith("us-central1-")


def test_unknown_names_list_the_known_ones(catalog):
    with pytest.raises(UsageError, match=r"unknown GPU 'K80'; known: A10, A100, .*T4"):
        catalog.select(gpu="K80")
    with pytest.raises(UsageError, match=r"unknown cloud 'azure'; known: aws, gcp, lambda, paperspace or any"):
        catalog.select(cloud="azure")
    with pytest.raises(UsageError, match=r"unknown region 'eu-west-1' for T4 on aws; known: eu-central-1, us-east-1, us-west-2"):
        catalog.select(gpu="t4", cloud="aws", region="eu-west-1")


def _user_catalog(tmp_path, edit=None, name="mine.csv"):
    """A catalog folder with one offer file copied from the packaged AWS rows, one row edited."""
    rows = list(csv.DictReader(open(PACKAGED / "aws.csv")))
    if edit:
        edit(rows[0])
    with open(tmp_path / name, "w", newline="") as handle:
        writer = csv.DictWriter(handle, OFFER_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(on_demand_usd_per_hour=""), "line 2: on_demand_usd_per_hour is empty"),
    (lambda r: r.update(spot_usd_per_hour="0.9"), "line 2: spot price 0.9 is not below on-demand 0.526"),
    (lambda r: r.update(on_demand_usd_per_hour="700.0"), "line 2: on_demand_usd_per_hour 700 looks like a placeholder"),
    (lambda r: r.update(spot_usd_per_hour="cheap"), "line 2: spot_usd_per_hour 'cheap' is not a number"),
    (lambda r: r.update(gpu_count="0"), "line 2: gpu_count '0' must be a whole number >= 1"),
    (lambda r: r.update(source=""), "line 2: source is empty"),
])
def test_bad_rows_are_rejected_with_file_and_line(tmp_path, edit, message):
    folder = _user_catalog(tmp_path, edit)
    with pytest.raises(UsageError) as error:
        load_catalog(folder)
    assert message in str(error.value) and "mine.csv" in str(error.value)


def test_missing_column_and_bad_folder(tmp_path):
    (tmp_path / "x.csv").write_text("cloud,region\naws,us-east-1\n")
    with pytest.raises(UsageError, match="missing column"):
        load_catalog(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        load_catalog(tmp_path / "nope")


def test_user_catalog_from_env_uses_packaged_tables_unless_given(tmp_path, monkeypatch):
    folder = _user_catalog(tmp_path, lambda r: r.update(spot_usd_per_hour="0.1"))
    monkeypatch.setenv("NASCLOUD_CATALOG", str(folder))
    mine = load_catalog()
    assert mine.clouds() == ["aws"] and min(o.spot for o in mine.offers) == 0.1
    assert mine.gpus["T4"].speed == 1.0  # from the packaged gpus.csv
    shutil.copy(PACKAGED / "gpus.csv", folder / "gpus.csv")
    (folder / "gpus.csv").write_text((folder / "gpus.csv").read_text().replace("A10G,2.0", "A10G,3.3"))
    from nascloud.pricing import catalog as module

    module._load.cache_clear()  # the catalog is read once per process; this test edits it in between
    assert load_catalog().gpus["A10G"].speed == 3.3

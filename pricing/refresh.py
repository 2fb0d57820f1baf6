"""Live refreshers: today's prices for the catalog's own offers, written as a catalog CSV.

They refresh prices of the instance types the catalog already knows (its rows say which GPUs, vCPUs
and memory each has); they do not discover new types. boto3 and google-cloud-billing are imported
here only, when a refresh runs.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional

from nascloud.aws_session import aws_session
from nascloud.cloud_errors import one_line
from nascloud.cost import Offer
from nascloud.errors import CloudError, UsageError
from nascloud.pricing.catalog import OFFER_COLUMNS, parse_offer

AWS_LOCATIONS = {  # the Pricing API names regions by their long names
    "us-east-1": "US East (N. Virginia)", "us-east-2": "US East (Ohio)", "us-west-2": "US West (Oregon)",
    "eu-west-1": "EU (Ireland)", "eu-central-1": "EU (Frankfurt)",
}
GCP_COMPUTE_SERVICE = "services/6F81-5844-456A"
GCP_GPU_SKUS = {"T4": "Nvidia Tesla T4", "V100": "Nvidia Tesla V100", "P100": "Nvidia Tesla P100",
                "L4": "Nvidia L4", "A100": "Nvidia Tesla A100"}
GCP_FAMILY_SKUS = {"n1": "N1 Predefined Instance", "g2": "G2 Instance", "a2": "A2 Instance"}


def _today() -> str:
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


def write_offers(offers: Iterable[Offer], path: Path) -> Path:
    """Write offers in the catalog's format, each row validated as the loader will read it."""
    rows = []
    for line, o in enumerate(offers, start=2):
        row = {"cloud": o.cloud, "region": o.region, "zone": o.zone, "instance_type": o.instance_type,
               "accelerator_type": o.accelerator_type, "gpu": o.gpu, "gpu_count": o.gpu_count,
               "vcpus": f"{o.vcpus:g}", "memory_gib": f"{o.memory_gib:g}",
               "on_demand_usd_per_hour": f"{o.on_demand:.6g}",
               "spot_usd_per_hour": "" if o.spot is None else f"{o.spot:.6g}", "source": o.source, "as_of": o.as_of}
        parse_offer({k: str(v) for k, v in row.items()}, f"{path} line {line}")
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, OFFER_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _spot_or_none(spot: Optional[float], on_demand: float) -> Optional[float]:
    """A spot price at or above on-demand is no offer worth planning with (the loader rejects it)."""
    return spot if spot is not None and 0 < spot < on_demand else None


# ---- AWS ----------------------------------------------------------------------------------------

def parse_price_list(entries: Iterable[str]) -> dict[str, float]:
    """Pricing API PriceList entries (JSON strings) -> {instance type: on-demand USD per hour}."""
    prices = {}
    for entry in entries:
        product = json.loads(entry)
        instance_type = product["product"]["attributes"].get("instanceType")
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term["priceDimensions"].values():
                usd = float(dimension["pricePerUnit"].get("USD", 0))
                if dimension.get("unit") == "Hrs" and usd > 0 and instance_type:
                    prices[instance_type] = usd
    return prices


def aws_on_demand(instance_types: list[str], region: str, session=None) -> dict[str, float]:
    """On-demand Linux prices from the AWS Pricing API (served from us-east-1)."""
    if region not in AWS_LOCATIONS:
        raise UsageError(f"no Pricing API location name for {region}; known: {', '.join(AWS_LOCATIONS)}")
    client = (session or aws_session()).client("pricing", region_name="us-east-1")
    filters = [{"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in (
        ("location", AWS_LOCATIONS[region]), ("operatingSystem", "Linux"), ("tenancy", "Shared"),
        ("capacitystatus", "Used"), ("preInstalledSw", "NA"))]
    prices = {}
    for instance_type in instance_types:
        pages = client.get_paginator("get_products").paginate(
            ServiceCode="AmazonEC2", Filters=[*filters, {"Type": "TERM_MATCH", "Field": "instanceType",
                                                         "Value": instance_type}])
        for page in pages:
            prices.update(parse_price_list(page["PriceList"]))
    return prices


def aws_spot_offers(base: list[Offer], region: str, on_demand: dict[str, float], session=None,
                    as_of: Optional[str] = None) -> list[Offer]:
    """One offer per instance type and zone ID with the latest spot price (describe_spot_price_history
    names zones; describe_availability_zones maps them to the account-independent zone IDs)."""
    ec2 = (session or aws_session()).client("ec2", region_name=region)
    known = {o.instance_type: o for o in base if o.cloud == "aws" and o.region == region}
    if not known:
        raise UsageError(f"the catalog has no AWS offers in {region} to refresh")
    zone_ids = {z["ZoneName"]: z["ZoneId"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}
    latest: dict[tuple[str, str], dict] = {}
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    for page in ec2.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=sorted(known), ProductDescriptions=["Linux/UNIX"], StartTime=start):
        for item in page["SpotPriceHistory"]:
            key = (item["InstanceType"], item["AvailabilityZone"])
            if key not in latest or item["Timestamp"] > latest[key]["Timestamp"]:
                latest[key] = item
    as_of = as_of or _today()
    offers = []
    for (instance_type, zone), item in sorted(latest.items()):
        template = known[instance_type]
        price = on_demand.get(instance_type, template.on_demand)
        offers.append(Offer(cloud="aws", region=region, zone=zone_ids.get(zone, zone), instance_type=instance_type,
                            gpu=template.gpu, gpu_count=template.gpu_count, vcpus=template.vcpus,
                            memory_gib=template.memory_gib, on_demand=price,
                            spot=_spot_or_none(float(item["SpotPrice"]), price),
                            source=("AWS Pricing API + " if instance_type in on_demand else "catalog on-demand + ")
                            + "EC2 describe_spot_price_history", as_of=as_of))
    return offers


def refresh_aws(base: list[Offer], region: str = "us-east-1", session=None) -> list[Offer]:
    types = sorted({o.instance_type for o in base if o.cloud == "aws" and o.region == region})
    try:
        return aws_spot_offers(base, region, aws_on_demand(types, region, session), session)
    except ImportError:
        raise UsageError("refreshing AWS prices needs boto3: pip install boto3") from None
    except Exception as error:  # botocore's errors: credentials, throttling, network
        if isinstance(error, UsageError):
            raise
        raise CloudError(f"AWS price refresh failed: {type(error).__name__}: {one_line(error)}; check credentials "
                         "(the Pricing API needs pricing:GetProducts, EC2 needs ec2:DescribeSpotPriceHistory)") from None


# ---- GCP ----------------------------------------------------------------------------------------

def _unit_price(sku) -> float:
    rate = sku.pricing_info[0].pricing_expression.tiered_rates[-1].unit_price
    return rate.units + rate.nanos / 1e9


def gcp_prices(skus, region: str) -> dict[tuple[str, bool], float]:
    """Cloud Billing Catalog SKUs -> {(what, spot): USD/h} for GPUs ("gpu:T4") and machine families'
    per-vCPU and per-GiB prices ("n1:core", "n1:ram") in `region`."""
    prices: dict[tuple[str, bool], float] = {}
    for sku in skus:
        if region not in sku.service_regions or "Commitment" in sku.description:
            continue
        spot = sku.category.usage_type == "Preemptible" or "Preemptible" in sku.description
        if sku.category.usage_type not in ("OnDemand", "Preemptible"):
            continue
        for gpu, name in GCP_GPU_SKUS.items():
            if re.search(rf"\b{re.escape(name)} GPU\b", sku.description) and "Reserved" not in sku.description:
                prices[(f"gpu:{gpu}", spot)] = _unit_price(sku)
        for family, name in GCP_FAMILY_SKUS.items():
            for part, word in (("core", "Core"), ("ram", "Ram")):
                if f"{name} {word} " in sku.description and "Custom" not in sku.description:
                    prices[(f"{family}:{part}", spot)] = _unit_price(sku)
    return prices


def gcp_offers(base: list[Offer], skus, region: str = "us-central1", as_of: Optional[str] = None) -> list[Offer]:
    """The catalog's GCP offers in `region`, repriced: machine (vCPUs × core + GiB × RAM) + accelerator."""
    prices = gcp_prices(skus, region)
    as_of = as_of or _today()
    offers, missing = [], defaultdict(list)
    for o in base:
        if o.cloud != "gcp" or o.region != region:
            continue
        family = o.instance_type.split("-")[0]

        def total(spot: bool) -> Optional[float]:
            parts = [(f"{family}:core", o.vcpus), (f"{family}:ram", o.memory_gib), (f"gpu:{o.gpu}", o.gpu_count)]
            lacking = [name for name, _ in parts if (name, spot) not in prices]
            if lacking:
                missing[o.instance_type].extend(lacking)
                return None
            return sum(prices[(name, spot)] * amount for name, amount in parts)

        on_demand = total(False)
        if on_demand is None:
            continue
        offers.append(Offer(cloud="gcp", region=region, zone=o.zone, instance_type=o.instance_type, gpu=o.gpu,
                            gpu_count=o.gpu_count, vcpus=o.vcpus, memory_gib=o.memory_gib, on_demand=round(on_demand, 6),
                            spot=_spot_or_none(total(True), on_demand), accelerator_type=o.accelerator_type,
                            source="GCP Cloud Billing Catalog list_skus: vCPUs x core + GiB x RAM + accelerator",
                            as_of=as_of))
    if not offers:
        raise CloudError(f"the Cloud Billing Catalog gave no prices for the catalog's GCP offers in {region} "
                         f"(missing SKUs: {sorted({m for ms in missing.values() for m in ms})})")
    return offers


def refresh_gcp(base: list[Offer], region: str = "us-central1", client=None) -> list[Offer]:
    try:
        if client is None:
            from google.cloud import billing_v1

            client = billing_v1.CloudCatalogClient()
        return gcp_offers(base, client.list_skus(parent=GCP_COMPUTE_SERVICE), region)
    except ImportError:
        raise UsageError("refreshing GCP prices needs google-cloud-billing: pip install google-cloud-billing") from None
    except Exception as error:  # google.api_core's errors: credentials, quota, network
        if isinstance(error, (UsageError, CloudError)):
            raise
        raise CloudError(f"GCP price refresh failed: {type(error).__name__}: {one_line(error)}; check application "
                         "default credentials (gcloud auth application-default login)") from None

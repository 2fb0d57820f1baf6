"""Turning a job file into a launched job: checks that cost nothing first, then the bundle in the bucket.

Order matters for money: everything that can be refused (a bad job file, a bucket that does not suit
the provider, a missing data set, a budget the estimate already exceeds) is refused before any
instance exists.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from nascloud.errors import UsageError
from nascloud.job import JobSpec
from nascloud.state import State

BUCKET_SCHEMES = {"local": ("file://", "s3://", "gs://"), "aws": ("s3://",), "gcp": ("gs://",)}


def check_bucket_suits(spec: JobSpec) -> None:
    cloud, bucket = spec.compute.cloud, spec.checkpoint.bucket
    allowed = BUCKET_SCHEMES[cloud]
    if not bucket.startswith(allowed):
        raise UsageError(
            f"checkpoint.bucket {bucket!r} cannot be reached from a {cloud} instance; "
            f"use a {' or '.join(allowed)} bucket (e.g. --bucket {allowed[0]}my-bucket/nascloud)")


def choose_offer(spec: JobSpec, price_per_hour: Optional[float]) -> dict:
    """The offer to run on: what the job pins, or the estimate's cheapest that fits."""
    compute = spec.compute
    if compute.cloud == "local":
        price = price_per_hour if price_per_hour is not None else (compute.price_per_hour or 0.0)
        return {"cloud": "local", "region": "local", "zone": None, "instance_type": "local",
                "gpu": None, "gpu_count": 0, "spot": compute.spot, "price_per_hour": price,
                "on_demand_price_per_hour": price, "extras_per_hour": 0.0, "on_demand_extras_per_hour": 0.0,
                "source": "local provider (price given by the user)"}
    from nascloud.pricing import cheapest_offer, load_catalog

    offer = cheapest_offer(cloud=compute.cloud, gpu=compute.gpu, region=compute.region, zone=compute.zone,
                           instance_type=compute.instance_type, spot=compute.spot)
    record = offer.launch_record()
    # Boot disk and public IPv4 are billed while the instance runs, whatever its price: the ledger adds them.
    record["on_demand_extras_per_hour"] = load_catalog().billing_for(compute.cloud, False).instance_extras_per_hour()
    override = price_per_hour if price_per_hour is not None else compute.price_per_hour
    if not compute.zone:  # the zones to fail over to when one has no capacity: cheapest first
        chosen = offer.offer
        same = [o for o in load_catalog().select(cloud=chosen.cloud, region=chosen.region, gpu=chosen.gpu,
                                                 instance_type=chosen.instance_type)
                if o.gpu_count == chosen.gpu_count]
        record["zones"] = zone_choices(same, offer.spot)
    if override is not None:
        record["price_per_hour"] = record["on_demand_price_per_hour"] = override
        record["source"] = "price given by the user"
        for zone in record.get("zones", ()):
            zone["price_per_hour"] = zone["on_demand_price_per_hour"] = override
    return record


def zone_choices(offers: list, spot: bool) -> list[dict]:
    """The same instance type in each zone of its region, with that zone's prices (AWS's by zone ID)."""
    sold = sorted((o for o in offers if o.price(spot) is not None), key=lambda o: (o.price(spot), o.zone))
    return [{"zone": None if o.cloud == "aws" else o.zone, "zone_id": o.zone if o.cloud == "aws" else None,
             "price_per_hour": o.price(spot), "on_demand_price_per_hour": o.on_demand} for o in sold]


def new_job_id(spec: JobSpec) -> str:
    return f"{spec.name}-{secrets.token_hex(3)}"


def build_wheel() -> Path:
    """This exact nascloud version as a wheel, for a cloud instance (a dev version is not on PyPI)."""
    root = Path(__file__).resolve().parent.parent
    out = Path(tempfile.mkdtemp(prefix="nascloud-wheel-"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(root)],
                          capture_output=True, text=True)
    wheels = sorted(out.glob("nascloud-*.whl"))
    if done.returncode != 0 or not wheels:
        raise UsageError(f"cannot build nascloud's wheel from {root} for the instance: "
                         f"{(done.stderr or done.stdout).strip().splitlines()[-1:] or ['no wheel']}")
    return wheels[0]


def create_job(state: State, spec: JobSpec, offer: dict, estimate: Optional[dict], interval_minutes: float) -> str:
    """Upload the bundle (job, data set once by content, wheel for clouds) and record the job."""
    from nascloud.agent.data import pack_dataset
    from nascloud.budget import request_charges
    from nascloud.checkpoints import job_url as job_prefix_url, open_store, parse_url
    from nascloud.pricing import load_catalog

    job_id = new_job_id(spec)
    job_url = job_prefix_url(spec.checkpoint.bucket, job_id)
    store = open_store(job_url)
    with tempfile.TemporaryDirectory(prefix="nascloud-data-") as scratch:
        packed = pack_dataset(spec.search, Path(scratch))
        data_name = f"data/{packed.name}"
        if not store.exists(data_name):
            store.put_file(data_name, packed)
    bundle = {"job_id": job_id, "spec": spec.model_dump(mode="json"), "data": data_name, "offer": offer,
              "price_per_hour": offer["price_per_hour"], "interval_minutes": interval_minutes,
              "bucket_rates": load_catalog().bucket_rates(parse_url(job_url).scheme),
              "created_at": time.time(), "wheel": None}
    if offer["cloud"] != "local":
        wheel = build_wheel()
        bundle["wheel"] = f"bundle/{wheel.name}"
        store.put_file(bundle["wheel"], wheel)
    store.put_json("bundle/job.json", bundle)
    state.add_job(job_id, spec.name, job_url, bundle, spec.budget.usd, spec.budget.max_hours, estimate,
                  bundle["created_at"])
    state.add_event(job_id, "created", f"job {job_id} created; state in {job_url}", bundle["created_at"])
    requests = asdict(store.requests)  # the bundle's uploads open the job's ledger
    state.set_charge(job_id, "requests:launch", request_charges(requests, bundle["bucket_rates"]), requests,
                     bundle["created_at"])
    return job_id

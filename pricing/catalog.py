"""The price catalog: CSV files read once, lazily, validated row by row (README "Cost model and sources").

A catalog folder holds offer files (one offer per row, any name ending .csv) and three tables that may
be left out to use the packaged ones: gpus.csv (speed relative to the T4, with a source per figure),
interruptions.csv (default interruption rates per offer kind, with sources) and billing.csv (billing
minimums, disks, IPv4, storage and egress per cloud). `NASCLOUD_CATALOG` or `--catalog` names a folder.
"""

from __future__ import annotations

import csv
import datetime
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

from nascloud.cost import Billing, Offer, Option
from nascloud.errors import UsageError

PACKAGED = Path(__file__).resolve().parent / "data"
TABLES = ("gpus.csv", "interruptions.csv", "billing.csv", "terms.csv")
OFFER_COLUMNS = ("cloud", "region", "zone", "instance_type", "accelerator_type", "gpu", "gpu_count", "vcpus",
                 "memory_gib", "on_demand_usd_per_hour", "spot_usd_per_hour", "source", "as_of")
# No single GPU rents for this much an hour: such a figure is a catalog placeholder (some GCP TPU rows
# carry 700.0), never a price to plan with.
PLACEHOLDER_USD_PER_GPU_HOUR = 100.0
LAUNCHABLE = ("local", "aws", "gcp")  # the providers `launch` runs on; the other catalogs are for estimates
# The date of a row's price data (its source's commit date); where that date could not be found the row says
# so rather than carrying the day it was copied.
UNKNOWN_DATE = "unknown"


@dataclass(frozen=True)
class GpuSpeed:
    gpu: str
    speed: float
    basis: str  # reference | seed | measured | estimated
    source: str


@dataclass(frozen=True)
class InterruptionRate:
    kind: str  # on-demand | aws-spot | gcp-spot | gcp-preemptible | <cloud>-spot
    per_hour: float
    low: float
    high: float
    max_run_hours: Optional[float]
    source: str

    @property
    def cv(self) -> float:
        """The published range read as mean ± 2 sd: the Monte Carlo's spread of the rate itself."""
        return (self.high - self.low) / 4 / self.per_hour if self.per_hour > 0 else 0.0


@dataclass(frozen=True)
class Catalog:
    folder: str
    offers: tuple[Offer, ...]
    gpus: dict[str, GpuSpeed]
    rates: dict[str, InterruptionRate]
    billing: dict[str, dict[str, float]]  # cloud -> item -> USD
    billing_sources: dict[tuple[str, str], str]
    terms: dict[tuple[str, str], tuple[float, str]]  # (scope, term) -> (seconds, source): the model's defaults

    # ---- names ------------------------------------------------------------------------------
    def clouds(self) -> list[str]:
        return sorted({o.cloud for o in self.offers})

    def check_names(self, gpu: Optional[str] = None, cloud: Optional[str] = None,
                    region: Optional[str] = None) -> tuple[Optional[str], Optional[str]]:
        """The catalog's spelling of a GPU and cloud, or a UsageError listing the known names."""
        if cloud is not None and cloud != "any":
            if cloud not in self.clouds():
                raise UsageError(f"unknown cloud {cloud!r}; known: {', '.join(self.clouds())} or any")
        else:
            cloud = None
        if gpu is not None:
            known = sorted({o.gpu for o in self.offers if cloud in (None, o.cloud)})
            match = [g for g in known if g.lower() == gpu.lower()]
            if not match:
                where = f" on {cloud}" if cloud else ""
                raise UsageError(f"unknown GPU {gpu!r}{where}; known: {', '.join(known)}")
            gpu = match[0]
        if region is not None:
            known = sorted({o.region for o in self.offers if cloud in (None, o.cloud) and gpu in (None, o.gpu)})
            if region not in known:
                raise UsageError(f"unknown region {region!r} for {gpu or 'any GPU'} on {cloud or 'any cloud'}; "
                                 f"known: {', '.join(known)}")
        return gpu, cloud

    def select(self, gpu: Optional[str] = None, cloud: Optional[str] = None, region: Optional[str] = None,
               zone: Optional[str] = None, instance_type: Optional[str] = None) -> list[Offer]:
        gpu, cloud = self.check_names(gpu, cloud, region)
        offers = [o for o in self.offers if cloud in (None, o.cloud) and gpu in (None, o.gpu)
                  and region in (None, o.region) and instance_type in (None, o.instance_type)
                  and zone in (None, o.zone)]
        if not offers:
            asked = ", ".join(f"{k}={v}" for k, v in
                              dict(gpu=gpu, cloud=cloud, region=region, zone=zone, instance_type=instance_type).items() if v)
            hint = " (AWS zones are zone IDs such as use1-az1)" if zone and cloud == "aws" else ""
            raise UsageError(f"no offer in the catalog matches {asked}{hint}; see `nascloud prices`")
        return offers

    # ---- what the cost model needs --------------------------------------------------------------
    def term(self, scope: str, name: str) -> tuple[float, str]:
        """A default term of the model (value, source: seconds, or a ratio for the spreads job_cv and
        unseen_size_cv) for a provider, a bucket scheme or any job; the clouds share the `cloud` rows unless
        one has its own."""
        for key in [(scope, name)] + ([("cloud", name)] if scope not in ("local", "any") else []):
            if key in self.terms:
                return self.terms[key]
        raise UsageError(f"no default {name!r} for {scope!r} in terms.csv; add a row (scope,term,value,source)")

    def speed(self, gpu: str) -> GpuSpeed:
        found = self.gpus.get(gpu)
        if found is None:
            raise UsageError(f"no training speed for GPU {gpu!r} in gpus.csv; add a row (gpu,speed_vs_t4,basis,source)")
        return found

    def rate_kind(self, offer: Offer, spot: bool, preemptible: bool = False) -> InterruptionRate:
        kind = "on-demand" if not spot else f"{offer.cloud}-{'preemptible' if preemptible else 'spot'}"
        found = self.rates.get(kind)
        if found is None:
            raise UsageError(f"no default interruption rate for {kind!r} in interruptions.csv; add a row or give "
                             "--interruptions-per-hour")
        return found

    def bucket_rates(self, scheme: str) -> dict:
        """A bucket's charges (USD), recorded in the job's bundle at launch so its ledger is never re-priced."""
        cloud = {"s3": "aws", "gs": "gcp"}.get(scheme)
        items = ("storage_gb_month", "put_per_1000", "get_per_1000")
        if cloud is None:
            return {**dict.fromkeys(items, 0.0), "source": "a local folder: no bucket charges"}
        rates = {item: self.billing.get(cloud, {}).get(item, 0.0) for item in items}
        return {**rates, "source": "; ".join(self.billing_sources[(cloud, item)] for item in items
                                             if (cloud, item) in self.billing_sources)}

    def option(self, offer: Offer, spot: bool, price_per_hour: Optional[float] = None,
               interruptions_per_hour: Optional[float] = None, preemptible: bool = False) -> Optional[Option]:
        """The offer priced one way, or None where it is not sold that way (no spot price). A price given
        is one GPU's: a row with N GPUs costs N times it (a search uses one of them)."""
        price = offer.price(spot)
        if price is None:
            return None
        rate = self.rate_kind(offer, spot, preemptible)
        given_rate = interruptions_per_hour is not None and spot
        speed = self.speed(offer.gpu)
        notes = []
        if offer.cloud not in LAUNCHABLE:
            notes.append(f"estimate only: launch runs on {', '.join(LAUNCHABLE)}")
        if offer.gpu_count > 1:
            notes.append(f"a search uses 1 of its {offer.gpu_count} GPUs")
        return Option(
            offer=offer, spot=spot,
            price_per_hour=price if price_per_hour is None else price_per_hour * offer.gpu_count,
            price_source=(f"price given by the user (per GPU{f', × {offer.gpu_count}' if offer.gpu_count > 1 else ''})"
                          if price_per_hour is not None else offer.source),
            speed=speed.speed, speed_basis=speed.basis, speed_source=speed.source,
            interruptions_per_hour=interruptions_per_hour if given_rate else rate.per_hour,
            rate_cv=0.0 if given_rate else rate.cv,
            rate_source="given by the user" if given_rate else rate.source,
            max_run_hours=rate.max_run_hours,
            billing=self.billing_for(offer.cloud, spot), note="; ".join(notes), launchable=offer.cloud in LAUNCHABLE,
        )

    def billing_for(self, cloud: str, spot: bool = False) -> Billing:
        items = self.billing.get(cloud)
        if items is None or "billing_minimum_seconds" not in items:
            raise UsageError(f"no billing minimum for {cloud!r} in billing.csv; add a row "
                             f"({cloud},billing_minimum_seconds,SECONDS,seconds,SOURCE)")
        ipv4 = items.get("public_ipv4_hour_spot" if spot else "public_ipv4_hour", items.get("public_ipv4_hour", 0.0))
        return Billing(minimum_hours=items["billing_minimum_seconds"] / 3600,
                       boot_disk_gb_month=items.get("boot_disk_gb_month", 0.0), public_ipv4_hour=ipv4,
                       storage_gb_month=items.get("storage_gb_month", 0.0), put_per_1000=items.get("put_per_1000", 0.0),
                       egress_gb=items.get("egress_gb", 0.0))


# ---- loading ----------------------------------------------------------------------------------

def _number(value: str, column: str, where: str, required: bool = True) -> Optional[float]:
    value = (value or "").strip()
    if not value:
        if required:
            raise UsageError(f"{where}: {column} is empty; fill it in or remove the row")
        return None
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"{where}: {column} {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise UsageError(f"{where}: {column} {value!r} must be a finite number >= 0")
    return number


def _rows(path: Path, columns: tuple[str, ...]):
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise UsageError(f"{path}: missing column(s) {', '.join(missing)}; the header must have "
                                 f"{','.join(columns)}")
            for line, row in enumerate(reader, start=2):
                if None in row or any(row.get(c) is None for c in columns):
                    raise UsageError(f"{path} line {line}: wrong number of fields")
                yield f"{path} line {line}", row
    except OSError as error:
        raise UsageError(f"cannot read catalog file {path}: {error.strerror}") from None
    except csv.Error as error:
        raise UsageError(f"{path}: not a valid CSV ({error})") from None


def parse_offer(row: dict, where: str) -> Offer:
    """One validated offer. Rejects, never silently uses: empty or non-numeric prices, placeholder
    prices, and spot prices that are not below on-demand."""
    for column in ("cloud", "region", "instance_type", "gpu", "source", "as_of"):
        if not row[column].strip():
            raise UsageError(f"{where}: {column} is empty")
    count = _number(row["gpu_count"], "gpu_count", where)
    if count < 1 or count != int(count):
        raise UsageError(f"{where}: gpu_count {row['gpu_count']!r} must be a whole number >= 1")
    on_demand = _number(row["on_demand_usd_per_hour"], "on_demand_usd_per_hour", where)
    spot = _number(row["spot_usd_per_hour"], "spot_usd_per_hour", where, required=False)
    for column, price in (("on_demand_usd_per_hour", on_demand), ("spot_usd_per_hour", spot)):
        if price is not None and (price == 0 or price / count >= PLACEHOLDER_USD_PER_GPU_HOUR):
            raise UsageError(f"{where}: {column} {price:g} looks like a placeholder, not a price; fix or remove the row")
    as_of = row["as_of"].strip()
    if as_of != UNKNOWN_DATE:
        try:
            datetime.date.fromisoformat(as_of)
        except ValueError:
            raise UsageError(f"{where}: as_of {as_of!r} must be the price data's date (YYYY-MM-DD) or "
                             f"{UNKNOWN_DATE!r}") from None
    if spot is not None and spot >= on_demand:
        raise UsageError(f"{where}: spot price {spot:g} is not below on-demand {on_demand:g}; fix the row "
                         "or leave spot_usd_per_hour empty")
    return Offer(cloud=row["cloud"].strip().lower(), region=row["region"].strip(), zone=row["zone"].strip(),
                 instance_type=row["instance_type"].strip(), gpu=row["gpu"].strip(), gpu_count=int(count),
                 vcpus=_number(row["vcpus"], "vcpus", where, required=False) or 0.0,
                 memory_gib=_number(row["memory_gib"], "memory_gib", where, required=False) or 0.0,
                 on_demand=on_demand, spot=spot, source=row["source"].strip(), as_of=as_of,
                 accelerator_type=row["accelerator_type"].strip())


def _table(folder: Path, name: str) -> Path:
    own = folder / name
    return own if own.exists() else PACKAGED / name


def catalog_folder(folder: Optional[str | Path] = None) -> Path:
    chosen = folder or os.environ.get("NASCLOUD_CATALOG") or PACKAGED
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise UsageError(f"catalog folder {path} does not exist; point --catalog or NASCLOUD_CATALOG at a folder "
                         "of offer CSVs")
    return path


@lru_cache(maxsize=4)
def _load(folder: Path) -> Catalog:
    offer_files = sorted(p for p in folder.glob("*.csv") if p.name not in TABLES)
    if not offer_files:
        raise UsageError(f"catalog folder {folder} has no offer CSV files")
    offers = tuple(parse_offer(row, where) for path in offer_files for where, row in _rows(path, OFFER_COLUMNS))
    gpus = {}
    for where, row in _rows(_table(folder, "gpus.csv"), ("gpu", "speed_vs_t4", "basis", "source")):
        speed = _number(row["speed_vs_t4"], "speed_vs_t4", where)
        if speed <= 0:
            raise UsageError(f"{where}: speed_vs_t4 must be positive")
        gpus[row["gpu"].strip()] = GpuSpeed(row["gpu"].strip(), speed, row["basis"].strip(), row["source"].strip())
    unrated = sorted({o.gpu for o in offers} - set(gpus))
    if unrated:  # never a quiet 1.0: an offer is priced only with its GPU's speed and where it comes from
        raise UsageError(f"catalog {folder}: no training speed for GPU {', '.join(unrated)} in gpus.csv; add a row "
                         "(gpu,speed_vs_t4,basis,source) or remove the offers")
    rates = {}
    for where, row in _rows(_table(folder, "interruptions.csv"),
                            ("kind", "per_hour", "low", "high", "max_run_hours", "source")):
        rates[row["kind"].strip()] = InterruptionRate(
            kind=row["kind"].strip(), per_hour=_number(row["per_hour"], "per_hour", where),
            low=_number(row["low"], "low", where), high=_number(row["high"], "high", where),
            max_run_hours=_number(row["max_run_hours"], "max_run_hours", where, required=False),
            source=row["source"].strip())
    billing: dict[str, dict[str, float]] = {}
    sources = {}
    for where, row in _rows(_table(folder, "billing.csv"), ("cloud", "item", "usd", "unit", "source")):
        cloud, item = row["cloud"].strip(), row["item"].strip()
        billing.setdefault(cloud, {})[item] = _number(row["usd"], "usd", where)
        sources[(cloud, item)] = row["source"].strip()
    terms = {}
    for where, row in _rows(_table(folder, "terms.csv"), ("scope", "term", "value", "source")):
        terms[(row["scope"].strip(), row["term"].strip())] = (_number(row["value"], "value", where),
                                                             row["source"].strip())
    return Catalog(folder=str(folder), offers=offers, gpus=gpus, rates=rates, billing=billing,
                   billing_sources=sources, terms=terms)


def load_catalog(folder: Optional[str | Path] = None) -> Catalog:
    """The catalog in `folder`, else NASCLOUD_CATALOG, else the packaged one; read once per folder."""
    return _load(catalog_folder(folder).resolve())

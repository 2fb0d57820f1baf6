"""The bundle: what a job is, written once by `launch` to `<job prefix>/bundle/job.json`, read by every
instance and observer. It is the contract between the roles (launcher, group, instance, observer), so it
is one typed model with a schema version, parsed once where it is read."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from nascloud.errors import UsageError
from nascloud.job import JobSpec

SCHEMA_VERSION = 1
SEARCH_GROUP = "search"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ZonePrice(_Record):
    """One zone the offer may run in, with that zone's prices (AWS: by zone ID, as the catalog prices it)."""

    zone: Optional[str] = None
    zone_id: Optional[str] = None
    price_per_hour: float
    on_demand_price_per_hour: float

    @property
    def key(self) -> Optional[str]:
        return self.zone_id or self.zone


class OfferRecord(_Record):
    """The offer a job runs on: the catalog row (or the local provider) priced at launch."""

    cloud: str
    region: Optional[str] = None
    zone: Optional[str] = None  # pinned by the job; None: any of `zones`
    zone_id: Optional[str] = None
    instance_type: str
    accelerator_type: Optional[str] = None
    gpu: Optional[str] = None
    gpu_count: int = 0
    spot: bool = True
    price_per_hour: float  # the cheapest zone's price, as the estimate used it
    on_demand_price_per_hour: float
    extras_per_hour: float = 0.0  # boot disk and public IPv4, billed while an instance runs
    on_demand_extras_per_hour: float = 0.0
    zones: tuple[ZonePrice, ...] = ()  # the price table: every zone the group may place an instance in
    source: str = ""
    as_of: str = ""

    def price_for(self, zone: Optional[str], spot: bool) -> float:
        """The ledger's price for an instance the group placed in `zone`: that zone's catalog price (the
        offer's own when the zone is not in the table) plus what is billed beside it."""
        row = next((z for z in self.zones if zone and zone in (z.zone, z.zone_id)), None)
        if spot:
            return (row.price_per_hour if row else self.price_per_hour) + self.extras_per_hour
        return (row.on_demand_price_per_hour if row else self.on_demand_price_per_hour) + self.on_demand_extras_per_hour


    def highest_price(self) -> float:
        """The most an instance of the group can bill an hour, in whichever zone it lands (its market)."""
        return max([self.price_for(z.key, self.spot) for z in self.zones] or [self.price_for(None, self.spot)])


class GroupRecord(_Record):
    name: str
    size: int = 1


class Bundle(_Record):
    schema_version: int = SCHEMA_VERSION
    job_id: str
    job_url: str  # the job's prefix in the bucket
    created_at: float
    spec: JobSpec
    offer: OfferRecord
    groups: tuple[GroupRecord, ...] = (GroupRecord(name=SEARCH_GROUP),)
    data: str  # data/<sha256>.json under the bucket, beside its jobs: the data set's manifest (nascloud.datasets)
    wheel: Optional[str] = None  # bundle/nascloud-*.whl, for a cloud instance
    interval_minutes: float  # the checkpoint interval the agent uses
    bucket_rates: dict = {}  # storage and request rates of the bucket (billing.csv), for the ledger
    billing_minimum_seconds: float  # the offer's cloud's billing minimum (billing.csv), for the ledger
    estimate: Optional[dict] = None  # the estimate made before launch, for estimate vs actual
    local_root: Optional[str] = None  # local provider: where its groups and hosts live (absolute)
    # compute.ssh_cidr jobs: the public half of the launching machine's client key, for the instances to
    # authorize (the private half never leaves that machine; `nascloud ssh` uses it there)
    ssh_public_key: Optional[str] = None

    @property
    def name(self) -> str:
        return self.spec.name

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


def parse_bundle(data: Optional[dict], where: str) -> Bundle:
    if data is None:
        raise UsageError(f"{where} has no bundle/job.json: not a job `nascloud launch` made (give the job's "
                         "prefix, e.g. file:///path/bucket/JOB-ID)")
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise UsageError(f"{where}/bundle/job.json has schema version {version!r}; this nascloud reads version "
                         f"{SCHEMA_VERSION} (install the nascloud version that launched it)")
    try:
        return Bundle.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"{where}/bundle/job.json is damaged: {path}: {first['msg']}") from None

"""The provisioner protocol: one small interface, one module per cloud (aws, gcp, local).

A job runs in named groups (one, "search", for now). A group is the cloud's own engine that keeps its
size in live instances and replaces a lost one: an Auto Scaling group on AWS, a managed instance group
on GCP, a small detached supervisor on `local`. nascloud never replaces instances itself. Every new
instance runs the same bootstrap (scripts/bootstrap.sh), which starts the instance's governor
(`nascloud instance`): the instance records itself in the bucket's ledger and governs its own budget,
stops and power-off. So the methods split by who calls them:

- the launcher and observers (any machine): preflight, create_groups, groups, revive, resize, delete,
  preempt, list_owned;
- the instance itself (its own identity): whoami, resize (to 0 at the end), use_on_demand, power_off.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional, Protocol


class State(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    PREEMPTED = "preempted"  # taken away by the cloud (spot/preemptible reclaim)
    TERMINATED = "terminated"  # gone by our hand, the group's, or a power-off from inside
    FAILED = "failed"


LIVE = (State.PENDING, State.RUNNING)


@dataclass(frozen=True)
class Instance:
    """One machine of a group, as the provider reports it (its own times, not when someone looked)."""

    instance_id: str
    job_id: str
    group: str
    cloud: str
    region: Optional[str]
    zone: Optional[str]
    instance_type: str
    spot: bool
    state: State
    launched_at: Optional[float]  # unix seconds as the provider reports it
    ended_at: Optional[float] = None  # when the provider ended it; None while it lives or is not known


@dataclass(frozen=True)
class Group:
    job_id: str
    name: str  # "search"
    size: int  # the target size the engine keeps
    instances: tuple[Instance, ...] = ()  # the live ones, and the ended ones the provider still lists
    reason: Optional[str] = None  # why it was resized to 0 by an instance, if it said (e.g. bucket not writable)

    @property
    def live(self) -> list[Instance]:
        return [i for i in self.instances if i.state in LIVE]


@dataclass(frozen=True)
class GroupSpec:
    """What create_groups needs to know, taken from the bundle (nascloud.bundle.Bundle.group_specs)."""

    job_id: str
    name: str
    size: int
    bootstrap_env: dict  # the NASCLOUD_* values written at the top of the bootstrap script
    offer: dict  # the bundle's offer record (cloud, region, zones, instance_type, gpu, spot, prices)
    spec: object  # the JobSpec (compute section: image, ssh_cidr, provisioning...)
    tags: dict = field(default_factory=dict)  # nascloud-job, nascloud-owner, nascloud-job-url
    # The backstop: when the group's own engine sets it to 0, whatever its instances can still do (the
    # budget or deadline run out at the group's price; nascloud.budget.backstop_at). None: no budget.
    stop_at: Optional[float] = None


class Provisioner(Protocol):
    cloud: str

    def preflight(self, groups: list[GroupSpec]) -> None:
        """Before anything is created: the instance type, region and zone exist (UsageError), the account's
        GPU quota allows the groups' sizes and the bucket is reachable (CloudError naming what to do)."""

    def create_groups(self, groups: list[GroupSpec]) -> None:
        """Create each group (and what it needs: template, identity, firewall) at its size. Idempotent by
        name: a group that exists is left as it is."""

    def groups(self, job_id: str) -> list[Group]:
        """The job's groups with their instances, in one call per region; [] when none exists."""

    def revive(self, job_id: str) -> list[str]:
        """Where the engine is a process of ours (local), start it again if it died while its group is above 0,
        so a lost instance is still replaced; the names of the groups revived. A cloud runs its own: []."""

    def resize(self, job_id: str, group: str, size: int, reason: Optional[str] = None) -> None:
        """Set the group's target size; 0 ends every instance of it. A missing group is success."""

    def delete(self, job_id: str) -> None:
        """Delete the job's groups and what they needed (templates, roles, keys, firewall rules), once their
        instances are gone. Quiet about what is already gone."""

    def preempt(self, instance: Instance) -> None:
        """Fire drill: take a spot instance away the way the cloud would (AWS FIS, GCE
        simulateMaintenanceEvent, local: kill its processes); the group then replaces it."""

    def list_owned(self) -> list[Group]:
        """Every group nascloud created with this provider's credentials (for gc), with its job's bucket URL
        in reach: `job_url(group)`."""

    def job_url(self, group: Group) -> Optional[str]:
        """The bucket URL of the job a group belongs to (a tag or label on the group), for gc."""

    def spot_prices(self, region: str, instance_type: str, zone: Optional[str], start: float,
                    end: float) -> Optional[list[tuple[float, float]]]:
        """The spot price in force over [start, end] as (from time, USD/h) steps, oldest first: what the cloud
        billed a spot instance, to check the ledger (which bills its launch price) against. None where the
        cloud keeps no such record or its prices do not move within an instance's life."""

    # the instance side -----------------------------------------------------------------------
    def whoami(self, job_id: str, group: str) -> Instance:
        """On the instance: itself, from the provider's metadata (id, type, zone, spot, launch time)."""

    def use_on_demand(self, job_id: str, group: str) -> None:
        """On the instance: the group's later instances on-demand (compute.on_demand_after_preemptions),
        where the identity may do only that to its own groups; the running ones stay. Idempotent."""

    def power_off(self) -> None:
        """On the instance: end this machine now, so its billing stops (the group must be at 0 first, or
        it starts a replacement)."""

"""The provisioner protocol: one small interface, one module per cloud (aws, gcp, local)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional, Protocol


class State(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    PREEMPTED = "preempted"  # taken away by the cloud (spot/preemptible reclaim)
    TERMINATED = "terminated"  # gone by our hand or a shutdown from inside
    FAILED = "failed"


@dataclass(frozen=True)
class Instance:
    instance_id: str
    job_id: str
    cloud: str
    region: str
    zone: Optional[str]
    instance_type: str
    spot: bool
    launched_at: float  # unix seconds as the provider reports it
    # Provider specifics. Every provider sets "python" (the interpreter to run nascloud with there) and
    # "bootstrap_dir" (where the bootstrap writes `ready`, or `failed` with the reason, and bootstrap.log);
    # local also "workdir" (every command runs there) and "price_per_hour"; clouds "public_ip".
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    user: str
    key_path: str  # the job's private key (0600)
    host_key: Optional[str]  # "ssh-ed25519 AAAA..." pinned; None only where no SSH is used (local direct)


class Offer(Protocol):
    """What launch needs of an offer. A dict with these keys (bundle/job.json's "offer", the catalog's
    launch record, with an optional gpu_count) works too; missing values come from the job's compute."""

    cloud: str
    region: Optional[str]
    zone: Optional[str]
    instance_type: str
    gpu: Optional[str]
    spot: bool


class Provisioner(Protocol):
    cloud: str

    def preflight(self, offer: Offer, spec) -> None:
        """Before any launch: the instance type, region and zone exist (UsageError), the account's GPU
        quota allows one more instance and the bucket is reachable (CloudError naming what to do)."""

    def launch(self, job_id: str, offer: Offer, spec) -> Instance:
        """Find the job's instance by tag; create it only if missing (idempotent)."""

    def status(self, instances: list[Instance]) -> dict[str, State]:
        """States of many instances in one call per region; an unknown id reads TERMINATED."""

    def preempt(self, instance: Instance) -> None:
        """Fire drill: take a spot instance away the way the cloud would, with the cloud's own tool (AWS FIS
        send-spot-instance-interruptions, GCE simulateMaintenanceEvent); status then reads PREEMPTED.
        An on-demand instance is never preempted: UsageError."""

    def terminate(self, instances: list[Instance]) -> None:
        """A missing instance is success."""

    def list_owned(self, job_id: Optional[str] = None) -> list[Instance]:
        """Instances tagged by nascloud (for one job, or all) that the provider still has, live or
        stopped (not those deleted or terminated for good), for reconciliation and gc."""

    def ssh_target(self, instance: Instance) -> Optional[SshTarget]:
        """How to reach the instance; None when the instance is run directly on this machine."""

    def release(self, job_id: str) -> None:
        """Delete what the job created besides instances (security group, key pair, role, firewall
        rule). Quiet about what is already gone."""

"""Provisioners: one module per cloud (aws, gcp, local) behind the protocol in base.py. Importing this
package stays cheap: each cloud's SDK is imported only by its own module."""

from __future__ import annotations

from typing import Mapping, Optional

from nascloud.errors import UsageError
from nascloud.provisioners.base import Group, GroupSpec, Instance, Provisioner, State

__all__ = ["Group", "GroupSpec", "Instance", "Provisioner", "State", "get_provisioner", "instance_provisioner",
           "launch_request", "provisioner_for"]


def get_provisioner(cloud: str, **options) -> Provisioner:
    """The provisioner for cloud ("local", "aws", "gcp"); options go to its constructor."""
    if cloud == "local":
        from nascloud.provisioners.local import LocalProvisioner

        return LocalProvisioner(**options)
    if cloud == "aws":
        from nascloud.provisioners.aws import AwsProvisioner

        return AwsProvisioner(**options)
    if cloud == "gcp":
        from nascloud.provisioners.gcp import GcpProvisioner

        return GcpProvisioner(**options)
    raise UsageError(f"unknown cloud {cloud!r}; use local, aws or gcp")


def provisioner_for(bundle) -> Provisioner:
    """The provisioner that holds a job's groups, from its bundle (any machine)."""
    if bundle.offer.cloud == "local":
        return get_provisioner("local", root=bundle.local_root)
    return get_provisioner(bundle.offer.cloud, region=bundle.offer.region)


def instance_provisioner(env: Mapping[str, str]) -> Provisioner:
    """On an instance: its provider, from the values its bootstrap was given (no bucket needed)."""
    cloud = env["NASCLOUD_CLOUD"]
    if cloud == "local":
        return get_provisioner("local", root=env["NASCLOUD_LOCAL_ROOT"])
    return get_provisioner(cloud, region=env.get("NASCLOUD_REGION") or None)


def launch_request(spec, offer: dict, job_id: Optional[str] = None) -> dict:
    """For `nascloud launch --dry-run`: the requests spec.compute.cloud would receive for offer, with no
    credentials and no network. The job id is made at launch, so a placeholder by default."""
    from importlib import import_module

    if spec.compute.cloud not in ("local", "aws", "gcp"):
        raise UsageError(f"unknown cloud {spec.compute.cloud!r}; use local, aws or gcp")
    module = import_module(f"nascloud.provisioners.{spec.compute.cloud}")
    return module.launch_request(job_id or f"{spec.name}-xxxxxx", offer, spec)

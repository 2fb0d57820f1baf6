"""Provisioners: one module per cloud (aws, gcp, local) behind the protocol in base.py. Importing this
package stays cheap: each cloud's SDK is imported only by its own module."""

from __future__ import annotations

from typing import Optional

from nascloud.errors import UsageError
from nascloud.provisioners.base import Instance, Provisioner, SshTarget, State

__all__ = ["Instance", "Provisioner", "SshTarget", "State", "get_provisioner", "launch_request"]


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


def launch_request(spec, offer, job_id: Optional[str] = None) -> dict:
    """For `nascloud launch --dry-run`: the requests spec.compute.cloud would receive for offer (a dict or
    record), with no credentials and no network. The job id is made at launch, so a placeholder by default."""
    from importlib import import_module

    if spec.compute.cloud not in ("local", "aws", "gcp"):
        raise UsageError(f"unknown cloud {spec.compute.cloud!r}; use local, aws or gcp")
    module = import_module(f"nascloud.provisioners.{spec.compute.cloud}")
    return module.launch_request(job_id or f"{spec.name}-xxxxxx", offer, spec)

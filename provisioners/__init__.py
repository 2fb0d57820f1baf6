"""Provisioners: one module per cloud (aws, gcp, local) behind the protocol in base.py. Importing this
package stays cheap: each cloud's SDK is imported only by its own module."""

from __future__ import annotations

from nascloud.errors import UsageError
from nascloud.provisioners.base import Instance, Provisioner, SshTarget, State

__all__ = ["Instance", "Provisioner", "SshTarget", "State", "get_provisioner"]


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

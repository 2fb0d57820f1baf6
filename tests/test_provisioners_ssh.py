"""Opt-in SSH on a cloud instance (nascloud/agent/ssh.py): the address it publishes is its public IPv4 from
its own metadata service (AWS IMDSv2, GCE's with Metadata-Flavor), played here by the hypervisor's
metadata server; an instance without one says so. A failure to open SSH is said and never ends the job."""

from __future__ import annotations

import pytest

from nascloud.agent.ssh import open_ssh, public_address
from nascloud.errors import CloudError
from nascloud.jobbucket import JobBucket
from tests.fixtures.hypervisor import MetadataServer
from tests.fixtures.search import make_bundle

AWS = MetadataServer.aws("i-0abc", "g4dn.xlarge", "us-east-1a", "use1-az2", True)
GCE = MetadataServer.gce("1234", "nascloud-vm", "us-central1-a", "n1-standard-4", True, "nascloud-test")
ADDRESS = {"aws": "public-ipv4", "gcp": "instance/network-interfaces/0/access-configs/0/external-ip"}
ENV = {"aws": "NASCLOUD_AWS_METADATA_URL", "gcp": "NASCLOUD_GCE_METADATA_URL"}


@pytest.mark.parametrize("server", [AWS, GCE], ids=["aws", "gcp"])
def test_the_published_address_is_the_instance_s_public_ipv4_from_its_metadata(server, monkeypatch):
    server.values[ADDRESS[server.cloud]] = "198.51.100.7"
    with server:
        monkeypatch.setenv(ENV[server.cloud], server.url)
        assert public_address(server.cloud) == "198.51.100.7"
        del server.values[ADDRESS[server.cloud]]  # the metadata has none: no public address
        with pytest.raises(CloudError, match=f"this {server.cloud} instance has no public IPv4 address"):
            public_address(server.cloud)


def test_a_failure_to_open_ssh_is_an_event_and_the_boot_goes_on(tmp_path):
    job = JobBucket.open(make_bundle(tmp_path, "ssh-fail-a1b2c3"))  # a bundle without the client key
    open_ssh(job, "i-0abc", "aws", tmp_path / "root")
    [event] = [e for e in job.events() if e.kind == "ssh"]
    assert "SSH to i-0abc could not be opened" in event.message and "ssh_public_key" in event.message
    assert list(job.store.objects.list("hosts/")) == []

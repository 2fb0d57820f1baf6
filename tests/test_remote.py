"""nascloud.remote against real sshd hosts from the local provider: the pinned host key is enforced."""

from __future__ import annotations

import dataclasses

import pytest

from nascloud import remote
from nascloud.errors import CloudError
from nascloud.job import parse_job
from nascloud.provisioners.local import LocalProvisioner
from tests.fixtures.servers import free_port, requires_sshd

SPEC = parse_job({"name": "remote-test"})


@pytest.fixture
def two_hosts(tmp_path):
    local = LocalProvisioner(home=tmp_path / "home", use_ssh=True)
    hosts = [local.launch("remote-test-aaaaaa", None, SPEC), local.launch("remote-test-bbbbbb", None, SPEC)]
    yield local, hosts
    local.terminate(hosts)


@requires_sshd
def test_a_host_with_another_key_is_refused(two_hosts):
    local, (ours, decoy) = two_hosts
    pinned = local.ssh_target(ours)
    # The decoy answers on its own port with its own host key; our pin must not accept it.
    at_decoy = dataclasses.replace(pinned, port=local.ssh_target(decoy).port)
    with pytest.raises(remote.HostKeyError, match=f"other than the one pinned for instance {ours.instance_id}"):
        remote.connect(at_decoy, ours, attempts=2, delay=0.05)
    with pytest.raises(remote.HostKeyError, match="no host key is pinned"):
        remote.connect(dataclasses.replace(pinned, host_key=None), ours)


@requires_sshd
def test_a_key_the_host_does_not_know_is_refused(two_hosts):
    local, (ours, other) = two_hosts
    other_key = local.ssh_target(other).key_path
    with pytest.raises(CloudError, match="refused the job's SSH key"):
        remote.connect(dataclasses.replace(local.ssh_target(ours), key_path=other_key), ours, attempts=1)


def test_nothing_listening_is_unreachable_after_bounded_retries(tmp_path):
    local = LocalProvisioner(home=tmp_path / "home", use_ssh=False)
    instance = local.launch("remote-test-cccccc", None, SPEC)
    pinned = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDeWY494FqoDPcVQiWN1itfle4RloVbuYR+e4Ai1bH0K"
    target = remote.SshTarget("127.0.0.1", free_port(), "nobody", str(tmp_path / "none"), pinned)
    with pytest.raises(remote.UnreachableError, match=r"after 3 tries"):
        remote.connect(target, instance, attempts=3, delay=0.01)

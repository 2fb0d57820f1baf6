"""nascloud.remote (`nascloud ssh`'s library) against a real sshd, the one a local host opens
(nascloud/agent/ssh.py): the published host key is pinned, only the job's client key is admitted, and
find_target refuses, each in one line, what it cannot reach. The whole path through a launched job is
tests/test_ssh_optin.py's."""

from __future__ import annotations

import dataclasses
import io
import os

import pytest

from nascloud import remote
from nascloud.errors import CloudError, UsageError
from nascloud.jobbucket import JobBucket
from nascloud.provisioners.common import ensure_key, job_keys
from nascloud.provisioners.local import INSTANCE_ENV, LocalProvisioner, kill_host
from tests.fixtures.search import make_bundle
from tests.fixtures.servers import free_port, requires_sshd, sshd_safe_tmp  # noqa: F401  (sshd_safe_tmp: fixture)
from tests.test_e2e_local import wait_for
from tests.test_provisioners_local import run_group

JOB = "remote-test-a1b2c3"
HOST = "local-remote01"


@pytest.fixture
def tmp_path(sshd_safe_tmp):
    """Where the host's sshd (StrictModes yes) trusts the authorized_keys in it: not under /tmp."""
    return sshd_safe_tmp


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("NASCLOUD_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def target(tmp_path, home, monkeypatch):
    """A host's sshd as the governor opens it, admitting the job's key; the Target `nascloud ssh` builds."""
    from nascloud.agent.ssh import local_sshd

    monkeypatch.setenv(INSTANCE_ENV, HOST)  # what the host's processes carry (this process's /proc keeps none)
    client = job_keys(None, JOB)
    record = local_sshd(tmp_path / "host", HOST, client.public_line)
    yield remote.Target(HOST, record, client.private_path)
    kill_host(HOST, tmp_path / "host", spare=os.getpid())


@requires_sshd
def test_a_command_runs_as_the_host_with_its_output_and_exit_code(target):
    out = io.BytesIO()
    assert remote.run(target, "echo out; echo err >&2; echo $NASCLOUD_LOCAL_INSTANCE; exit 3", out) == 3
    # stderr comes on its own stream: in the output, but not necessarily in order with stdout
    assert sorted(out.getvalue().splitlines()) == sorted([b"out", b"err", HOST.encode()])


@requires_sshd
def test_a_host_key_other_than_the_published_one_is_refused(target, tmp_path):
    decoy = ensure_key(tmp_path / "decoy" / "key", "decoy").public_line
    wrong = dataclasses.replace(target, host=dataclasses.replace(target.host, host_key=decoy))
    with pytest.raises(remote.HostKeyError, match=f"other than the one instance {HOST} published"):
        remote.run(wrong, "echo hi", io.BytesIO())
    with pytest.raises(remote.HostKeyError):  # checked before OpenSSH would be started
        remote.exec_shell(wrong)


@requires_sshd
def test_a_client_key_the_host_does_not_admit_is_refused(target, tmp_path):
    other = ensure_key(tmp_path / "other" / "id_ed25519", "other").private_path
    with pytest.raises(CloudError, match="refused the job's SSH key"):
        remote.run(dataclasses.replace(target, key_path=other), "echo hi", io.BytesIO())


def test_nothing_listening_is_unreachable(tmp_path):
    record = remote.HostRecord("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDeWY494FqoDPcVQiWN1itfle4RloVbuYR+e4Ai1bH0K",
                               "127.0.0.1", free_port(), "nobody")
    with pytest.raises(CloudError, match="cannot reach instance i-1 at 127.0.0.1"):
        remote.connect(remote.Target("i-1", record, tmp_path / "none"))


def test_find_target_says_what_is_missing_and_finds_the_live_instance_s_record(tmp_path, home):
    job = JobBucket.open(make_bundle(tmp_path, JOB))
    with pytest.raises(UsageError, match="launched without SSH.*compute.ssh_cidr"):
        remote.find_target(job)
    bundle = job.bundle()
    public = ensure_key(tmp_path / "elsewhere" / "id_ed25519", "launcher").public_line
    opted = bundle.model_copy(update={"spec": bundle.spec.with_overrides(compute={"ssh_cidr": "127.0.0.1/32"}),
                                      "ssh_public_key": public})
    job.store.put_json("bundle/job.json", opted.to_json())
    job = JobBucket.open(job.url)
    with pytest.raises(UsageError, match="SSH key is not on this machine"):
        remote.find_target(job)
    job_keys(None, JOB)
    with pytest.raises(CloudError, match="no running instance"):
        remote.find_target(job)

    from nascloud import launching

    provider = LocalProvisioner(root=home / "local")
    provider.create_groups([dataclasses.replace(s, size=0) for s in launching.group_specs(job.bundle())])
    try:
        run_group(provider, JOB, "sleep 600")
        [live] = wait_for(lambda: provider.groups(JOB)[0].live, 30, "the host")
        with pytest.raises(CloudError, match=f"instance {live.instance_id} has not published its SSH host key"):
            remote.find_target(job)
        record = remote.HostRecord("ssh-ed25519 AAAA", "127.0.0.1", 2222, "me")
        record.publish(job, live.instance_id)
        found = remote.find_target(job)
        assert (found.instance_id, found.host, found.key_path) == (live.instance_id, record,
                                                                   home / "keys" / JOB / "id_ed25519")
    finally:
        provider.resize(JOB, "search", 0)
        wait_for(lambda: not provider.groups(JOB)[0].live, 30, "the host to end")

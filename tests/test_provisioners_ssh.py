"""Opt-in SSH on a cloud instance (nascloud/agent/ssh.py): the address it publishes is its public IPv4 from
its own metadata service (AWS IMDSv2, GCE's with Metadata-Flavor), played here by the hypervisor's
metadata server; an instance without one says so. A failure to open SSH is said and never ends the job.
The login may sudo only with compute.ssh_sudo, and either sshd checks the key files' modes (StrictModes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from nascloud.agent.ssh import local_sshd, open_ssh, public_address
from nascloud.errors import CloudError
from nascloud.jobbucket import JobBucket
from nascloud.provisioners.local import INSTANCE_ENV, SSHD_PID
from tests.fixtures.hypervisor import MetadataServer, hosts_supported
from tests.fixtures.search import make_bundle
from tests.fixtures.servers import SSHD, requires_sshd, sshd_safe_tmp  # noqa: F401  (sshd_safe_tmp: fixture)

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


def mode(path) -> int:
    return path.stat().st_mode & 0o777


# The instance's boot step for real (useradd, the key, sudoers) on throwaway copies of /etc and /home, in a mount
# namespace as the hypervisor's hosts; /var/log and /var/mail too, where useradd may write.
IN_A_COPY_OF_THE_SYSTEM = """set -e
mount --make-rprivate /
cp -a /etc "$1/etc"
mkdir -p "$1/etc/sudoers.d" "$1/home" "$1/log" "$1/mail"  # sudoers.d: the images have sudo
mount --bind "$1/etc" /etc; mount --bind "$1/home" /home; mount --bind "$1/log" /var/log
mount --bind "$1/mail" /var/mail
exec "$2" -c 'import sys; from pathlib import Path; from nascloud.agent.ssh import open_ssh
from nascloud.jobbucket import JobBucket
open_ssh(JobBucket.open(sys.argv[1]), "i-0abc", "aws", Path(sys.argv[2]))' "$3" "$1/root"
"""


@pytest.mark.skipif(hosts_supported() is not None, reason=hosts_supported() or "")
@pytest.mark.parametrize("sudo", [False, True], ids=["default", "ssh_sudo"])
def test_the_cloud_login_may_sudo_only_with_compute_ssh_sudo(tmp_path, sudo):
    url = make_bundle(tmp_path, "ssh-sudo-a1b2c3", cloud="aws")
    job = JobBucket.open(url)
    record = job.store.get_json("bundle/job.json")
    record["ssh_public_key"] = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBnascloudTestClientKeyOnly"
    record["spec"]["compute"].update({"ssh_cidr": "127.0.0.1/32", **({"ssh_sudo": True} if sudo else {})})
    job.store.put_json("bundle/job.json", record)
    server = MetadataServer.aws("i-0abc", "g4dn.xlarge", "us-east-1a", "use1-az2", True)
    server.values[ADDRESS["aws"]] = "198.51.100.7"
    with server:
        done = subprocess.run(["unshare", "--mount", "bash", "-c", IN_A_COPY_OF_THE_SYSTEM, "boot", str(tmp_path),
                               sys.executable, url], env={**os.environ, ENV["aws"]: server.url},
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [e.message for e in job.events() if e.kind == "ssh"] == []
    assert job.store.get_json("hosts/i-0abc.json")["user"] == "nascloud"

    # The key's files as sshd's StrictModes wants them, owned by the login.
    home = tmp_path / "home" / "nascloud"
    uid = next(int(line.split(":")[2]) for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
               if line.startswith("nascloud:"))
    assert (home / ".ssh" / "authorized_keys").read_text() == record["ssh_public_key"] + "\n"
    assert (mode(home) & 0o022, mode(home / ".ssh"), mode(home / ".ssh" / "authorized_keys")) == (0, 0o700, 0o600)
    assert {(home / ".ssh").stat().st_uid, (home / ".ssh" / "authorized_keys").stat().st_uid} == {uid}
    # sudo only when the job file asks.
    sudoers = tmp_path / "etc" / "sudoers.d" / "90-nascloud"
    if sudo:
        assert (sudoers.read_text(), mode(sudoers)) == ("nascloud ALL=(ALL) NOPASSWD:ALL\n", 0o440)
    else:
        assert not sudoers.exists()


@requires_sshd
def test_the_local_sshd_checks_the_key_file_s_modes_and_still_admits_the_job_s_key(sshd_safe_tmp, monkeypatch):
    """StrictModes yes, though the umask left the host's folders writable by others (sshd would refuse the key
    below them; Debian's sshd lets a user's private group write, so 000 here, not the usual 002)."""
    home = sshd_safe_tmp / "home"
    monkeypatch.setenv("NASCLOUD_HOME", str(home))
    monkeypatch.setenv(INSTANCE_ENV, "local-ssh-test")
    umask = os.umask(0o000)
    try:
        root = home / "local" / "groups" / "job-a1b2c3" / "search" / "hosts" / "local-ssh-test"
        root.mkdir(parents=True)  # as the local provider makes a host's folder
        client = sshd_safe_tmp / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client)], check=True)
        host = local_sshd(root, "local-ssh-test", " ".join((sshd_safe_tmp / "id_ed25519.pub").read_text().split()[:2]))
    finally:
        os.umask(umask)
    try:
        config = root / "ssh" / "sshd_config"
        effective = subprocess.run([SSHD, "-T", "-f", str(config)], capture_output=True, text=True, check=True)
        assert "strictmodes yes" in effective.stdout.splitlines()
        assert (mode(root / "ssh"), mode(root / "ssh" / "authorized_keys")) == (0o700, 0o600)
        assert mode(root / "ssh" / "ssh_host_ed25519_key") == 0o600
        (sshd_safe_tmp / "known_hosts").write_text(f"[127.0.0.1]:{host.port} {host.host_key}\n")
        said = subprocess.run(["ssh", "-i", str(client), "-p", str(host.port), "-o", "BatchMode=yes",
                               "-o", f"UserKnownHostsFile={sshd_safe_tmp / 'known_hosts'}",
                               "-o", "StrictHostKeyChecking=yes", f"{host.user}@127.0.0.1", "echo hi"],
                              capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert (said.returncode, said.stdout) == (0, "hi\n"), said.stderr
    finally:
        os.kill(int((root / SSHD_PID).read_text()), signal.SIGTERM)

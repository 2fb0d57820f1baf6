"""Opt-in SSH for debugging on the local provider, through the real bootstrap and governor: without
compute.ssh_cidr a host has no sshd and `nascloud ssh` refuses; with it the host runs a private sshd with a
host key it made itself, publishes only the public half to the bucket, and `nascloud ssh` reaches it with
that key pinned (a decoy key in the bucket is refused). Nothing private is in the bucket or the group's
script, and the host's power-off (at `nascloud stop`) ends its sshd."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.servers import requires_sshd, sshd_safe_tmp  # noqa: F401  (sshd_safe_tmp: fixture)
from tests.test_e2e_local import Cli, bucket, cli, live_host, running_hosts, wait_for  # noqa: F401  (cli: fixture)

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def tmp_path(sshd_safe_tmp):
    """The cli's home and bucket where the host's sshd (StrictModes yes) trusts the authorized_keys in it."""
    return sshd_safe_tmp


def sshd_of(host: Path) -> list[int]:
    """sshd processes serving this host (their title keeps the config's path; their environment is gone)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"sshd" in cmdline and str(host).encode() in cmdline:
            found.append(int(entry.name))
    return found


def host_folder(cli: Cli, url: str, instance_id: str) -> Path:
    return cli.home / "local" / "groups" / url.rsplit("/", 1)[1] / "search" / "hosts" / instance_id


def booted(url: str):
    """The agent's first heartbeat: the governor's boot (and its SSH step) is behind it."""
    return bucket(url).heartbeat().get("instance_id")


def one_error(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


@requires_sshd
def test_ssh_is_opt_in_pinned_to_the_host_key_the_instance_published(cli, tmp_path):
    job = cli.write_job(trials=1, epochs=1)

    # Without compute.ssh_cidr: no sshd on the host, nothing published, and `nascloud ssh` says how to opt in.
    plain = cli.launch(job)
    instance_id = wait_for(lambda: booted(plain), 180, "the plain job's agent to start")
    assert sshd_of(host_folder(cli, plain, instance_id)) == []
    assert list(bucket(plain).store.objects.list("hosts/")) == []
    refused = cli.run("ssh", plain, "--command", "echo hi")
    assert refused.returncode == 2 and "compute.ssh_cidr" in one_error(refused) and "hi" not in refused.stdout
    assert cli.run("stop", plain, timeout=180).returncode == 0

    # With it: the host publishes its own host key and `nascloud ssh` reaches it, that key pinned.
    url = cli.launch(job, "--set", "compute.ssh_cidr=127.0.0.1/32")
    job_id = url.rsplit("/", 1)[1]
    instance_id = wait_for(lambda: live_host(cli, url), 60, "a host").instance_id
    published = wait_for(lambda: bucket(url).store.get_json(f"hosts/{instance_id}.json"), 120, "the host key")
    host = host_folder(cli, url, instance_id)
    own_key = (host / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    assert published["host_key"].split() == own_key and published["address"] == "127.0.0.1"
    assert len(sshd_of(host)) == 1

    said = cli.run("ssh", url, "--command", "echo hi; echo $NASCLOUD_LOCAL_INSTANCE")
    assert (said.returncode, said.stdout) == (0, f"hi\n{instance_id}\n"), said.stderr  # a session of the host
    failed = cli.run("ssh", url, "--command", "echo bye; exit 7")
    assert (failed.returncode, failed.stdout, failed.stderr.strip()) == (7, "bye\n", "exit code 7")
    # Without --command: OpenSSH itself, with only the published key trusted (StrictHostKeyChecking=yes).
    shell = subprocess.run([sys.executable, "-m", "nascloud", "ssh", url], input="echo from-a-shell\n", text=True,
                           capture_output=True, cwd=cli.workdir, env=cli.env, timeout=60)
    assert shell.returncode == 0 and "from-a-shell" in shell.stdout, shell.stderr

    # Only public halves leave their machines: the client key's in the bundle, the host key's in hosts/.
    client_public = (cli.home / "keys" / job_id / "id_ed25519.pub").read_text().strip()
    assert bucket(url).bundle().ssh_public_key == client_public
    in_bucket = [p for p in (cli.workdir / "bucket" / job_id).rglob("*") if p.is_file()]
    assert [p for p in in_bucket if b"PRIVATE KEY" in p.read_bytes()] == []
    script = json.loads((host.parent.parent / "group.json").read_text())["script"]
    assert "PRIVATE KEY" not in script and "NASCLOUD_SSH=1" in script

    # A host key in the bucket that is not the one the host presents: refused with one line.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "decoy")], check=True)
    decoy = " ".join((tmp_path / "decoy.pub").read_text().split()[:2])
    bucket(url).store.put_json(f"hosts/{instance_id}.json", {**published, "host_key": decoy})
    for args in (("--command", "echo hi"), ()):
        refused = cli.run("ssh", url, *args)
        assert refused.returncode == 1 and "hi" not in refused.stdout
        assert "other than the one instance" in one_error(refused)

    # The host's power-off (the job stopped) ends its sshd with the rest of the host.
    stopped = cli.run("stop", url, timeout=180)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_for(lambda: not running_hosts(cli.home) and not sshd_of(host), 30, "the hosts and their sshd to end")

"""`nascloud ssh JOB`: the launching machine's end of the opt-in SSH for debugging (compute.ssh_cidr).

Nothing in the job needs SSH; an instance without ssh_cidr has no inbound port. With it, the instance
makes or uses a host key of its own and publishes the public half at hosts/<instance-id>.json in the job's
bucket (nascloud/agent/ssh.py). This end pins exactly that key (paramiko's RejectPolicy; OpenSSH with a
known_hosts of that key alone and StrictHostKeyChecking=yes) and authenticates with the job's client key,
whose private half never left the machine that launched the job.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn, Optional

from nascloud.errors import CloudError, NascloudError, UsageError
from nascloud.hints import command


class HostKeyError(NascloudError):
    """The host answered with a key other than the one its instance published: possibly not our instance."""


@dataclass(frozen=True)
class HostRecord:
    """What an instance publishes for SSH: its host key (public half only) and where it listens."""

    host_key: str  # "ssh-ed25519 AAAA..."
    address: str
    port: int
    user: str

    @staticmethod
    def object_name(instance_id: str) -> str:
        return f"hosts/{instance_id}.json"

    def publish(self, bucket, instance_id: str) -> None:
        bucket.store.put_json(self.object_name(instance_id), asdict(self))

    @classmethod
    def read(cls, bucket, instance_id: str) -> Optional["HostRecord"]:
        record = bucket.store.get_json(cls.object_name(instance_id))
        return cls(**record) if record else None

    @property
    def known_hosts_name(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


@dataclass(frozen=True)
class Target:
    instance_id: str
    host: HostRecord
    key_path: Path  # the job's client key on this machine


def find_target(bucket) -> Target:
    """The job's running instance, as it published itself for SSH, and this machine's key for it."""
    from nascloud.observer import groups
    from nascloud.provisioners.common import keys_dir

    bundle = bucket.bundle()
    job_id = bundle.job_id
    if not bundle.spec.compute.ssh_cidr or not bundle.ssh_public_key:
        raise UsageError(f"job {job_id} was launched without SSH (its instances have no inbound port); to debug "
                         "over SSH, set compute.ssh_cidr (e.g. 203.0.113.7/32) in the job file and launch it")
    key_path = keys_dir(None, job_id) / "id_ed25519"
    if not key_path.exists():
        raise UsageError(f"job {job_id}'s SSH key is not on this machine ({key_path}); run {command('ssh', job_id)} on "
                         "the machine that launched the job")
    found = groups(bucket)
    if found is None:
        raise CloudError(f"cannot list job {job_id}'s instances from its provider now; try again")
    live = sorted((i for g in found for i in g.live), key=lambda i: i.launched_at or 0)
    if not live:
        raise CloudError(f"job {job_id} has no running instance to reach (see {command('status', job_id)})")
    instance_id = live[-1].instance_id
    host = HostRecord.read(bucket, instance_id)
    if host is None:
        raise CloudError(f"instance {instance_id} has not published its SSH host key yet "
                         f"({HostRecord.object_name(instance_id)}, written at boot); try again in a minute")
    return Target(instance_id, host, key_path)


def connect(target: Target):
    """A paramiko client on the instance that accepts only the published host key."""
    import paramiko

    host = target.host
    key_type, data = host.host_key.split()[:2]
    client = paramiko.SSHClient()
    client.get_host_keys().add(host.known_hosts_name, key_type,
                               paramiko.PKey.from_type_string(key_type, base64.b64decode(data)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    where = f"{host.address}:{host.port}"
    try:
        client.connect(host.address, port=host.port, username=host.user, key_filename=str(target.key_path),
                       look_for_keys=False, allow_agent=False, timeout=10, banner_timeout=10, auth_timeout=10)
    except paramiko.BadHostKeyException:
        client.close()
        raise HostKeyError(f"{where} presented a host key other than the one instance {target.instance_id} "
                           f"published ({HostRecord.object_name(target.instance_id)}); not connecting: it may "
                           "not be your instance") from None
    except paramiko.AuthenticationException:
        client.close()
        raise CloudError(f"{host.user}@{where} refused the job's SSH key {target.key_path}") from None
    except (paramiko.SSHException, OSError) as error:
        client.close()
        raise CloudError(f"cannot reach instance {target.instance_id} at {where} over SSH ({error}); check that "
                         "it runs and that compute.ssh_cidr admits this machine's address") from None
    return client


def run(target: Target, command: str, out: BinaryIO) -> int:
    """Run command on the instance, its output (stdout and stderr) to out as it comes; its exit code."""
    client = connect(target)
    try:
        channel = client.get_transport().open_session()
        channel.set_combine_stderr(True)
        channel.exec_command(command)
        while chunk := channel.recv(65536):
            out.write(chunk)
            out.flush()
        return channel.recv_exit_status()
    except (socket.error, EOFError) as error:
        raise CloudError(f"the SSH session to instance {target.instance_id} broke: {error}") from None
    finally:
        client.close()


def exec_shell(target: Target) -> NoReturn:
    """Replace this process with OpenSSH's ssh to the instance, trusting only its published host key. The key
    is checked here first, so a wrong one is refused with one line rather than OpenSSH's warning."""
    ssh = shutil.which("ssh")
    if ssh is None:
        raise UsageError("OpenSSH's ssh is not installed on this machine; install it, or run one command with "
                         f"{command('ssh', 'JOB', '--command', 'CMD')}")
    connect(target).close()
    host = target.host
    known_hosts = target.key_path.with_name("known_hosts")
    known_hosts.write_text(f"{host.known_hosts_name} {' '.join(host.host_key.split()[:2])}\n")
    os.execv(ssh, [ssh, "-i", str(target.key_path), "-p", str(host.port), "-o", "IdentitiesOnly=yes",
                   "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                   "-o", "StrictHostKeyChecking=yes", "-o", f"HostKeyAlgorithms={host.host_key.split()[0]}",
                   f"{host.user}@{host.address}"])

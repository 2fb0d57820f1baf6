"""Running commands on an instance: paramiko with the instance's pinned host key, or a local shell in
the instance's directory when the local provider runs without SSH (target None).

Every command runs in the instance's working directory (Instance.extra["workdir"]) when it names one,
otherwise in the SSH user's home.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional, Protocol

from nascloud.errors import CloudError, NascloudError
from nascloud.provisioners.base import Instance, SshTarget

# The local provider marks every process of an instance with this variable so it can kill them all.
INSTANCE_ENV = "NASCLOUD_LOCAL_INSTANCE"


class HostKeyError(NascloudError):
    """The host answered with a key other than the one pinned for it: possibly not our instance."""


class UnreachableError(CloudError):
    """Nothing answered on the instance's SSH address within the retries."""


class Remote(Protocol):
    def run(self, cmd: str, timeout: float = 60.0) -> tuple[int, str]:
        """Exit code and combined stdout+stderr; 124 and what was printed if it ran past timeout."""

    def start_detached(self, cmd: str, log_path: str) -> int:
        """Start cmd so it outlives this connection, output to log_path; returns its pid."""

    def put_file(self, local: Path, remote: str) -> None: ...

    def get_file(self, remote: str, local: Path) -> None: ...

    def close(self) -> None: ...


def _detached_line(cmd: str, log_path: str) -> str:
    # `;` not `&&`: `cd X && setsid ... &` would background the cd too and keep the channel open.
    return (f"setsid nohup bash -c {shlex.quote(cmd)} > {shlex.quote(log_path)} 2>&1 < /dev/null & "
            "echo $!")


class SshRemote:
    def __init__(self, client, workdir: Optional[str]):
        self._client = client
        self._workdir = workdir

    def _in_workdir(self, cmd: str) -> str:
        return f"cd {shlex.quote(self._workdir)} || exit 97; {cmd}" if self._workdir else cmd

    def run(self, cmd: str, timeout: float = 60.0) -> tuple[int, str]:
        channel = self._client.get_transport().open_session()
        channel.set_combine_stderr(True)
        channel.settimeout(1.0)
        channel.exec_command(self._in_workdir(cmd))
        output = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            try:
                chunk = channel.recv(65536)
            except socket.timeout:
                chunk = None
            if chunk:
                output.extend(chunk)
            elif chunk == b"":  # end of output: wait for the exit status without spinning
                if channel.status_event.wait(0.1):
                    break
            if time.monotonic() > deadline:
                channel.close()
                return 124, output.decode(errors="replace")
        return channel.recv_exit_status(), output.decode(errors="replace")

    def start_detached(self, cmd: str, log_path: str) -> int:
        code, output = self.run(_detached_line(cmd, log_path), timeout=30)
        if code != 0 or not output.strip().isdigit():
            raise CloudError(f"could not start `{cmd}` on the instance: {output.strip()[-200:]}")
        return int(output.strip())

    def _sftp(self):
        sftp = self._client.open_sftp()
        if self._workdir:
            sftp.chdir(self._workdir)
        return sftp

    def put_file(self, local: Path, remote: str) -> None:
        with self._sftp() as sftp:
            sftp.put(str(local), remote)

    def get_file(self, remote: str, local: Path) -> None:
        with self._sftp() as sftp:
            sftp.get(remote, str(local))

    def close(self) -> None:
        self._client.close()


class LocalRemote:
    """The local provider without sshd: commands run here, in the instance's directory, marked as the
    instance's processes."""

    def __init__(self, instance: Instance):
        self._dir = Path(instance.extra["workdir"])
        self._env = {**os.environ, INSTANCE_ENV: instance.instance_id}

    def run(self, cmd: str, timeout: float = 60.0) -> tuple[int, str]:
        try:
            done = subprocess.run(["bash", "-c", cmd], cwd=self._dir, env=self._env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            return 124, (expired.output or b"").decode(errors="replace")
        return done.returncode, done.stdout.decode(errors="replace")

    def start_detached(self, cmd: str, log_path: str) -> int:
        with open(self._dir / log_path, "ab") as log:
            process = subprocess.Popen(["bash", "-c", cmd], cwd=self._dir, env=self._env, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return process.pid

    def put_file(self, local: Path, remote: str) -> None:
        (self._dir / remote).write_bytes(Path(local).read_bytes())

    def get_file(self, remote: str, local: Path) -> None:
        Path(local).write_bytes((self._dir / remote).read_bytes())

    def close(self) -> None:
        pass


def _pinned_client(target: SshTarget):
    import base64

    import paramiko

    if not target.host_key:
        raise HostKeyError(f"no host key is pinned for {target.host}:{target.port}; refusing to connect unverified")
    key_type, data = target.host_key.split()[:2]
    client = paramiko.SSHClient()
    name = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    client.get_host_keys().add(name, key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(data)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def connect(target: Optional[SshTarget], instance: Instance, attempts: int = 10, delay: float = 3.0) -> Remote:
    """A Remote on the instance. SSH retries a bounded number of times while the host boots: refused or
    silent ports, and a host key other than the pinned one (a cloud host shows its image's key until the
    bootstrap installs ours; the check happens before authentication, so retrying sends nothing).
    Raises HostKeyError if the last answer was a wrong key, UnreachableError if nothing answered."""
    if target is None:
        return LocalRemote(instance)
    import paramiko

    last: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(delay)
        client = _pinned_client(target)
        try:
            client.connect(target.host, port=target.port, username=target.user, key_filename=target.key_path,
                           look_for_keys=False, allow_agent=False, timeout=10, banner_timeout=10, auth_timeout=10)
            return SshRemote(client, instance.extra.get("workdir"))
        except (paramiko.BadHostKeyException, paramiko.SSHException, OSError) as error:
            client.close()
            last = error
            if isinstance(error, paramiko.AuthenticationException):
                raise CloudError(f"{target.user}@{target.host}:{target.port} refused the job's SSH key "
                                 f"{target.key_path}; the instance was not set up with it") from None
    if isinstance(last, paramiko.BadHostKeyException) or "not found in known_hosts" in str(last):
        raise HostKeyError(f"{target.host}:{target.port} presented a host key other than the one pinned for "
                           f"instance {instance.instance_id}; not connecting (it may not be your instance)")
    raise UnreachableError(f"cannot reach {instance.instance_id} at {target.host}:{target.port} over SSH after "
                           f"{attempts} tries ({last}); check that it is running and that the firewall allows you")

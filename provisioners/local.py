"""The local provider: an "instance" is a fresh directory under the provisioner's home plus the
processes started in it, all of which can be killed at once (preempt) to play a spot reclaim.

Where OpenSSH's sshd exists each instance gets a private sshd on a random 127.0.0.1 port, with its own
host key (pinned) and the job's client key, so the orchestrator reaches it exactly like a cloud host.
Without sshd the processes are started directly (ssh_target is None). Every process of an instance
carries NASCLOUD_LOCAL_INSTANCE=<id> (sshd sets it with SetEnv), which is how preempt finds them all,
even the ones that left the process group with setsid. State lives in one small JSON file per
instance, so a separate process (the CLI) sees the same instances.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from nascloud.errors import CloudError
from nascloud.paths import nascloud_home
from nascloud.provisioners.base import Instance, Offer, SshTarget, State
from nascloud.provisioners.common import (KeyPair, as_offer, bootstrap_script, ensure_key, host_key_line, job_keys,
                                          remove_job_keys)
from nascloud.remote import INSTANCE_ENV


def find_sshd() -> Optional[str]:
    found = shutil.which("sshd") or "/usr/sbin/sshd"
    return found if os.access(found, os.X_OK) else None


def _sshd_gone(record: Optional[dict]) -> bool:
    """A running instance whose sshd died without us: the "host" is gone."""
    return bool(record and record["state"] == "running" and record["port"] and not _alive(record["sshd_pid"]))


def _alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own dead child (else it reads alive)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def instance_pids(instance_id: str) -> list[int]:
    """Live processes carrying the instance's mark (Linux /proc; a zombie's environ reads empty)."""
    mark = f"{INSTANCE_ENV}={instance_id}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def start_sshd(sshd: str, folder: Path, host_key: KeyPair, authorized: str, instance_id: str,
               env: Optional[dict] = None) -> tuple[int, int]:
    """A private sshd on a free 127.0.0.1 port presenting host_key and admitting only the `authorized`
    public key; its sessions carry the instance's mark and `env` (what a cloud host's own identity
    would give it, when a test plays a cloud instance). Returns (pid, port) once it accepts connections."""
    session_env = " ".join(f"{key}={value}" for key, value in {INSTANCE_ENV: instance_id, "SHLVL": "1",
                                                                **(env or {})}.items())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "authorized_keys").write_text(authorized + "\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    for _ in range(3):  # the free port may be taken between probing and binding
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = folder / "sshd_config"
        config.write_text("\n".join([
            f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key.private_path}",
            f"PidFile {folder / 'sshd.pid'}", f"AuthorizedKeysFile {folder / 'authorized_keys'}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp",
            # SHLVL=1 keeps bash from sourcing the user's ~/.bashrc in these non-interactive sessions:
            # a fresh host has none, and a killed session must not leave its locks behind.
            f"SetEnv {session_env}", "LogLevel ERROR", "",
        ]))
        with open(folder / "sshd.log", "ab") as log:
            # The sshd carries the mark too: a preempt's sweep takes it even before its pid is recorded.
            process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       env={**os.environ, INSTANCE_ENV: instance_id})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return process.pid, port
            except OSError:
                time.sleep(0.05)
        process.kill()
        process.wait()
    raise CloudError(f"the local sshd for {instance_id} did not start; see {folder / 'sshd.log'}")


class LocalProvisioner:
    cloud = "local"

    def __init__(self, home: Optional[Path] = None, use_ssh: Optional[bool] = None, price_per_hour: float = 0.0):
        self.home = Path(home) if home else nascloud_home() / "local"
        self.sshd = find_sshd()
        self.use_ssh = bool(self.sshd) if use_ssh is None else use_ssh
        if self.use_ssh and not self.sshd:
            raise CloudError("use_ssh needs OpenSSH's sshd (apt-get install openssh-server), or use it without SSH")
        self.price_per_hour = price_per_hour

    # --- state files -------------------------------------------------------------------------
    def _dir(self, instance_id: str) -> Path:
        return self.home / "instances" / instance_id

    def _read(self, instance_id: str) -> Optional[dict]:
        try:
            return json.loads((self._dir(instance_id) / "state.json").read_text())
        except (OSError, ValueError):
            return None

    def _write(self, instance_id: str, record: dict) -> None:
        path = self._dir(instance_id) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    @contextlib.contextmanager
    def _locked(self, instance_id: str):
        """One writer at a time for the instance's state (launch, preempt and terminate may race)."""
        with open(self._dir(instance_id) / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _records(self) -> list[dict]:
        folder = self.home / "instances"
        found = [self._read(p.name) for p in sorted(folder.iterdir())] if folder.exists() else []
        return [r for r in found if r]

    # --- protocol ------------------------------------------------------------------------------
    def preflight(self, offer: Offer, spec) -> None:
        """Nothing to check: this machine is always there and costs what the user says."""

    def launch(self, job_id: str, offer: Optional[Offer], spec) -> Instance:
        offer = as_offer(offer, spec)
        for existing in self.list_owned(job_id):
            return existing
        instance_id = f"local-{secrets.token_hex(4)}"
        folder = self._dir(instance_id)
        workdir = folder / "work"
        workdir.mkdir(parents=True)
        instance = Instance(
            instance_id=instance_id, job_id=job_id, cloud="local", region="local", zone=None,
            instance_type=offer.instance_type or "local", spot=offer.spot, launched_at=time.time(),
            extra={"python": sys.executable, "workdir": str(workdir), "bootstrap_dir": str(folder),
                   "price_per_hour": self.price_per_hour},
        )
        record = {"instance": instance.__dict__, "state": "running", "sshd_pid": None, "port": None,
                  "host_key": None, "user": getpass.getuser()}
        self._write(instance_id, record)
        # It may be preempted while it boots, like a cloud instance: then launch still returns it, and its
        # status says what happened.
        if self._bootstrap(instance, spec) and self.use_ssh:
            client, _ = job_keys(self.home, job_id)
            try:
                sshd = self._start_sshd(instance_id, client.public_line)
            except CloudError:
                if self._read(instance_id)["state"] == "running":
                    raise
                return instance  # preempted while its sshd started
            with self._locked(instance_id):
                record = {**self._read(instance_id), **sshd}
                self._write(instance_id, record)
                if record["state"] != "running":
                    self._kill(instance_id, record)
        return instance

    def _bootstrap(self, instance: Instance, spec) -> bool:
        """The same bootstrap script the clouds run, on its local branch (GPU check, Python check).
        False if the instance was preempted meanwhile."""
        folder = self._dir(instance.instance_id)
        script = bootstrap_script({"NASCLOUD_CLOUD": "local", "NASCLOUD_ROOT": str(folder),
                                   "NASCLOUD_GPU": spec.compute.gpu or "", "NASCLOUD_PYTHON": sys.executable})
        env = {**os.environ, INSTANCE_ENV: instance.instance_id}
        subprocess.run(["bash", "-c", script], env=env, stdin=subprocess.DEVNULL, timeout=120, check=False)
        with self._locked(instance.instance_id):
            record = self._read(instance.instance_id)
            if record["state"] != "running":
                return False
            if (folder / "ready").exists():
                return True
            self._write(instance.instance_id, {**record, "state": "failed"})
        failed = folder / "failed"
        reason = failed.read_text().strip() if failed.exists() else "see " + str(folder / "bootstrap.log")
        raise CloudError(f"local instance {instance.instance_id} did not bootstrap: {reason}")

    def _start_sshd(self, instance_id: str, authorized: str) -> dict:
        folder = self._dir(instance_id) / "sshd"
        host = ensure_key(folder / "host_ed25519", f"nascloud-host-{instance_id}")
        pid, port = start_sshd(self.sshd, folder, host, authorized, instance_id)
        return {"sshd_pid": pid, "port": port, "host_key": host_key_line(host)}

    def status(self, instances: list[Instance]) -> dict[str, State]:
        states = {}
        for instance in instances:
            record = self._read(instance.instance_id)
            if _sshd_gone(record):
                # A preempt or terminate in progress kills the sshd first: read its verdict under the lock.
                with self._locked(instance.instance_id):
                    record = self._read(instance.instance_id)
            state = record["state"] if record else "terminated"
            states[instance.instance_id] = State("failed" if _sshd_gone(record) else state)
        return states

    def _kill(self, instance_id: str, record: dict) -> None:
        if _alive(record.get("sshd_pid")):
            os.kill(record["sshd_pid"], signal.SIGKILL)
            _alive(record["sshd_pid"])  # reap
        # Until none is left (a zombie's environ reads empty): a process may fork while we sweep, and a
        # SIGKILL takes effect a moment after it is sent.
        deadline = time.monotonic() + 5
        while (pids := instance_pids(instance_id)) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _alive(pid)
            time.sleep(0.01)

    def preempt(self, instance: Instance) -> None:
        """Kill every process of the instance at once and mark it preempted, as a spot reclaim would."""
        if not self._read(instance.instance_id):
            return
        with self._locked(instance.instance_id):
            record = self._read(instance.instance_id)
            self._kill(instance.instance_id, record)
            self._write(instance.instance_id, {**record, "state": "preempted"})

    def terminate(self, instances: list[Instance]) -> None:
        for instance in instances:
            if not self._read(instance.instance_id):
                continue
            with self._locked(instance.instance_id):
                record = self._read(instance.instance_id)
                self._kill(instance.instance_id, record)
                if record["state"] == "running":
                    record["state"] = "terminated"
                self._write(instance.instance_id, record)
            shutil.rmtree(self._dir(instance.instance_id) / "work", ignore_errors=True)

    def list_owned(self, job_id: Optional[str] = None) -> list[Instance]:
        return [Instance(**r["instance"]) for r in self._records()
                if r["state"] == "running" and job_id in (None, r["instance"]["job_id"])]

    def ssh_target(self, instance: Instance) -> Optional[SshTarget]:
        record = self._read(instance.instance_id)
        if not record or not record["port"]:
            return None
        client, _ = job_keys(self.home, instance.job_id)
        return SshTarget("127.0.0.1", record["port"], record["user"], str(client.private_path), record["host_key"])

    def release(self, job_id: str) -> None:
        """Remove the job's key and the directories of its instances that are gone."""
        for record in self._records():
            if record["instance"]["job_id"] == job_id and record["state"] != "running":
                shutil.rmtree(self._dir(record["instance"]["instance_id"]), ignore_errors=True)
        remove_job_keys(self.home, job_id)


def launch_request(job_id: str, offer: Optional[Offer], spec) -> dict:
    """What a local launch does, for `launch --dry-run` (nothing to send anywhere)."""
    return {"cloud": "local", "job_id": job_id, "instance": "a fresh directory under NASCLOUD_HOME/local/instances",
            "ssh": "a private sshd on 127.0.0.1" if find_sshd() else "none: processes started directly",
            "python": sys.executable, "gpu": spec.compute.gpu, "price_per_hour": spec.compute.price_per_hour or 0.0}

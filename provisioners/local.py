"""The local provider: the embedded stand-in for the clouds' engines.

A group is a small detached supervisor process (`python -m nascloud.provisioners.local supervise DIR`)
that keeps its target size in local hosts and obeys resize, as an Auto Scaling group or a managed
instance group would. A host is a folder plus the processes started in it: the real bootstrap script,
which becomes the instance's governor. Every process of a host carries NASCLOUD_LOCAL_INSTANCE=<id>, which
is how a preemption (or the host's own power-off) finds them all, even those that left the process group.

The supervisor knows only its group file and its hosts: no ledger, heartbeat, exit record, budget,
checkpoint or agent (tests/test_imports.py proves it). A host that ends (its bootstrap process exits, or
a preemption kills it) is recorded with the supervisor's own time, like a cloud's console would, and
replaced while the size says so: at once after a preemption, after a growing pause (2 s, 4 s ... a minute)
when hosts end within a minute of their start. It obeys the bootstrap's breaker as a cloud group obeys
the instance's resize: a host that ended leaving `failed` (its boot or governor failed), or a `halt`
file another group's failed boot left, sets the group to 0 with that reason. State is small JSON files
under the provider's root, which the bundle records, so any process on this machine (a fresh NASCLOUD_HOME
included) finds the same groups.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from nascloud.paths import nascloud_home
from nascloud.provisioners.base import LIVE, Group, GroupSpec, Instance, State
from nascloud.provisioners.common import bootstrap_script

INSTANCE_ENV = "NASCLOUD_LOCAL_INSTANCE"  # marks every process of a local host
SSHD_PID = "ssh/sshd.pid"  # in a host's folder: its opt-in sshd (nascloud/agent/ssh.py), which the mark misses
POLL_SECONDS = 0.2
HOST_LOGS = ("bootstrap.log", "work/agent.log")  # in a host's folder: what delete keeps
QUICK_END_SECONDS = 60.0  # a host that ends sooner than this after its start delays the next: the longest pause


def _alive(pid: Optional[int]) -> bool:
    if not pid or pid <= 0:
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
    """Live processes carrying the host's mark (Linux /proc; a zombie's environ reads empty)."""
    mark = f"{INSTANCE_ENV}={instance_id}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_host(instance_id: str, host: Path, spare: Optional[int] = None) -> None:
    """SIGKILL every process of the host (but `spare`), until none is left: a process may fork while we
    sweep, and a SIGKILL takes effect a moment after it is sent."""
    _kill_sshd(host)
    deadline = time.monotonic() + 5
    while (pids := [p for p in instance_pids(instance_id) if p != spare]) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _alive(pid)
        time.sleep(0.01)


def _kill_sshd(host: Path) -> None:
    """The host's opt-in sshd, by the pid it recorded: sshd's process title overwrites its environment,
    mark included, and it clears its sessions' (they get the mark back by its SetEnv)."""
    pid_file = host / SSHD_PID
    try:
        pid = int(pid_file.read_text())
        if b"sshd" in Path(f"/proc/{pid}/cmdline").read_bytes():  # not a pid reused since
            os.kill(pid, signal.SIGKILL)
            _alive(pid)  # reap it if it is our own child
    except (OSError, ValueError):
        pass  # none, or already gone
    pid_file.unlink(missing_ok=True)


def _read(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write(path: Path, record: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(folder: Path):
    """One writer at a time for a group's or a host's file (supervisor, preempt and resize may race)."""
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class LocalProvisioner:
    cloud = "local"

    def __init__(self, root: Optional[Path] = None, region: Optional[str] = None):
        self.root = Path(root) if root else nascloud_home() / "local"

    def _group_dir(self, job_id: str, group: str) -> Path:
        return self.root / "groups" / job_id / group

    # --- the launcher and observers ------------------------------------------------------------
    def preflight(self, groups: list[GroupSpec]) -> None:
        """Nothing to check: this machine is always there and costs what the user says."""

    def create_groups(self, groups: list[GroupSpec]) -> None:
        for spec in groups:
            folder = self._group_dir(spec.job_id, spec.name)
            (folder / "hosts").mkdir(parents=True, exist_ok=True)
            with _locked(folder):
                if not (folder / "group.json").exists():
                    script = bootstrap_script({**spec.bootstrap_env, "NASCLOUD_PYTHON": sys.executable,
                                               "NASCLOUD_LOCAL_ROOT": str(self.root)})
                    _write(folder / "group.json", {
                        "job_id": spec.job_id, "name": spec.name, "size": spec.size, "reason": None,
                        "script": script, "tags": spec.tags, "instance_type": spec.offer.get("instance_type"),
                        "spot": bool(spec.offer.get("spot")), "created_at": time.time()})
            self._ensure_supervisor(folder)

    def _ensure_supervisor(self, folder: Path) -> bool:
        """Start the group's supervisor unless one runs (it holds supervisor.lock while it lives); whether it
        started one. One caller at a time decides (spawn.lock), and holds that until the new supervisor has
        taken its lock: a second caller meanwhile (`resume` asks twice) would otherwise see no supervisor yet
        and start another."""
        with open(folder / "spawn.lock", "a") as spawning:
            fcntl.flock(spawning, fcntl.LOCK_EX)
            if self._supervised(folder):
                return False
            with open(folder / "supervisor.log", "ab") as log:
                started = subprocess.Popen(
                    [sys.executable, "-m", "nascloud.provisioners.local", "supervise", str(folder)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    env={k: v for k, v in os.environ.items() if k != INSTANCE_ENV})
            deadline = time.monotonic() + 30
            while not self._supervised(folder) and started.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            return True

    def groups(self, job_id: str) -> list[Group]:
        folder = self.root / "groups" / job_id
        try:
            found = sorted(p for p in folder.iterdir() if (p / "group.json").exists())
        except FileNotFoundError:  # never created, or deleted by an observer meanwhile
            return []
        return [self._group(p) for p in found]

    def _group(self, folder: Path) -> Group:
        record = _read(folder / "group.json") or {}
        hosts = [self._instance(h) for h in sorted((folder / "hosts").glob("*/host.json"))]
        hosts = sorted((h for h in hosts if h), key=lambda h: h.launched_at or 0)
        return Group(record.get("job_id", folder.parent.name), folder.name, int(record.get("size", 0)),
                     tuple(hosts), record.get("reason"))

    def _instance(self, path: Path) -> Optional[Instance]:
        record = _read(path)
        if not record:
            return None
        state = State(record["state"])
        if state in LIVE and not _alive(record.get("pid")) and not self._supervised(path.parent.parent.parent):
            state = State.TERMINATED  # its supervisor died with it (a reboot): ended, time unknown
        return Instance(record["instance_id"], record["job_id"], record["group"], "local", "local", None,
                        record["instance_type"], record["spot"], state, record["launched_at"], record.get("ended_at"))

    @staticmethod
    def _supervised(folder: Path) -> bool:
        with open(folder / "supervisor.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False

    def revive(self, job_id: str) -> list[str]:
        """A supervisor can be killed, which a cloud's engine cannot: whoever observes the job (status, watch,
        drill, the governor) starts it again, so a preempted host is replaced rather than billed as running."""
        revived = []
        for group in self.groups(job_id):
            if group.size > 0 and self._ensure_supervisor(self._group_dir(job_id, group.name)):
                revived.append(group.name)
        return revived

    def resize(self, job_id: str, group: str, size: int, reason: Optional[str] = None) -> None:
        folder = self._group_dir(job_id, group)
        if not (folder / "group.json").exists():
            return
        with _locked(folder):
            record = _read(folder / "group.json")
            _write(folder / "group.json", {**record, "size": size, "reason": reason if size == 0 else None})
        if size > 0:
            self._ensure_supervisor(folder)

    def delete(self, job_id: str) -> None:
        """The groups' folders, once no host of theirs lives (a group still running is left alone). The hosts'
        logs are kept, as a cloud keeps a gone instance's console output a while: a boot that failed before it
        could reach the bucket left its reason nowhere else."""
        for group in self.groups(job_id):
            folder = self._group_dir(job_id, group.name)
            if group.size == 0 and not group.live and not self._supervised(folder):
                for name in HOST_LOGS:
                    for found in (folder / "hosts").glob(f"*/{name}"):
                        kept = self.logs_dir(job_id) / found.relative_to(folder / "hosts").parts[0]
                        kept.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(found, kept / found.name)
                shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.root / "groups" / job_id).rmdir()

    def logs_dir(self, job_id: str) -> Path:
        """Where the logs of a job's deleted hosts are kept, one folder per host."""
        return self.root / "logs" / job_id

    def preempt(self, instance: Instance) -> None:
        """Kill every process of the host at once and mark it preempted, as a spot reclaim would."""
        host = self._group_dir(instance.job_id, instance.group) / "hosts" / instance.instance_id
        if not (host / "host.json").exists():
            return
        with _locked(host):
            record = _read(host / "host.json")
            kill_host(instance.instance_id, host)
            if State(record["state"]) in LIVE:
                _write(host / "host.json", {**record, "state": "preempted", "ended_at": time.time()})

    def list_owned(self) -> list[Group]:
        folder = self.root / "groups"
        return [g for job in sorted(folder.iterdir()) for g in self.groups(job.name)] if folder.exists() else []

    def job_url(self, group: Group) -> Optional[str]:
        record = _read(self._group_dir(group.job_id, group.name) / "group.json") or {}
        return (record.get("tags") or {}).get("nascloud-job-url")

    # --- the instance side -----------------------------------------------------------------------
    def whoami(self, job_id: str, group: str) -> Instance:
        instance_id = os.environ[INSTANCE_ENV]
        found = self._instance(self._group_dir(job_id, group) / "hosts" / instance_id / "host.json")
        if found is None:
            raise RuntimeError(f"local host {instance_id} has no record under {self._group_dir(job_id, group)}")
        return found

    def spot_prices(self, region: str, instance_type: str, zone: Optional[str], start: float,
                    end: float) -> Optional[list[tuple[float, float]]]:
        """A local host bills the price given at launch: there is nothing to check it against."""
        return None

    def use_on_demand(self, job_id: str, group: str) -> None:
        """Local hosts have no purchase option: nothing to switch."""

    def power_off(self) -> None:
        """This host's processes end, this one last: its supervisor records the end and, at size 0, stops."""
        me = os.getpid()
        kill_host(os.environ[INSTANCE_ENV], Path(os.environ["NASCLOUD_ROOT"]), spare=me)
        os.kill(me, signal.SIGKILL)


class Supervisor:
    """The group's engine: keep `size` hosts running the bootstrap; record each host's end."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.children: dict[str, subprocess.Popen] = {}
        self.quick_ends = 0  # hosts in a row that ended within QUICK_END_SECONDS of their start
        self.not_before = 0.0  # no new host before this time

    def _hosts(self) -> list[tuple[Path, dict]]:
        found = [(p.parent, _read(p)) for p in sorted((self.folder / "hosts").glob("*/host.json"))]
        return [(path, record) for path, record in found if record]

    def _start_host(self, group: dict) -> None:
        instance_id = f"local-{secrets.token_hex(4)}"
        host = self.folder / "hosts" / instance_id
        host.mkdir(parents=True)
        record = {"instance_id": instance_id, "job_id": group["job_id"], "group": group["name"],
                  "instance_type": group.get("instance_type") or "local", "spot": group.get("spot", False),
                  "state": "running", "launched_at": time.time(), "ended_at": None, "pid": None}
        with _locked(host):
            _write(host / "host.json", record)
            env = {**os.environ, INSTANCE_ENV: instance_id, "NASCLOUD_ROOT": str(host)}
            with open(host / "console.log", "ab") as console:
                child = subprocess.Popen(["bash", "-c", group["script"]], cwd=host, env=env, stdin=subprocess.DEVNULL,
                                         stdout=console, stderr=subprocess.STDOUT, start_new_session=True)
            self.children[instance_id] = child
            _write(host / "host.json", {**record, "pid": child.pid})

    def _halt(self, reason: str) -> None:
        """The breaker: the group to 0 with the reason, as the instance's resize does on a cloud."""
        with _locked(self.folder):
            record = _read(self.folder / "group.json") or {}
            _write(self.folder / "group.json", {**record, "size": 0, "reason": reason})
            (self.folder / "halt").unlink(missing_ok=True)

    def _ended(self, host: Path, record: dict) -> None:
        """A host whose bootstrap exited: a failed boot trips the breaker; a short life delays the next."""
        self._end_host(host, "terminated")
        if (host / "failed").exists():
            self._halt(f"instance {record['instance_id']} failed: "
                       f"{(host / 'failed').read_text().strip()}")
        lived = time.time() - record["launched_at"]
        self.quick_ends = self.quick_ends + 1 if lived < QUICK_END_SECONDS else 0
        if self.quick_ends:
            self.not_before = time.time() + min(2.0 ** self.quick_ends, QUICK_END_SECONDS)

    def _end_host(self, host: Path, state: str) -> None:
        with _locked(host):
            record = _read(host / "host.json")
            kill_host(record["instance_id"], host)
            if State(record["state"]) in LIVE:
                _write(host / "host.json", {**record, "state": state, "ended_at": time.time()})
        self.children.pop(record["instance_id"], None)

    def step(self) -> bool:
        """One look at the group; False once it is at size 0 with no host left."""
        if (self.folder / "halt").exists():
            self._halt((self.folder / "halt").read_text().strip())
        live = []
        for host, record in self._hosts():
            if State(record["state"]) not in LIVE:
                continue
            child = self.children.get(record["instance_id"])
            if child is not None and child.poll() is None or child is None and _alive(record.get("pid")):
                live.append(host)
            else:  # the bootstrap (the instance's governor) exited: the machine powered off
                self._ended(host, record)
        group = _read(self.folder / "group.json") or {"size": 0}
        size = int(group["size"])
        for host in live[size:] if size < len(live) else ():
            self._end_host(host, "terminated")
        for _ in range(size - len(live)) if time.time() >= self.not_before else ():
            self._start_host(group)
        return size > 0 or bool(live)

    def run(self) -> None:
        while True:
            with open(self.folder / "supervisor.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                while self.step():
                    time.sleep(POLL_SECONDS)
            # A resize that came while this one was ending saw the lock held and started no supervisor.
            if int((_read(self.folder / "group.json") or {}).get("size", 0)) == 0:
                return


def launch_request(job_id: str, offer: dict, spec) -> dict:
    """What a local launch creates, for `launch --dry-run` (nothing to send anywhere)."""
    return {"cloud": "local", "job_id": job_id,
            "group": {"name": "search", "size": 1, "engine": "a detached supervisor process on this machine",
                      "hosts": "a fresh folder under NASCLOUD_HOME/local/groups running the bootstrap"},
            "inbound_ports": [{"port": "a free 127.0.0.1 port", "from": spec.compute.ssh_cidr}] if spec.compute.ssh_cidr
            else [], "python": sys.executable, "gpu": spec.compute.gpu,
            "price_per_hour": offer.get("price_per_hour", 0.0)}


if __name__ == "__main__":
    if sys.argv[1:2] == ["supervise"] and len(sys.argv) == 3:
        Supervisor(Path(sys.argv[2])).run()
    else:
        sys.exit("usage: python -m nascloud.provisioners.local supervise GROUP_DIR")

"""The watch loop: keep one healthy instance running the agent until the search finishes.

Each `tick()` reconciles what the state database believes with what the provider and the bucket say,
and does at most one step with a side effect. Every step records its intent first, so a killed
orchestrator, started again, picks up where it was: a launch whose result was never recorded is
repeated (launch is idempotent by tag, so an instance the database does not know is adopted, never
doubled).

A preemption confirmed by the provider, or a heartbeat silent past its deadline while the instance is
unreachable, starts a recovery. A passing API or SSH error never does: it is counted and retried.
"""

from __future__ import annotations

import fcntl
import math
import os
import shlex
import signal
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from nascloud.errors import CapacityError, CloudError, NascloudError, UsageError
from nascloud.paths import nascloud_home
from nascloud.state import InstanceRow, JobRow, State

FINAL = ("finished", "stopped", "budget", "deadline", "failed")


@dataclass(frozen=True)
class WatchSettings:
    poll_seconds: float = 10.0
    boot_poll_seconds: float = 2.0  # while no agent runs yet: launching, booting, bootstrapping
    heartbeat_deadline_seconds: float = 600.0  # silent this long (and unreachable): presumed lost
    reach_timeout_seconds: float = 900.0  # from launch until the agent runs; then the instance is replaced
    stop_timeout_seconds: float = 150.0  # for the agent's final snapshot on `stop`
    notice_grace_seconds: float = 180.0  # AWS gives 120 s between the notice and the reclaim
    transient_error_seconds: float = 1800.0  # cloud/SSH errors without a good tick before the loop gives up
    storage_sample_seconds: float = 600.0  # how often the loop measures what the bucket holds (one LIST)
    capacity_retry_seconds: float = 300.0  # a zone that had no capacity is tried again after this

    @classmethod
    def from_env(cls) -> "WatchSettings":
        def number(name: str, default: float) -> float:
            value = os.environ.get(name)
            return float(value) if value else default

        return cls(
            poll_seconds=number("NASCLOUD_POLL_SECONDS", cls.poll_seconds),
            heartbeat_deadline_seconds=number("NASCLOUD_HEARTBEAT_DEADLINE", cls.heartbeat_deadline_seconds),
            reach_timeout_seconds=number("NASCLOUD_REACH_TIMEOUT", cls.reach_timeout_seconds),
            stop_timeout_seconds=number("NASCLOUD_STOP_TIMEOUT", cls.stop_timeout_seconds),
        )


def money(state: State, job: JobRow, progress: Optional[dict], now: float, settings: "WatchSettings",
          fired: frozenset = frozenset()):
    """The budget's view of a job now: spend, burn rate, projection, P(over), alerts due, stop or not."""
    from nascloud.budget import BudgetConfig, Progress, evaluate

    # The shutdown the cap must leave room for: the agent's final snapshot, then the terminate.
    tick_seconds, shutdown_seconds = settings.poll_seconds, settings.stop_timeout_seconds + 10
    spec = job.bundle["spec"]["search"]
    config = BudgetConfig.for_job(job, tick_seconds=tick_seconds, shutdown_seconds=shutdown_seconds)
    return evaluate(state.instances(job.job_id), Progress.of(progress, spec["epochs"], spec["max_trials"]),
                    config, fired, now, extra_usd=bucket_usd(state, job.job_id))


def bucket_usd(state: State, job_id: str) -> float:
    """The bucket's part of the ledger: storage and requests, booked by the watch loop."""
    return sum(charge.usd for charge in state.charges(job_id))


def _zone_key(zone: dict) -> Optional[str]:
    return zone.get("zone") or zone.get("zone_id")


def crash_point(name: str) -> None:
    """Fault injection for the crash-safety tests: NASCLOUD_TEST_CRASH_AT=<name> kills this process
    with SIGKILL right there, the way a laptop dies, between an intent and its effect."""
    if os.environ.get("NASCLOUD_TEST_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


class JobLock:
    """One watch loop per job, whichever command started it (an flock on a file in NASCLOUD_HOME)."""

    def __init__(self, job_id: str):
        locks = nascloud_home() / "locks"
        locks.mkdir(exist_ok=True)
        self.path = locks / f"{job_id}.lock"
        self._fd: Optional[int] = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def holder(self) -> Optional[int]:
        try:
            return int(self.path.read_text() or 0) or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Orchestrator:
    def __init__(self, state: State, job_id: str, provisioner, settings: Optional[WatchSettings] = None,
                 clock: Callable[[], float] = time.time):
        from nascloud.checkpoints import open_store

        self.state = state
        self.job_id = job_id
        self.provisioner = provisioner
        self.settings = settings or WatchSettings.from_env()
        self.clock = clock
        self.store = open_store(self.job.job_url)
        self._failing_since: Optional[float] = None
        self._run = f"{socket.gethostname()}:{os.getpid()}:{clock():.0f}"  # names this loop's request count

    @property
    def job(self) -> JobRow:
        return self.state.job(self.job_id)

    def event(self, kind: str, message: str, **data) -> None:
        self.state.add_event(self.job_id, kind, message, self.clock(), data or None)

    # the loop ---------------------------------------------------------------------------------
    def run(self, on_tick: Callable[[], None] = lambda: None) -> str:
        """Tick until the job reaches a final status; returns it."""
        while True:
            outcome = self.tick()
            on_tick()
            if outcome:
                return outcome
            time.sleep(self.pause_seconds())

    def pause_seconds(self) -> float:
        """The poll interval; shorter while an instance is missing or booting, since every second
        there is paid for and no search runs."""
        current = self._current()
        if current is None or current.agent_started_at is None:
            return min(self.settings.poll_seconds, self.settings.boot_poll_seconds)
        return self.settings.poll_seconds

    def tick(self) -> Optional[str]:
        job = self.job
        if job.status in FINAL:
            return job.status
        if job.status.startswith("stopping"):  # a stop that a crash interrupted: finish it
            return self.stop(job.status.partition(":")[2] or "stopped")
        try:
            outcome = self._step(job)
        except CloudError as error:  # a passing cloud or SSH failure: retry next tick, within a limit
            self._failing_since = self._failing_since or self.clock()
            failing = self.clock() - self._failing_since
            self.event("error", f"{error} (retrying; failing for {failing:.0f} s)")
            if failing >= self.settings.transient_error_seconds:
                raise
            return None
        self._failing_since = None
        return outcome

    def _step(self, job: JobRow) -> Optional[str]:
        self._renew_lease()
        self._book_storage()
        current = self._current()
        if current is None:
            # Between instances too: never launch a replacement the budget cannot pay for.
            if self.state.instances(self.job_id) and (outcome := self._guard_money(job)):
                return outcome
            self._launch()
            return None
        if current.instance_id is None:  # the launch intent of a run that died mid-launch
            self._complete_launch(current)
            return None
        instance = self._instance(current)
        exit_record = self._agent_exit(current) or {}
        beat = self.store.get_json("agent/heartbeat.json") or {}
        self._book_requests(beat, exit_record)
        exit_status = exit_record.get("status")
        if exit_status in ("finished", "budget", "deadline"):
            return self._conclude(current, exit_status, instance)
        if exit_status == "failed":
            self.event("agent-failed", f"the agent failed on {current.instance_id}: {exit_record.get('message')}")
            return self._conclude(current, "failed", instance)
        state = self.provisioner.status([instance])[instance.instance_id].value
        if state in ("preempted", "terminated", "failed"):
            self._recover(current, instance, reason=state)
            return None
        if state == "pending":
            return self._check_reach_timeout(current, instance)
        if current.agent_started_at is None:
            return self._bootstrap_then_start(current, instance)
        if exit_status in ("preempted", "lease_lapsed"):
            # The agent saw a notice (or its lease lapsed); the provider normally confirms the
            # preemption soon. If the instance lives on, the notice was not the cloud's: carry on.
            if self.clock() - exit_record.get("time", 0) > self.settings.notice_grace_seconds:
                self.event("resume-agent", f"{current.instance_id} outlived its notice; restarting the agent")
                self._start_agent(current, instance)
            return None
        self._check_heartbeat(current, instance, beat)
        return self._guard_money(job)

    def _book_requests(self, *agent_reports: dict) -> None:
        """Requests are booked from running counts: this loop's own, and each agent's (in its heartbeat
        and exit record), one ledger row per process so a restart never counts twice."""
        from nascloud.budget import request_charges

        rates, now = self.job.bundle.get("bucket_rates") or {}, self.clock()
        counts = {f"requests:watch:{self._run}": asdict(self.store.requests)}
        for report in agent_reports:
            if report.get("requests") and report.get("pid"):
                counts[f"requests:agent:{report.get('instance_id')}:{report['pid']}"] = report["requests"]
        for source, requests in counts.items():
            self.state.set_charge(self.job_id, source, request_charges(requests, rates), requests, now)

    def _book_storage(self, final: bool = False) -> None:
        """What the bucket holds, measured every few minutes and billed for the time since the last look."""
        from nascloud.budget import storage_charge

        rates, now = self.job.bundle.get("bucket_rates") or {}, self.clock()
        if not rates.get("storage_gb_month"):
            return
        booked = next((c for c in self.state.charges(self.job_id) if c.source == "storage"), None)
        last = booked.detail if booked else {"bytes": 0, "measured_at": now}
        if booked and not final and now - last["measured_at"] < self.settings.storage_sample_seconds:
            return
        usd = (booked.usd if booked else 0.0) + storage_charge(last["bytes"], now - last["measured_at"], rates)
        self.state.set_charge(self.job_id, "storage", usd, {"bytes": self.store.stored_bytes(), "measured_at": now},
                              now)

    def _guard_money(self, job: JobRow) -> Optional[str]:
        """Alerts once each, and the hard stop before the budget or deadline would be passed."""
        now = self.clock()
        fired = {e.data["key"] for e in self.state.events(self.job_id, "alert") if e.data}
        tick = money(self.state, job, self.store.get_json("agent/progress.json"), now, self.settings, fired)
        for alert in tick.alerts:
            self.event("alert", alert.message, **alert.data())
            webhook = job.bundle["spec"]["budget"].get("webhook")
            if webhook:
                from nascloud.notify import send_webhook

                delivery = send_webhook(webhook, f"nascloud {self.job_id}: {alert.message}")
                if not delivery.ok:
                    self.event("error", f"webhook not delivered: {delivery.error}")
        if tick.stop == "none":
            return None
        self.event(tick.stop, f"stopping: {tick.reason}")
        return self.stop(tick.stop)

    # steps ------------------------------------------------------------------------------------
    def _current(self) -> Optional[InstanceRow]:
        open_rows = self.state.open_instances(self.job_id)
        return open_rows[-1] if open_rows else None

    def _offer(self) -> dict:
        return self.job.bundle["offer"]

    def _zones(self) -> list[dict]:
        """Where the offer may run, cheapest first: the catalog's zones for it, or the one the job pins."""
        offer = self._offer()
        return offer.get("zones") or [{key: offer.get(key) for key in
                                       ("zone", "zone_id", "price_per_hour", "on_demand_price_per_hour")}]

    def _next_zone(self) -> Optional[dict]:
        """The cheapest zone that has not lacked capacity in the last few minutes; None while every one
        has (the loop waits: nothing is billed meanwhile, and the deadline still holds)."""
        failed = {e.data.get("zone"): e.time for e in self.state.events(self.job_id, "capacity") if e.data}
        now = self.clock()
        return next((z for z in self._zones()
                     if now - failed.get(_zone_key(z), -math.inf) > self.settings.capacity_retry_seconds), None)

    def _launch(self) -> None:
        offer = self._offer()
        zone = self._next_zone()
        if zone is None:
            return
        previous = [i for i in self.state.instances(self.job_id) if i.end_reason == "preempted"]
        spot = offer["spot"]
        fallback = self.job.bundle["spec"]["compute"].get("on_demand_after_preemptions")
        if spot and fallback is not None and len(previous) >= fallback:
            spot = False
            if not self.state.events(self.job_id, "fallback"):  # said once, not at every launch after it
                self.event("fallback", f"{len(previous)} preemptions: falling back to on-demand as the job allows")
        # The ledger's price: the zone's, plus the boot disk and public IPv4 (billed while it runs).
        price = (zone["on_demand_price_per_hour"] + offer.get("on_demand_extras_per_hour", 0.0) if not spot
                 else zone["price_per_hour"] + offer.get("extras_per_hour", 0.0))
        self.state.intend_instance(self.job_id, offer["cloud"], offer.get("region"), _zone_key(zone),
                                   offer.get("instance_type"), spot, price)
        where = f" in {_zone_key(zone)}" if _zone_key(zone) else ""
        self.event("launching", f"launching {offer.get('instance_type') or offer['cloud']}{where} "
                                f"({'spot' if spot else 'on-demand'}, ${price:.4f}/h)")
        crash_point("launch-intent")
        self._complete_launch(self._current())

    def _complete_launch(self, row: InstanceRow) -> None:
        from nascloud.job import parse_job

        zone = next((z for z in self._zones() if _zone_key(z) == row.zone), {})
        offer = dict(self._offer(), spot=row.spot, price_per_hour=row.price_per_hour,
                     zone=zone.get("zone"), zone_id=zone.get("zone_id"))
        spec = parse_job(self.job.bundle["spec"])
        try:
            instance = self.provisioner.launch(self.job_id, offer, spec)
        except CapacityError as error:
            self.state.forget_intent(row.seq)
            # Not a failure of the job: the next tick tries the next zone, and this one again later.
            self.event("capacity", str(error), zone=row.zone)
            return
        except NascloudError:
            self.state.forget_intent(row.seq)
            raise
        crash_point("launch-created")
        if any(i.instance_id == instance.instance_id for i in self.state.instances(self.job_id) if i.ended_at):
            # The provider still lists an instance this job already ended (it is going): never book it twice.
            raise CloudError(f"{instance.instance_id} is still going away; launching its replacement next")
        self.state.instance_launched(row.seq, instance.instance_id, instance.launched_at, instance.zone,
                                     asdict(instance))
        self.event("launched", f"instance {instance.instance_id} launched"
                               f"{' in ' + instance.zone if instance.zone else ''}")

    def _instance(self, row: InstanceRow):
        from nascloud.provisioners.base import Instance

        return Instance(**row.record)

    def _bootstrap_then_start(self, row: InstanceRow, instance) -> Optional[str]:
        """Wait (tick by tick, up to the reach timeout) for SSH and the bootstrap's `ready` marker,
        then start the agent. A bootstrap that failed fails the job: a new instance would fail the same."""
        from nascloud.remote import HostKeyError, UnreachableError, connect

        try:
            remote = connect(self.provisioner.ssh_target(instance), instance, attempts=1)
        except UnreachableError:
            return self._check_reach_timeout(row, instance)
        except HostKeyError as error:
            # A booting cloud host shows its image's key until the bootstrap installs ours; past the
            # reach timeout a key other than the pinned one is refused for good, and nothing is left running.
            if self.clock() - (row.launched_at or self.clock()) <= self.settings.reach_timeout_seconds:
                return None
            self.event("host-key", str(error))
            self.stop("failed")
            raise
        try:
            folder = shlex.quote(instance.extra.get("bootstrap_dir", "."))
            _, output = remote.run(f"if [ -f {folder}/ready ]; then echo ready; "
                                   f"elif [ -f {folder}/failed ]; then echo failed:; cat {folder}/failed; fi", timeout=30)
        finally:
            remote.close()
        word, _, reason = output.strip().partition("\n")
        if word == "ready":
            self._start_agent(row, instance)
            return None
        if word == "failed:":
            self.event("bootstrap-failed", f"the bootstrap failed on {row.instance_id}: {reason.strip()[:300]}")
            return self.stop("failed")
        return self._check_reach_timeout(row, instance)

    def _start_agent(self, row: InstanceRow, instance) -> None:
        from nascloud.budget import ledger_total
        from nascloud.remote import connect

        remote = connect(self.provisioner.ssh_target(instance), instance)
        try:
            python, workdir = instance.extra["python"], _workdir(instance)
            # What the instances before this one and the bucket cost; the agent adds its own running time.
            earlier = [i for i in self.state.instances(self.job_id) if i.seq != row.seq]
            spent = ledger_total(earlier, self.clock()) + bucket_usd(self.state, self.job_id)
            job = self.job
            flags = [f"--instance-id {shlex.quote(instance.instance_id)}", f"--spent-usd {spent:.6f}",
                     f"--price-per-hour {row.price_per_hour:.6f}", f"--work-dir {workdir}/search"]
            if job.budget_usd:
                flags.append(f"--budget-usd {job.budget_usd}")
            if job.max_hours:
                flags.append(f"--deadline-at {job.created_at + job.max_hours * 3600:.0f}")
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
                           if k.startswith("NASCLOUD_") and k not in ("NASCLOUD_HOME",))
            # flock: a second agent on the same instance (after an orchestrator restart) exits at once.
            command = (f"mkdir -p {workdir}; cd {workdir}; {env} flock -n {workdir}/agent.lock "
                       f"{python} -m nascloud agent {shlex.quote(job.job_url)} {' '.join(flags)}")
            remote.start_detached(command, f"{workdir}/agent.log")
        finally:
            remote.close()
        crash_point("agent-started")
        self.state.agent_started(row.seq, self.clock())
        if self.job.status == "launching":
            self.state.set_job(self.job_id, status="running")
        self.event("agent-started", f"agent started on {instance.instance_id}")

    def _agent_exit(self, row: InstanceRow) -> Optional[dict]:
        """The agent's exit record, if the agent on this instance has exited."""
        record = self.store.get_json("agent/exit.json")
        if not record or record.get("instance_id") != row.instance_id:
            return None
        if row.agent_started_at and record.get("time", 0) < row.agent_started_at - 5:
            return None  # left by an earlier agent on this instance, before the current one started
        return record

    def _check_reach_timeout(self, row: InstanceRow, instance) -> Optional[str]:
        waited = self.clock() - (row.launched_at or self.clock())
        if waited <= self.settings.reach_timeout_seconds:
            return None
        earlier = [i.end_reason for i in self.state.instances(self.job_id) if i.seq != row.seq]
        self._recover(row, instance, reason="unreachable")
        if earlier[-1:] == ["unreachable"]:  # twice in a row: the image, network or firewall is wrong
            self.event("unreachable", f"two instances in a row never became reachable in "
                                      f"{self.settings.reach_timeout_seconds:.0f} s; stopping the job")
            return self.stop("failed")
        return None

    def _check_heartbeat(self, row: InstanceRow, instance, beat: dict) -> None:
        last = beat.get("time", 0) if beat.get("instance_id") == row.instance_id else 0
        since = self.clock() - max(last, row.agent_started_at or 0)
        if since <= self.settings.heartbeat_deadline_seconds:
            return
        if self._reachable(instance):
            self.event("silent", f"no heartbeat from {row.instance_id} for {since:.0f}s, but it answers; "
                                 "restarting the agent")
            self._start_agent(row, instance)
            return
        self._recover(row, instance, reason="lost")

    def _reachable(self, instance) -> bool:
        from nascloud.remote import connect

        try:
            remote = connect(self.provisioner.ssh_target(instance), instance)
        except NascloudError:
            return False
        try:
            code, _ = remote.run("true", timeout=20)
            return code == 0
        finally:
            remote.close()

    def _recover(self, row: InstanceRow, instance, reason: str) -> None:
        now = self.clock()
        self.event("preempted" if reason == "preempted" else "lost",
                   f"instance {row.instance_id} {reason}: recovering on a new instance",
                   instance_id=row.instance_id, reason=reason)
        crash_point("recover-recorded")
        self.provisioner.terminate([instance])
        crash_point("recover-terminated")
        self.state.instance_ended(row.seq, now, reason)

    def _conclude(self, row: InstanceRow, status: str, instance) -> str:
        if status == "finished":
            self.fetch_results()
        self.provisioner.terminate([instance])
        self.state.instance_ended(row.seq, self.clock(), status)
        return self._end(status)

    def _end(self, status: str) -> str:
        """Release what the job created and close its ledger: the last requests and storage booked."""
        self.provisioner.release(self.job_id)
        self._book_storage(final=True)
        self._book_requests()
        self.state.set_job(self.job_id, status=status, ended_at=self.clock())
        self.event(status, _CONCLUSIONS[status].format(total=self.ledger_total(), results=self.results_dir(),
                                                       job_id=self.job_id))
        return status

    # services for commands --------------------------------------------------------------------
    def _renew_lease(self) -> None:
        ttl = self.job.bundle["spec"]["checkpoint"]["lease_minutes"] * 60
        self.store.put_json("lease.json", {"renewed_at": self.clock(), "ttl_seconds": ttl,
                                           "owner": socket.gethostname()})

    def ledger_total(self) -> float:
        from nascloud.budget import ledger_total

        return ledger_total(self.state.instances(self.job_id), self.clock()) + bucket_usd(self.state, self.job_id)

    def agent_log(self, lines: int) -> str:
        """The tail of the agent's log on the current instance (for `nascloud logs --agent N`)."""
        from nascloud.remote import connect

        row = self._current()
        if row is None or row.agent_started_at is None:
            return "(no agent is running for this job now)"
        instance = self._instance(row)
        remote = connect(self.provisioner.ssh_target(instance), instance, attempts=1)
        try:
            return remote.run(f"tail -n {int(lines)} {_workdir(instance)}/agent.log", timeout=30)[1].rstrip()
        finally:
            remote.close()

    def results_dir(self) -> Path:
        return nascloud_home() / "results" / self.job_id

    def fetch_results(self) -> Path:
        target = self.results_dir()
        target.mkdir(parents=True, exist_ok=True)
        for name in ("leaderboard.json", "labels.json", "best_model.keras"):
            self.store.get_file(f"results/{name}", target / name)
        return target

    def stop(self, status: str = "stopped") -> str:
        """Final snapshot (the agent's SIGTERM path), terminate, release; the job stays resumable."""
        self.state.set_job(self.job_id, status=f"stopping:{status}")
        row = self._current()
        if row is not None and row.instance_id is None:
            self._complete_launch(row)  # an interrupted launch: find it by tag so it is not orphaned
            row = self._current()
        if row is not None:
            instance = self._instance(row)
            if row.agent_started_at and self.provisioner.status([instance])[instance.instance_id].value == "running":
                self._ask_agent_to_stop(row, instance)
            crash_point("stop-snapshotted")
            self.provisioner.terminate([instance])
            crash_point("stop-terminated")
            self.state.instance_ended(row.seq, self.clock(), status)
            self._book_requests(self._agent_exit(row) or {})
        return self._end(status)

    def _ask_agent_to_stop(self, row: InstanceRow, instance) -> None:
        from nascloud.remote import connect

        try:
            remote = connect(self.provisioner.ssh_target(instance), instance)
            try:
                # Only this job's agent: another job may run on the same machine (local provider).
                pattern = shlex.quote(f"nascloud agent {self.job.job_url}")
                remote.run(f"pkill -TERM -f -- {pattern} || true", timeout=30)
            finally:
                remote.close()
        except NascloudError as error:
            self.event("error", f"could not ask the agent for a final snapshot: {error}")
            return
        deadline = time.monotonic() + self.settings.stop_timeout_seconds
        while time.monotonic() < deadline and self._agent_exit(row) is None:
            time.sleep(1)


_CONCLUSIONS = {
    "finished": "search finished; best model and leaderboard in {results} (`nascloud results {job_id}`); "
                "everything the job created is removed (spent ${total:.2f})",
    "stopped": "job stopped; state kept in the bucket, resume with `nascloud resume` (spent ${total:.2f})",
    "budget": "stopped at the budget with a final snapshot (spent ${total:.2f}); "
              "continue with `nascloud resume JOB --budget +USD`",
    "deadline": "stopped at the deadline with a final snapshot (spent ${total:.2f}); "
                "continue with `nascloud resume JOB`",
    "failed": "the search failed; see `nascloud logs` (spent ${total:.2f})",
}


def _workdir(instance) -> str:
    """Where the agent works on the instance: the local provider's fresh folder, else the login's home."""
    return instance.extra.get("workdir", "~/nascloud-work")


def drill(state: State, job_id: str, provisioner, timeout_seconds: float = 1800) -> float:
    """Preempt the job's instance the way its cloud would, and return the seconds until the agent
    trains again on a new instance. Runs the watch loop itself when no other process does."""
    orchestrator = Orchestrator(state, job_id, provisioner)
    row = orchestrator._current()
    if row is None or row.instance_id is None or row.agent_started_at is None:
        raise UsageError(f"job {job_id} has no running instance to preempt (see `nascloud status {job_id}`)")
    lock = JobLock(job_id)
    owns_loop = lock.acquire()
    started = time.time()
    orchestrator.event("drill", f"fire drill: preempting {row.instance_id}")
    provisioner.preempt(orchestrator._instance(row))
    try:
        while time.time() - started < timeout_seconds:
            if owns_loop and orchestrator.tick():
                raise NascloudError(f"job {job_id} ended during the drill ({orchestrator.job.status})")
            beat = orchestrator.store.get_json("agent/heartbeat.json") or {}
            if (beat.get("instance_id") not in (None, row.instance_id) and beat.get("phase") == "searching"
                    and beat.get("time", 0) > started):
                seconds = time.time() - started
                orchestrator.event("drill", f"fire drill: training again after {seconds:.1f} s")
                return seconds
            time.sleep(orchestrator.pause_seconds() if owns_loop else 1.0)
    finally:
        if owns_loop:
            lock.release()
    raise CloudError(f"job {job_id} did not recover within {timeout_seconds:.0f} s; see `nascloud logs {job_id}`")


def find_garbage(state: State, provisioner, now: Optional[float] = None) -> list[tuple]:
    """Instances tagged by nascloud whose job is over or whose lease lapsed. Never one whose lease is
    fresh, even if this machine's database does not know its job."""
    from nascloud.checkpoints import open_store

    now = now or time.time()
    known = {job.job_id: job for job in state.jobs()}
    garbage = []
    for instance in provisioner.list_owned(None):
        job = known.get(instance.job_id)
        if job is not None and job.status in FINAL:
            garbage.append((instance, f"its job is {job.status}"))
            continue
        job_url = job.job_url if job else instance.extra.get("job_url")
        if not job_url:
            continue  # no way to read its lease: not ours to judge
        try:
            lease = open_store(job_url).get_json("lease.json")
        except NascloudError:
            continue
        if lease and now - lease["renewed_at"] > lease["ttl_seconds"]:
            garbage.append((instance, f"its lease lapsed {(now - lease['renewed_at']) / 60:.0f} min ago"))
    return garbage

"""`nascloud instance`: what the bootstrap becomes on every instance of a job's group.

At boot, before anything slow, the instance records itself in the bucket's ledger and reads the job: a job
already at its budget, deadline, stop request or end resizes its groups to 0 and powers off at once. It
arms an OS-level timer from the budget left (a separate process that ends the group and the machine, so
a hung Python cannot overspend), then runs the agent under supervision: a crash is restarted; K crashes in
a row with no new snapshot or completed trial fail the job with the reason. At every end (finished, budget,
deadline, stop request, failure) it writes the final notice, sets the job's groups to 0 and powers the
machine off, so the bill ends with the search. A bucket it cannot use is its own case: the groups go to 0
with the reason on the group (what `status` shows) and nothing is counted as a crash. Anything else that
goes wrong (no metadata, a provider error, a bug) exits with the reason in governor-failed, and the
bootstrap's breaker ends the groups, records the failed boot and powers off (scripts/bootstrap.sh); a bucket
that refuses a write later (full, read-only) halts the job as one it cannot use at boot does.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn, Optional

from nascloud.errors import NascloudError, StorageError
from nascloud.hints import command
from nascloud.jobbucket import FINAL, JobBucket, heartbeat_seconds

log = logging.getLogger("nascloud.instance")

CRASH_LIMIT = 3  # agent starts in a row that die without a new snapshot or completed trial
NOTICE_GRACE_SECONDS = 180.0  # a preemption notice the cloud does not follow up: resume the agent after this
GOVERNOR_FAILED = "governor-failed"  # in NASCLOUD_ROOT: why the governor exited, for the bootstrap's breaker


class Governor:
    def __init__(self, env: Optional[dict] = None):
        """Reads the bootstrap's values only: nothing here can fail on the network, so every later failure
        reaches a path that ends the groups."""
        env = dict(os.environ if env is None else env)
        self.env = env
        self.job_id, self.group, self.job_url = env["NASCLOUD_JOB_ID"], env["NASCLOUD_GROUP"], env["NASCLOUD_JOB_URL"]
        self.root = Path(env.get("NASCLOUD_ROOT") or ".")
        self.cloud, self.ssh = env["NASCLOUD_CLOUD"], env.get("NASCLOUD_SSH") == "1"
        self.groups = (env.get("NASCLOUD_GROUPS") or self.group).split()
        self._provisioner = None
        self.me = None
        self.bucket: Optional[JobBucket] = None
        self.governance = None

    @property
    def provisioner(self):
        if self._provisioner is None:
            from nascloud.provisioners import instance_provisioner

            self._provisioner = instance_provisioner(self.env)
        return self._provisioner

    # -- ends -----------------------------------------------------------------------------------
    def halt(self, reason: str) -> NoReturn:
        """Every group of the job to 0, then this machine off. The group records why (the observer's view
        when the bucket itself is what failed)."""
        log.info("ending the job's groups and this machine: %s", reason)
        refused = []
        for group in self.groups:
            try:
                self.provisioner.resize(self.job_id, group, 0, reason=reason)
            except Exception as error:  # noqa: BLE001  every group is tried, whatever the API says of one
                log.warning("could not resize group %s to 0: %s", group, error)
                refused.append(f"group {group}: {error}")
        if refused:
            # A group left above 0 would replace this machine: the bootstrap's breaker tries again with the
            # instance's identity, counts this boot and powers off.
            raise GovernorFailed(f"{reason}; but could not set the job's groups to 0 ({'; '.join(refused)})")
        self.provisioner.power_off()
        raise SystemExit(0)  # the machine is going down (and its group at 0 ends it anyway): do nothing more

    def end(self, status: str, message: str) -> NoReturn:
        log.info("the job ends here: %s: %s", status, message)
        try:
            self.governance.conclude(status, message)
            self.governance.end(status)
            self._book_requests()
            self._write_history(status)
            self.bucket.put_log(self.me.instance_id, self.agent_log)
        except NascloudError as error:
            log.warning("could not write the job's end to the bucket: %s", error)
        self.halt(f"{status}: {message}")

    def _write_history(self, status: str) -> None:
        """What this job measured, beside its estimate, for the next estimate of a similar job."""
        from nascloud import history

        try:
            history.write(self.bucket, status)
        except Exception as error:  # noqa: BLE001  a courtesy to the next estimate: the halt must still come
            log.warning("could not write the job's history: %s", error)

    # -- boot -------------------------------------------------------------------------------------
    def boot(self) -> None:
        from nascloud.agent.governance import Governance

        self.me = self.provisioner.whoami(self.job_id, self.group)
        try:
            self.bucket = JobBucket.open(self.job_url)
            self.groups = [g.name for g in self.bucket.bundle().groups]
            self.governance = Governance(self.bucket, self.me.instance_id)
            self.governance.record_boot(self.me)
        except NascloudError as error:
            self.halt(f"the instance cannot use the job's bucket {self.job_url}: {error}; fix its permissions or "
                      f"the bucket, then {command('resume', self.job_id)}")
        if self.ssh:  # opt-in (compute.ssh_cidr), early: a boot that goes wrong later is what one debugs
            from nascloud.agent.ssh import open_ssh

            open_ssh(self.bucket, self.me.instance_id, self.cloud, self.root)
        try:
            listed = [i for g in self.provisioner.groups(self.job_id) for i in g.instances]
            self.bucket.reconcile(listed, time.time(), skip=self.me.instance_id)
        except Exception as error:  # noqa: BLE001  the provider's listing is a courtesy to the ledger here
            log.warning("could not list the job's instances to close the ledger: %s", error)
        record = self.bucket.exit_record() or {}
        if record.get("status") in FINAL:
            self.end(record["status"], f"the job had already ended ({record.get('message', '')})")
        verdict = self.governance.stop_reason()
        if verdict:
            self.bucket.write_exit(*verdict, self.me.instance_id)
            self.end(*verdict)
        self.fall_back_to_on_demand()
        self.arm_timer()

    def fall_back_to_on_demand(self) -> None:
        """compute.on_demand_after_preemptions: once the ledger counts that many, the groups' later instances
        are on-demand (priced from the bundle's on-demand column when they boot); this one runs on as it is."""
        after = self.bucket.bundle().spec.compute.on_demand_after_preemptions
        preempted = sum(e.end_reason == "preempted" for e in self.bucket.ledger())
        if not (after and self.me.spot and preempted >= after):
            return
        try:
            for group in self.groups:
                self.provisioner.use_on_demand(self.job_id, group)
        except NascloudError as error:  # spot goes on: a switch that failed costs preemptions, not the job
            log.warning("could not switch the job's groups to on-demand: %s", error)
            return
        self.bucket.add_event("on-demand", f"{preempted} preemptions: the job's next instances are on-demand",
                              once="on-demand")

    def arm_timer(self) -> None:
        """A plain `sleep` in its own session that halts the job when the budget or deadline runs out at this
        instance's price, whatever the agent and this process are doing by then."""
        from nascloud.budget import ledger_total

        budget, now = self.bucket.budget(), time.time()
        ledger = self.bucket.ledger()
        entry = next(e for e in ledger if e.instance_id == self.me.instance_id)
        limits = []
        if budget.get("usd") and entry.price_per_hour > 0:
            # What this instance may still bill: the budget less everything else, from its own launch.
            others = (ledger_total([e for e in self.bucket.billed(now) if e.instance_id != entry.instance_id], now,
                                   self.bucket.bundle().billing_minimum_seconds) + self.bucket.charges_usd())
            runs_out = entry.launched_at + (budget["usd"] - others) / entry.price_per_hour * 3600
            limits.append(runs_out - now)
        if budget.get("max_hours"):
            limits.append(self.bucket.bundle().created_at + budget["max_hours"] * 3600 - now)
        if not limits:
            return
        seconds = max(0.0, min(limits))
        command = (f"sleep {seconds:.0f}; exec {shlex.quote(sys.executable)} -m nascloud instance "
                   f"--halt {shlex.quote('the budget timer fired: the budget or deadline ran out')} "
                   f"--instance-id {shlex.quote(self.me.instance_id)}")
        subprocess.Popen(["bash", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
        log.info("budget timer armed: halts the job in %.0f s", seconds)

    # -- the agent --------------------------------------------------------------------------------
    @property
    def agent_log(self) -> Path:
        return self.root / "work" / "agent.log"

    def _marker(self) -> tuple:
        """What counts as progress: what survives a restart, a new snapshot (a trial's end and an epoch
        backup publish one) or a completed trial. An epoch trained again since the last snapshot is not:
        an agent killed every few seconds would otherwise reach a different epoch each time and never trip."""
        progress = self.bucket.progress()
        return progress.get("snapshot_id"), progress.get("trials_done")

    def _log_tail(self, lines: int) -> str:
        """The agent's last lines on this instance, for the failure's reason."""
        try:
            text = self.agent_log.read_text(errors="replace")
        except OSError:
            return "(no agent log on this instance)"
        return " | ".join([line.strip() for line in text.splitlines() if line.strip()][-lines:])

    def _book_requests(self) -> None:
        from dataclasses import asdict

        from nascloud.budget import request_charges

        counts = asdict(self.bucket.store.requests)
        self.bucket.put_charge(f"requests-{self.me.instance_id}-governor",
                               request_charges(counts, self.bucket.bundle().bucket_rates), counts)

    def run_agent_once(self) -> Optional[dict]:
        """Start the agent, wait for it (its log to the bucket meanwhile), return its exit record."""
        self.agent_log.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        command = [sys.executable, "-m", "nascloud", "agent", self.job_url, "--instance-id", self.me.instance_id,
                   "--work-dir", str(self.root / "work" / "search")]
        with open(self.agent_log, "ab") as out:
            agent = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     cwd=self.root)
        while True:
            try:
                agent.wait(timeout=max(1.0, heartbeat_seconds()))
                break
            except subprocess.TimeoutExpired:
                self._upload_log()
                self._revive()
        self._upload_log()
        record = self.bucket.exit_record() or {}
        mine = record.get("instance_id") == self.me.instance_id and record.get("time", 0) >= started - 1
        log.info("the agent exited with code %s (%s)", agent.returncode, record.get("status") if mine else "no record")
        return record if mine else None

    def _revive(self) -> None:
        """The group's engine, started again if it died (local only), so this instance's loss is replaced."""
        from nascloud.observer import revive

        try:
            revive(self.bucket, self.provisioner)
        except Exception as error:  # noqa: BLE001  a courtesy to the next instance: the search goes on
            log.warning("could not check the group's engine: %s", error)

    def _upload_log(self) -> None:
        try:
            self.bucket.put_log(self.me.instance_id, self.agent_log)
        except NascloudError as error:
            log.warning("could not upload the agent's log: %s", error)

    def supervise(self) -> None:
        crashes, marker = 0, self._marker()
        while True:
            record = self.run_agent_once()
            status = (record or {}).get("status")
            if status in FINAL:
                self.end(status, record.get("message", ""))
            if status == "preempted":
                # The cloud takes the machine within its notice; if it does not, the notice was not for us.
                time.sleep(float(os.environ.get("NASCLOUD_NOTICE_GRACE_SECONDS", NOTICE_GRACE_SECONDS)))
                continue
            now_marker = self._marker()
            crashes = crashes + 1 if now_marker == marker else 1
            marker = now_marker
            if crashes >= CRASH_LIMIT:
                message = (f"the agent died {crashes} times in a row on {self.me.instance_id} without a new snapshot "
                           f"or completed trial; its last log lines: {self._log_tail(3)[-400:]}")
                self.bucket.write_exit("failed", message, self.me.instance_id)
                self.end("failed", message)
            self.bucket.add_event("agent-restarted", f"the agent on {self.me.instance_id} died; restarting it "
                                                     f"({crashes} of {CRASH_LIMIT} without progress)")
            time.sleep(min(2 ** crashes, 30))


class GovernorFailed(Exception):
    """The governor cannot end the job itself: the bootstrap's breaker takes over."""


def govern() -> None:
    """The instance's governor; any failure leaves its reason for the bootstrap's breaker and exits 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s nascloud instance: %(message)s")
    from nascloud.cloud_errors import one_line

    governor = None
    try:
        governor = Governor()
        try:
            governor.boot()
            governor.supervise()
        except StorageError as error:  # full, read-only or forbidden mid-run: the job's end, not a failed boot
            log.exception("the job's bucket refused a write")
            governor.halt(f"the job's bucket {governor.job_url} refused a write ({one_line(error)}); free space "
                          f"or fix its permissions, then {command('resume', governor.job_id)}")
    except Exception as error:  # noqa: BLE001  whatever it is, the groups must end: the breaker's job
        log.exception("the governor failed")
        reason = f"the instance's governor failed: {one_line(error)}"
        root = governor.root if governor else Path(os.environ.get("NASCLOUD_ROOT") or ".")
        (root / GOVERNOR_FAILED).write_text(reason[:2000])
        raise SystemExit(1) from None


def halt_now(reason: str, instance_id: str) -> None:
    """The budget timer's end: the groups to 0 and the machine off, with as little as possible in the way
    (no metadata read: the timer was given this instance's id)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s nascloud instance: %(message)s")
    governor = Governor()
    try:
        bucket = JobBucket.open(governor.job_url)
        from nascloud.agent.governance import Governance

        governance = Governance(bucket, instance_id)
        if (bucket.exit_record() or {}).get("status") not in FINAL:
            governance.conclude("budget", reason)  # this end's final event too, before its exit record
            bucket.write_exit("budget", reason, instance_id)
        governance.end("budget")
        bucket.put_log(instance_id, governor.agent_log)
    except Exception as error:  # noqa: BLE001  the records are a courtesy: the halt below is the point
        log.warning("could not close the ledger entry: %s", error)
    try:
        governor.halt(reason)
    except GovernorFailed as error:  # no breaker runs beside the timer: off anyway (the next boot halts too)
        log.warning("%s", error)
        governor.provisioner.power_off()

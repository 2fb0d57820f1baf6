"""The instance governs itself: its ledger entry, the job's money, alerts and stop requests, decided here
from the bucket, so nothing on a laptop has to be awake for the budget to hold.

The governor (at boot, before anything slow) and the agent (at every heartbeat) share this one object.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Optional

from nascloud.hints import command
from nascloud.jobbucket import JobBucket, LedgerEntry, money, spend


class Governance:
    def __init__(self, bucket: JobBucket, instance_id: str):
        self.bucket = bucket
        self.bundle = bucket.bundle()
        self.instance_id = instance_id

    # -- the ledger ---------------------------------------------------------------------------
    def record_boot(self, instance) -> LedgerEntry:
        """This instance's entry, written before anything slow: a reboot keeps its launch time."""
        now = time.time()
        entry = self.bucket.entry(instance.instance_id) or LedgerEntry(
            instance_id=instance.instance_id, group=instance.group, cloud=instance.cloud,
            instance_type=instance.instance_type, zone=instance.zone, spot=instance.spot,
            price_per_hour=self.bundle.offer.price_for(instance.zone, instance.spot),
            launched_at=instance.launched_at or now, last_seen=now, booted_at=now)
        entry = replace(entry, last_seen=now, ended_at=None, end_reason=None)
        self.bucket.put_entry(entry)
        return entry

    def seen(self, requests: Optional[dict] = None) -> None:
        """A sign of life (every heartbeat), with this process's request count for the bucket's bill."""
        entry = self.bucket.entry(self.instance_id)
        if entry is None:
            return
        counts = dict(entry.requests)
        if requests is not None:
            counts[str(os.getpid())] = requests
        self.bucket.put_entry(replace(entry, last_seen=time.time(), requests=counts))

    def end(self, reason: str) -> None:
        entry = self.bucket.entry(self.instance_id)
        if entry is not None and entry.ended_at is None:
            self.bucket.put_entry(replace(entry, ended_at=time.time(), last_seen=time.time(), end_reason=reason))

    def sample_storage(self) -> None:
        """What the bucket holds, measured now and billed for the time since the last look (one LIST)."""
        from nascloud.budget import storage_charge

        rates = self.bundle.bucket_rates
        if not rates.get("storage_gb_month"):
            return
        now = time.time()
        last = self.bucket.charge("storage") or {"usd": 0.0, "bytes": 0, "measured_at": self.bundle.created_at}
        usd = last["usd"] + storage_charge(last["bytes"], now - last["measured_at"], rates)
        self.bucket.put_charge("storage", usd, {"bytes": self.bucket.store.stored_bytes(), "measured_at": now})

    # -- the money and the stops -------------------------------------------------------------------
    def spent(self, now: Optional[float] = None) -> float:
        return spend(self.bucket, now or time.time())

    def tick(self, now: Optional[float] = None):
        """The budget's view now (nascloud.budget.evaluate over the bucket's ledger); new alerts are fired
        here, once each for the whole job, to the events and the webhook."""
        tick = money(self.bucket, now or time.time())
        for alert in tick.alerts:
            if self.bucket.add_event("alert", alert.message, alert.data(), once=alert.key):
                self.notify(alert.message)
        return tick

    def stop_reason(self, now: Optional[float] = None) -> Optional[tuple[str, str]]:
        """("stopped" | "budget" | "deadline", why) when the job must stop now, else None."""
        request = self.bucket.stop_request()
        if request:
            return "stopped", f"stop requested by {request.get('by', 'a user')}"
        tick = self.tick(now)
        if tick.stop != "none":
            return tick.stop, tick.reason
        return None

    def notify(self, message: str) -> None:
        """To the job's webhook, from the instance: the user hears with the laptop closed. A failed delivery
        is an event, never a stop."""
        url = self.bundle.spec.budget.webhook
        if not url:
            return
        from nascloud.notify import send_webhook

        delivery = send_webhook(url, f"nascloud {self.bundle.job_id}: {message}")
        if not delivery.ok:
            self.bucket.add_event("error", f"webhook not delivered: {delivery.error}")

    def conclude(self, status: str, message: str) -> None:
        """The job's final notice (finished, stopped, budget, deadline, failed): once, whoever reaches it."""
        total = self.spent()
        text = f"{CONCLUSIONS.get(status, status).format(job=self.bundle.job_id)} (spent ${total:.2f}): {message}"
        if self.bucket.add_event(status, text, {"spent_usd": total}, once=f"final:{status}:{self._epoch()}"):
            self.notify(text)

    def _epoch(self) -> str:
        """Which run of the job this is: `resume` starts a new one (a new budget record)."""
        return f"{self.bucket.budget().get('updated_at', 0):.0f}"


CONCLUSIONS = {
    "finished": f"search finished; {command('results', '{job}')} shows the leaderboard and the best model",
    "stopped": f"job stopped with a final snapshot; {command('resume', '{job}')} continues it",
    "budget": ("stopped at the budget with a final snapshot; continue with "
               f"{command('resume', '{job}', '--budget', '+USD')}"),
    "deadline": ("stopped at the deadline with a final snapshot; continue with "
                 f"{command('resume', '{job}', '--max-hours', 'H')}"),
    "failed": f"the search failed; see {command('logs', '{job}', '--agent', 50)}",
}

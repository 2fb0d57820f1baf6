"""The job's records in its bucket prefix: where the roles meet (README, "The bucket").

    bundle/job.json        the job (nascloud.bundle.Bundle), written once by launch
    budget.json            the budget and deadline in force; `resume` updates it
    stop.json              a stop request (`nascloud stop`, from any machine)
    ledger/<instance>.json each instance: its price at launch, launch time, last seen, end
    boots/<group>/<instance>.json   a boot that ended in the breaker (the bootstrap writes it)
    charges/<source>.json  the bucket's own charges: launch's requests, storage measured by the instances
    events/<ns>-<kind>-<id>.json   one object per event, created once, ordered by name
    claims/<key>           create-only markers: an alert or notice fired once, whoever fires it
    agent/heartbeat.json, agent/progress.json, agent/exit.json    the agent's reports
    logs/<instance>.log    the agent's log on that instance
    hosts/<instance>.json  opt-in SSH: the instance's own host key (public half), address and port
    results/               leaderboard.json, best_model.keras, labels.json

The laptop's SQLite only caches which jobs it launched; everything here is the truth, so an observer on
any machine (`status <bucket URL>`) sees what the instance sees.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from nascloud.bundle import Bundle, parse_bundle

FINAL = ("finished", "stopped", "budget", "deadline", "failed")


def heartbeat_seconds() -> float:
    return float(os.environ.get("NASCLOUD_HEARTBEAT_SECONDS", "30"))


@dataclass(frozen=True)
class LedgerEntry:
    """One instance in the job's ledger. Written by the instance at boot, its last_seen at every heartbeat,
    and its end by itself or, for an instance killed without warning, by whoever learns of it first from
    the provider's own times."""

    instance_id: str
    group: str
    cloud: str
    instance_type: str
    zone: Optional[str]
    spot: bool
    price_per_hour: float  # at its launch, from the bundle's price table; never re-priced
    launched_at: float  # as the provider reports it
    last_seen: float
    ended_at: Optional[float] = None
    end_reason: Optional[str] = None  # finished | stopped | budget | deadline | failed | preempted | lost
    booted_at: Optional[float] = None
    requests: dict = field(default_factory=dict)  # "<pid>": {"class_a": n, "class_b": n}, per process

    def billed(self, now: float) -> "LedgerEntry":
        """The entry as the budget bills it: an open entry not seen for a heartbeat is presumed gone at its
        last sign of life plus one heartbeat, until the provider's end time closes it."""
        if self.ended_at is not None:
            return self
        presumed = self.last_seen + heartbeat_seconds()
        return self if now <= presumed else replace(self, ended_at=presumed)


@dataclass(frozen=True)
class FailedBoot:
    """A boot that ended in the bootstrap's breaker (it failed before the agent ran, or its governor did), as
    the breaker records it: the next boot of the group counts these, `status` shows the newest's reason,
    and the budget bills each at the group's price until `resume` books it in the ledger."""

    instance_id: str
    group: str
    booted_at: float
    failed_at: float
    reason: str

    def entry(self, offer) -> LedgerEntry:
        return LedgerEntry(instance_id=self.instance_id, group=self.group, cloud=offer.cloud,
                           instance_type=offer.instance_type, zone=None, spot=offer.spot,
                           price_per_hour=offer.price_for(None, offer.spot), launched_at=self.booted_at,
                           last_seen=self.failed_at, ended_at=self.failed_at, end_reason="boot failed")


@dataclass(frozen=True)
class Event:
    name: str  # its object name: ordering by name is ordering by time
    time: float
    kind: str
    message: str
    data: Optional[dict] = None


class JobBucket:
    """Typed access to one job's prefix, over its CheckpointStore (the store counts every request)."""

    def __init__(self, store):
        self.store = store
        self.url = store.url
        self._bundle: Optional[Bundle] = None
        self._views: Optional[dict] = None  # within reading(): the ledger, events and charges read so far

    @contextmanager
    def reading(self):
        """One view of the job (a `status`, a tick of `watch`): the ledger, events and charges are listed and
        read once, not once per figure that uses them (each is a request per object on S3/GCS). A write
        through this object drops what it changes."""
        self._views = {}
        try:
            yield self
        finally:
            self._views = None

    def _viewed(self, what: str, read):
        if self._views is None:
            return read()
        if what not in self._views:
            self._views[what] = read()
        return self._views[what]

    def _changed(self, what: str) -> None:
        if self._views is not None:
            self._views.pop(what, None)

    @classmethod
    def open(cls, job_url: str, keep: int = 3) -> "JobBucket":
        from nascloud.checkpoints import open_store

        return cls(open_store(job_url, keep=keep))

    # -- the job ---------------------------------------------------------------------------
    def bundle(self) -> Bundle:
        if self._bundle is None:
            self._bundle = parse_bundle(self.store.get_json("bundle/job.json"), self.url)
        return self._bundle

    def budget(self) -> dict:
        """{"usd", "max_hours", "updated_at"}: the budget in force (launch writes it, resume changes it)."""
        record = self.store.get_json("budget.json")
        if record is None:
            spec = self.bundle().spec.budget
            record = {"usd": spec.usd, "max_hours": spec.max_hours, "updated_at": self.bundle().created_at}
        return record

    def set_budget(self, usd: Optional[float], max_hours: Optional[float]) -> None:
        self.store.put_json("budget.json", {"usd": usd, "max_hours": max_hours, "updated_at": time.time()})

    def stop_request(self) -> Optional[dict]:
        return self.store.get_json("stop.json")

    def request_stop(self, by: str) -> None:
        self.store.put_json("stop.json", {"time": time.time(), "by": by})

    def reopen(self) -> None:
        """For `resume`: the stop request and the last exit record no longer hold, and the failed boots are
        booked in the ledger (their cost stays), so the breaker counts anew."""
        self.store.objects.delete("stop.json")
        self.store.objects.delete("agent/exit.json")
        known = {e.instance_id for e in self.ledger()}
        for boot in self.failed_boots():
            if boot.instance_id not in known:
                self.put_entry(boot.entry(self.bundle().offer))
            self.store.objects.delete(f"boots/{boot.group}/{boot.instance_id}.json")

    def exit_record(self) -> Optional[dict]:
        return self.store.get_json("agent/exit.json")

    def write_exit(self, status: str, message: str, instance_id: str) -> None:
        self.store.put_json("agent/exit.json", {"status": status, "message": message, "time": time.time(),
                                                "instance_id": instance_id, "pid": os.getpid()})

    def progress(self) -> dict:
        return self.store.get_json("agent/progress.json") or {}

    def heartbeat(self) -> dict:
        return self.store.get_json("agent/heartbeat.json") or {}

    # -- the ledger --------------------------------------------------------------------------
    def ledger(self) -> list[LedgerEntry]:
        return list(self._viewed("ledger", self._read_ledger))

    def _records(self, prefix: str) -> list[dict]:
        """Every record under prefix: one listing, one read each."""
        return [record for info in self.store.objects.list(prefix) if (record := self.store.get_json(info.key))]

    def _read_ledger(self) -> list[LedgerEntry]:
        return sorted((LedgerEntry(**r) for r in self._records("ledger/")), key=lambda e: e.launched_at)

    def failed_boots(self) -> list[FailedBoot]:
        """The boots that ended in the breaker, oldest first."""
        return list(self._viewed("boots", self._read_failed_boots))

    def _read_failed_boots(self) -> list[FailedBoot]:
        # The bootstrap writes these in bash: a field it adds later is left out here, not a crash.
        found = (FailedBoot(**{k: r[k] for k in FailedBoot.__dataclass_fields__}) for r in self._records("boots/"))
        return sorted(found, key=lambda b: b.failed_at)

    def instances(self) -> list[LedgerEntry]:
        """Every instance the job ran: the ledger's entries, and each failed boot that no entry holds (an
        instance that never reached its governor bills its minimum all the same)."""
        entries = self.ledger()
        known = {e.instance_id for e in entries}
        offer = self.bundle().offer
        return entries + [b.entry(offer) for b in self.failed_boots() if b.instance_id not in known]

    def billed(self, now: float) -> list[LedgerEntry]:
        """Every instance as the budget bills it now (LedgerEntry.billed)."""
        return [e.billed(now) for e in self.instances()]

    def entry(self, instance_id: str) -> Optional[LedgerEntry]:
        record = self.store.get_json(f"ledger/{instance_id}.json")
        return LedgerEntry(**record) if record else None

    def put_entry(self, entry: LedgerEntry) -> None:
        self._changed("ledger")
        self.store.put_json(f"ledger/{entry.instance_id}.json", asdict(entry))

    def reconcile(self, instances, now: float, skip: Optional[str] = None) -> None:
        """Bring the ledger up to the provider's listing: an instance that never recorded itself (killed while
        it booted) gets its entry from the provider's times, and an open entry of an instance the provider
        lists as ended, or no longer lists, is closed at its end time (else its last sign of life plus a
        heartbeat). Every instance the group ever started is billed, at least its minimum."""
        listed = {i.instance_id: i for i in instances if i.instance_id != skip}
        entries = {e.instance_id: e for e in self.ledger()}
        offer = self.bundle().offer
        failed = {b.instance_id for b in self.failed_boots()}

        def end_reason(instance) -> str:
            return "boot failed" if instance.instance_id in failed else instance.state.value

        for instance in listed.values():
            if instance.instance_id not in entries and instance.launched_at is not None:
                live = instance.state.value in ("pending", "running")
                self.put_entry(LedgerEntry(
                    instance_id=instance.instance_id, group=instance.group, cloud=instance.cloud,
                    instance_type=instance.instance_type, zone=instance.zone, spot=instance.spot,
                    price_per_hour=offer.price_for(instance.zone, instance.spot), launched_at=instance.launched_at,
                    last_seen=now if live else instance.ended_at or instance.launched_at,
                    ended_at=None if live else instance.ended_at or instance.launched_at,
                    end_reason=None if live else end_reason(instance)))
        for entry in entries.values():
            if entry.ended_at is not None or entry.instance_id == skip:
                continue
            instance = listed.get(entry.instance_id)
            if instance is not None and instance.state.value in ("pending", "running"):
                continue
            if instance is None and now - entry.last_seen <= 2 * heartbeat_seconds():
                continue  # not listed yet or any more: give the provider's listing a moment
            end = (instance.ended_at if instance is not None and instance.ended_at
                   else entry.last_seen + heartbeat_seconds())
            reason = end_reason(instance) if instance is not None else "lost"
            self.put_entry(replace(entry, ended_at=max(end, entry.launched_at), end_reason=reason))

    def charges_usd(self) -> float:
        """The bucket's part of the spend: requests (every process's, at the bundle's rates) and storage."""
        from nascloud.budget import request_charges

        rates = self.bundle().bucket_rates
        total = self._viewed("charges", self._read_charges)
        for entry in self.ledger():
            total += sum(request_charges(counts, rates) for counts in entry.requests.values())
        return total

    def _read_charges(self) -> float:
        return sum(float((self.store.get_json(info.key) or {}).get("usd", 0.0))
                   for info in self.store.objects.list("charges/"))

    def put_charge(self, source: str, usd: float, detail: dict) -> None:
        self._changed("charges")
        self.store.put_json(f"charges/{source}.json", {"usd": usd, **detail, "updated_at": time.time()})

    def charge(self, source: str) -> Optional[dict]:
        return self.store.get_json(f"charges/{source}.json")

    # -- events ------------------------------------------------------------------------------
    def add_event(self, kind: str, message: str, data: Optional[dict] = None, once: Optional[str] = None) -> bool:
        """Record an event; with `once`, only if no process (this instance, its replacement, an observer)
        recorded that key before. False when it had been."""
        if once is not None and not self.store.objects.put_if_absent(f"claims/{_key(once)}", b"1"):
            return False
        self._changed("events")
        stamp = time.time_ns()  # nanoseconds: events a process writes in one millisecond keep their order
        name = f"events/{stamp:019d}-{kind}-{secrets.token_hex(3)}.json"
        self.store.objects.put_if_absent(name, json.dumps(
            {"time": stamp / 1e9, "kind": kind, "message": message, "data": data}).encode())
        return True

    def events(self, after: str = "") -> list[Event]:
        if self._views is None:
            return self._read_events(after)
        return [e for e in self._viewed("events", self._read_events) if e.name > after]

    def _read_events(self, after: str = "") -> list[Event]:
        names = sorted(info.key for info in self.store.objects.list("events/") if info.key > after)
        found = []
        for name in names:
            record = self.store.get_json(name)
            if record:
                found.append(Event(name, record["time"], record["kind"], record["message"], record.get("data")))
        return found

    def fired(self) -> set[str]:
        """The alert keys already fired for this job (by any instance): its claims, in one listing (an alert's
        key is already a valid claim name, so the names are the keys)."""
        return {info.key[len("claims/"):] for info in self.store.objects.list("claims/")}

    # -- logs --------------------------------------------------------------------------------
    def put_log(self, instance_id: str, path: Path) -> None:
        if Path(path).exists():
            self.store.put_file(f"logs/{instance_id}.log", path)

    def log_tail(self, lines: int) -> str:
        """The last lines of the agent's log on the newest instance that wrote one."""
        logs = sorted(self.store.objects.list("logs/"), key=lambda info: info.modified)
        if not logs:
            return "(no agent log in the bucket yet)"
        got = self.store.objects.get(logs[-1].key)
        text = got[0].decode(errors="replace") if got else ""
        return "\n".join(text.splitlines()[-lines:])


def _key(text: str) -> str:
    """A claim key as an object name: no slashes, nothing a bucket might refuse."""
    return "".join(c if c.isalnum() or c in "-_.@:" else "_" for c in text)


def spend(bucket: JobBucket, now: float) -> float:
    """What the job has cost so far: every instance at its launch price from its launch to its end (or its
    presumed end), with the billing minimum, plus the bucket's charges. The one function the agent, status
    and the estimate-vs-actual report use."""
    from nascloud.budget import ledger_total

    minimum = bucket.bundle().billing_minimum_seconds
    return ledger_total(bucket.billed(now), now, minimum) + bucket.charges_usd()


def money(bucket: JobBucket, now: float):
    """The budget's view of the job now (nascloud.budget.evaluate over the bucket's ledger): spend, burn,
    projection, P(over), the alerts due and the stop decision. Deciding is the instance's; observers only show.
    The cap leaves room for what a stop still bills: the final snapshot, the group to 0, the power-off."""
    from nascloud.budget import evaluate

    config, progress = budget_view(bucket.bundle(), bucket.budget(), bucket.progress())
    return evaluate(bucket.billed(now), progress, config, bucket.fired(), now, extra_usd=bucket.charges_usd())


def budget_view(bundle, budget: dict, progress: dict):
    """(BudgetConfig, Progress): a job's money settings under a budget record (the one in force, one `resume`
    is about to write, or a launch's), and its progress record as the budget reads it."""
    from nascloud.budget import BudgetConfig, Progress

    shutdown = os.environ.get("NASCLOUD_SHUTDOWN_SECONDS")  # unset: the bundle's cloud's
    config = BudgetConfig.for_bundle(bundle, budget, tick_seconds=heartbeat_seconds(),
                                     shutdown_seconds=float(shutdown) if shutdown else None)
    return config, Progress.of(progress, bundle.spec.search.epochs, bundle.spec.search.job_trials)

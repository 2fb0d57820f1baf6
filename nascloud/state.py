"""The orchestrator's memory: one SQLite file under NASCLOUD_HOME (jobs, instances, charges, events).

The instances and charges tables are the cost ledger: each instance keeps the price at its launch and
the times the provider reported, so history is never re-priced; charges hold the bucket's storage and
requests. Every step writes its intent here before its side
effect, so a killed orchestrator, started again, knows what may be in flight and reconciles it
against the cloud's own tags.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from nascloud.errors import UsageError
from nascloud.paths import nascloud_home

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    job_url TEXT NOT NULL,
    bundle TEXT NOT NULL,           -- bundle/job.json as written to the bucket
    status TEXT NOT NULL,           -- launching | running | finished | stopped | budget | deadline | failed
    budget_usd REAL,
    max_hours REAL,
    estimate TEXT,                  -- the estimate made before launch (JSON), for estimate vs actual
    created_at REAL NOT NULL,
    ended_at REAL
);
CREATE TABLE IF NOT EXISTS instances (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    instance_id TEXT,               -- NULL while only the intent to launch is recorded
    cloud TEXT NOT NULL,
    region TEXT,
    zone TEXT,
    instance_type TEXT,
    spot INTEGER NOT NULL,
    price_per_hour REAL NOT NULL,   -- the price at launch; the ledger never re-prices
    launched_at REAL,
    ended_at REAL,
    end_reason TEXT,                -- preempted | finished | stopped | budget | lost | failed
    agent_started_at REAL,
    record TEXT                     -- the provider's Instance as JSON, to reach it again
);
CREATE TABLE IF NOT EXISTS charges (
    job_id TEXT NOT NULL,
    source TEXT NOT NULL,           -- what incurs it: storage, or requests:<the process that made them>
    usd REAL NOT NULL,              -- its running total, at the rates recorded at launch
    detail TEXT,                    -- the counts behind it (JSON)
    updated_at REAL NOT NULL,
    PRIMARY KEY (job_id, source)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
"""


@dataclass(frozen=True)
class JobRow:
    job_id: str
    name: str
    job_url: str
    bundle: dict
    status: str
    budget_usd: Optional[float]
    max_hours: Optional[float]
    estimate: Optional[dict]
    created_at: float
    ended_at: Optional[float]

    @property
    def finished(self) -> bool:
        return self.status in ("finished", "failed")


@dataclass(frozen=True)
class InstanceRow:
    seq: int
    job_id: str
    instance_id: Optional[str]
    cloud: str
    region: Optional[str]
    zone: Optional[str]
    instance_type: Optional[str]
    spot: bool
    price_per_hour: float
    launched_at: Optional[float]
    ended_at: Optional[float]
    end_reason: Optional[str]
    agent_started_at: Optional[float]
    record: Optional[dict]


@dataclass(frozen=True)
class Charge:
    job_id: str
    source: str
    usd: float
    detail: Optional[dict]
    updated_at: float


@dataclass(frozen=True)
class Event:
    seq: int
    job_id: str
    time: float
    kind: str
    message: str
    data: Optional[dict]


class State:
    def __init__(self, path: Optional[Path] = None):
        self.path = path or nascloud_home() / "state.db"
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # jobs -------------------------------------------------------------------------------------
    def add_job(self, job_id: str, name: str, job_url: str, bundle: dict, budget_usd, max_hours,
                estimate: Optional[dict], now: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,NULL)",
                (job_id, name, job_url, json.dumps(bundle), "launching", budget_usd, max_hours,
                 json.dumps(estimate) if estimate else None, now),
            )

    def job(self, job_id: str) -> JobRow:
        row = self.db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            row = self._job_by_prefix(job_id)
        return _job(row)

    def _job_by_prefix(self, name: str) -> sqlite3.Row:
        rows = self.db.execute(
            "SELECT * FROM jobs WHERE job_id LIKE ? OR name = ? ORDER BY created_at DESC",
            (name + "%", name)).fetchall()
        if len(rows) == 1 or (rows and all(r["name"] == name for r in rows)):
            return rows[0]  # a job name means its newest run
        known = ", ".join(r["job_id"] for r in self.db.execute(
            "SELECT job_id FROM jobs ORDER BY created_at DESC LIMIT 5")) or "none yet"
        if rows:
            raise UsageError(f"job {name!r} is ambiguous: it matches {', '.join(r['job_id'] for r in rows)}")
        raise UsageError(f"no job {name!r} in {self.path}; recent jobs: {known} (see `nascloud status`)")

    def jobs(self) -> list[JobRow]:
        return [_job(r) for r in self.db.execute("SELECT * FROM jobs ORDER BY created_at")]

    def set_job(self, job_id: str, **fields) -> None:
        if "bundle" in fields:
            fields["bundle"] = json.dumps(fields["bundle"])
        sets = ", ".join(f"{key} = ?" for key in fields)
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE job_id = ?", (*fields.values(), job_id))

    # instances (the ledger) -------------------------------------------------------------------
    def intend_instance(self, job_id: str, cloud: str, region, zone, instance_type, spot: bool,
                        price_per_hour: float) -> int:
        """Record the intent to launch, before the launch call."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO instances (job_id, cloud, region, zone, instance_type, spot, price_per_hour)"
                " VALUES (?,?,?,?,?,?,?)",
                (job_id, cloud, region, zone, instance_type, int(spot), price_per_hour))
            return cur.lastrowid

    def instance_launched(self, seq: int, instance_id: str, launched_at: float, zone, record: dict) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE instances SET instance_id = ?, launched_at = ?, zone = ?, record = ? WHERE seq = ?",
                (instance_id, launched_at, zone, json.dumps(record), seq))

    def agent_started(self, seq: int, now: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE instances SET agent_started_at = ? WHERE seq = ?", (now, seq))

    def instance_ended(self, seq: int, ended_at: float, reason: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE instances SET ended_at = ?, end_reason = ? WHERE seq = ? AND ended_at IS NULL",
                (ended_at, reason, seq))

    def forget_intent(self, seq: int) -> None:
        """An intent whose launch never created anything (it failed before the cloud had it)."""
        with self._tx() as db:
            db.execute("DELETE FROM instances WHERE seq = ? AND instance_id IS NULL", (seq,))

    def instances(self, job_id: str) -> list[InstanceRow]:
        return [_instance(r) for r in self.db.execute(
            "SELECT * FROM instances WHERE job_id = ? ORDER BY seq", (job_id,))]

    def open_instances(self, job_id: str) -> list[InstanceRow]:
        return [i for i in self.instances(job_id) if i.ended_at is None]

    # charges ----------------------------------------------------------------------------------
    def set_charge(self, job_id: str, source: str, usd: float, detail: Optional[dict], now: float) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO charges (job_id, source, usd, detail, updated_at) VALUES (?,?,?,?,?) "
                       "ON CONFLICT (job_id, source) DO UPDATE SET usd = excluded.usd, detail = excluded.detail, "
                       "updated_at = excluded.updated_at WHERE excluded.usd >= charges.usd",  # totals only grow
                       (job_id, source, usd, json.dumps(detail), now))

    def charges(self, job_id: str) -> list[Charge]:
        return [Charge(r["job_id"], r["source"], r["usd"], _loads(r["detail"]), r["updated_at"])
                for r in self.db.execute("SELECT * FROM charges WHERE job_id = ? ORDER BY source", (job_id,))]

    # events -----------------------------------------------------------------------------------
    def add_event(self, job_id: str, kind: str, message: str, now: float, data: Optional[dict] = None) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO events (job_id, time, kind, message, data) VALUES (?,?,?,?,?)",
                       (job_id, now, kind, message, json.dumps(data) if data else None))

    def events(self, job_id: str, kind: Optional[str] = None, after: int = 0) -> list[Event]:
        query = "SELECT * FROM events WHERE job_id = ? AND seq > ?"
        args: list = [job_id, after]
        if kind:
            query += " AND kind = ?"
            args.append(kind)
        return [_event(r) for r in self.db.execute(query + " ORDER BY seq", args)]

    def close(self) -> None:
        self.db.close()


def _loads(value):
    return json.loads(value) if value else None


def _job(row: sqlite3.Row) -> JobRow:
    return JobRow(row["job_id"], row["name"], row["job_url"], json.loads(row["bundle"]), row["status"],
                  row["budget_usd"], row["max_hours"], _loads(row["estimate"]), row["created_at"],
                  row["ended_at"])


def _instance(row: sqlite3.Row) -> InstanceRow:
    return InstanceRow(row["seq"], row["job_id"], row["instance_id"], row["cloud"], row["region"],
                       row["zone"], row["instance_type"], bool(row["spot"]), row["price_per_hour"],
                       row["launched_at"], row["ended_at"], row["end_reason"], row["agent_started_at"],
                       _loads(row["record"]))


def _event(row: sqlite3.Row) -> Event:
    return Event(row["seq"], row["job_id"], row["time"], row["kind"], row["message"], _loads(row["data"]))


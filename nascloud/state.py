"""The laptop's memory: which jobs were launched (or looked at) from here, and where each one's bucket
prefix is. Only a cache: the truth of every job (ledger, events, progress, exit record) is in its bucket,
so a job is also reachable by its bucket URL from a machine that never saw it."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from nascloud.errors import UsageError
from nascloud.hints import command
from nascloud.paths import nascloud_home

SCHEMA = """
CREATE TABLE IF NOT EXISTS known_jobs (
    job_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    job_url TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class KnownJob:
    job_id: str
    name: str
    job_url: str
    created_at: float


class JobCache:
    def __init__(self, path: Optional[Path] = None):
        self.path = path or nascloud_home() / "jobs.db"
        self.path.touch(mode=0o600)  # the job URLs are the user's alone (sqlite's journals copy its mode)
        self.path.chmod(0o600)  # one an older nascloud made 0644
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)

    def remember(self, job_id: str, name: str, job_url: str, created_at: float) -> None:
        self.db.execute("INSERT OR REPLACE INTO known_jobs VALUES (?, ?, ?, ?)", (job_id, name, job_url, created_at))

    def forget(self, job_id: str) -> None:
        self.db.execute("DELETE FROM known_jobs WHERE job_id = ?", (job_id,))

    def jobs(self) -> list[KnownJob]:
        return [KnownJob(**dict(r)) for r in self.db.execute("SELECT * FROM known_jobs ORDER BY created_at")]

    def find(self, ref: str) -> KnownJob:
        """An exact job id; a job name (its newest run); or the start of one id or name, taken literally."""
        if not ref.strip():
            raise UsageError(f"give a job id or name (see {command('status')}), or the job's bucket URL")
        jobs = self.jobs()
        exact = [j for j in jobs if j.job_id == ref] or [j for j in jobs if j.name == ref]
        matches = exact or [j for j in jobs if j.job_id.startswith(ref) or j.name.startswith(ref)]
        if matches and len({j.name for j in matches}) == 1:
            return matches[-1]  # one job, or the runs of one name: its newest
        if matches:
            raise UsageError(f"job {ref!r} is ambiguous: it matches {', '.join(j.job_id for j in matches)}")
        recent = ", ".join(j.job_id for j in jobs[-5:]) or "none yet"
        raise UsageError(f"no job {ref!r} launched from this machine (recent: {recent}); give its bucket URL, "
                         "e.g. file:///path/bucket/JOB-ID, s3://bucket/prefix/JOB-ID")

    def close(self) -> None:
        self.db.close()

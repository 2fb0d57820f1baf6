"""A job's seeds (search.seeds): the same search once per seed, one after another on the instance, each its own
KerasTuner project; when each seed ran, what it cost, and how far apart the seeds ended.

Trials are numbered through the job: trial k of the n-th seed (both from 1) is job trial (n - 1) × max_trials + k,
so every screen names a trial by one number and the seed is a column beside it.

The record (seeds.json in the snapshot directory, restored with the projects it describes) holds each seed's
spans of wall time: one per agent run that worked on it, closed at the snapshot that holds it; a seed is finished
once the snapshot after its search's end is committed. Time the record does not hold (boot, restore, the data,
the export, work a kill lost since the last snapshot, the billing minimum, the bucket) is the job's, shared out
among the seeds in proportion to each seed's own cost.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Optional

RECORD = "seeds.json"


def project_parent(snapshot_dir: Path, seed: int) -> Path:
    """The folder a seed's KerasTuner project lives in (seed-<seed>/search)."""
    return snapshot_dir / f"seed-{seed}"


def job_trial_id(seed_index: int, trial_id: str, max_trials: int, seeds: int) -> str:
    """The job-wide id of a seed's trial (0-based, padded like KerasTuner's so names sort as numbers)."""
    return f"{seed_index * max_trials + int(trial_id):0{len(str(max_trials * seeds))}d}"


class SeedRecord:
    """The spans each seed's search ran, kept in the snapshot directory."""

    def __init__(self, snapshot_dir: Path, seeds: list[int]):
        self.path = snapshot_dir / RECORD
        try:
            saved = json.loads(self.path.read_text())["seeds"]
        except (OSError, ValueError, KeyError):
            saved = []
        known = {row["seed"]: row for row in saved}
        self.rows = [known.get(seed) or {"seed": seed, "spans": [], "finished": False} for seed in seeds]
        self.current: Optional[dict] = None

    def row(self, seed: int) -> dict:
        return next(row for row in self.rows if row["seed"] == seed)

    def begin(self, seed: int) -> None:
        """This agent run starts (or resumes) `seed`'s search: a new span."""
        self.current = self.row(seed)
        now = time.time()
        self.current["spans"].append([now, now])

    def touch(self, finished: bool = False) -> None:
        """Before a snapshot: the running seed's span reaches now (the snapshot holds what ran until it)."""
        if self.current is None:
            return
        self.current["spans"][-1][1] = time.time()
        self.current["finished"] = self.current["finished"] or finished
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"seeds": self.rows}))
        if finished:
            self.current = None

    def finished(self, seed: int) -> bool:
        return self.row(seed)["finished"]


def _span_cost(span: list[float], ledger: list, now: float) -> float:
    """What the instances running during `span` were billed for it, each at its own price."""
    start, end = span
    usd = 0.0
    for entry in ledger:
        billed = entry.billed(now)
        overlap = min(end, billed.ended_at or now) - max(start, billed.launched_at)
        usd += billed.price_per_hour * max(0.0, overlap) / 3600
    return usd


def spread(values: list[float]) -> Optional[dict]:
    """Mean, spread (max - min) and sample standard deviation (n - 1; 0 for one value)."""
    if not values:
        return None
    return {"mean": statistics.fmean(values), "spread": max(values) - min(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def report(record: SeedRecord, results: list[dict], ledger: list, total_usd: float, now: float) -> dict:
    """The leaderboard's "seeds": per seed its best score, test accuracy, seconds and cost; their mean, spread and
    standard deviation; and how the job's ledger (`total_usd` at `now`) splits among them.

    `results`, one per seed in order: {"best_score", "best_trial_id", "test_accuracy", "trials"}."""
    own = [sum(_span_cost(span, ledger, now) for span in row["spans"]) for row in record.rows]
    seconds = [sum(end - start for start, end in row["spans"]) for row in record.rows]
    weights = own if sum(own) > 0 else seconds if sum(seconds) > 0 else [1.0] * len(own)
    outside = total_usd - sum(own)
    runs = []
    for row, result, own_usd, secs, weight in zip(record.rows, results, own, seconds, weights):
        share = outside * weight / sum(weights)
        spans = row["spans"]
        runs.append({"seed": row["seed"], **result, "seconds": round(secs, 3),
                     "started_at": spans[0][0] if spans else None, "ended_at": spans[-1][1] if spans else None,
                     "own_usd": own_usd, "shared_usd": share, "cost_usd": own_usd + share})
    return {
        "runs": runs,
        "best_score": spread([r["best_score"] for r in results if r["best_score"] is not None]),
        "test_accuracy": spread([r["test_accuracy"] for r in results if r["test_accuracy"] is not None]),
        "ledger": {"total_usd": total_usd, "at": now, "seeds_own_usd": sum(own), "outside_seeds_usd": outside,
                   "outside_seeds_shared": "in proportion to each seed's own cost"},
    }

"""How often an estimate made from the job history's records covers the next run: one small local job run K
times in a row, each launched with the estimate of the records before it.

    .venv/bin/python benchmarks/bench_history_coverage.py [--runs 5] [--price 36] [--trials 20] [--epochs 16]

In a temporary NASCLOUD_HOME with a file:// bucket: one `nascloud calibrate` (the first run's estimate rests
on it), then the same digits job launched K times (K >= 5) with `nascloud launch --price-per-hour P --detach`,
one after another; after each, `nascloud status` copies its history into the cache (as any observer command
does), so the next launch estimates from every record before it. For each run: the records its estimate
rests on, the launch estimate's P50 and P90 (read from the bucket's bundle) against the actual spend and
wall time (the job's history.json), and whether the P90 covered each. Goal: the P90 covering at least 90 %
of the runs estimated from at least one record. Prints figures only, with the machine's load (the cores
are shared: a run slowed by other work is a miss the spread must allow for).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_estimate_accuracy import ENV, job_file, nascloud  # noqa: E402
from benchmarks.bench_recovery import wait_for  # noqa: E402


def run(root: Path, price: float, trials: int, epochs: int) -> dict:
    from nascloud.jobbucket import JobBucket

    out = nascloud("launch", str(job_file(root, trials, epochs, None)), "--price-per-hour", str(price), "--detach")
    job_id = out.split()[1].rstrip(":")
    bucket = JobBucket.open(f"file://{root / 'bucket'}/{job_id}")
    estimate = bucket.bundle().estimate
    history = wait_for(lambda: bucket.store.get_json("history.json"), 1200, f"job {job_id}'s history", 1.0)
    nascloud("status", bucket.url, "--json")  # an observer command: copies the history into the cache
    cost, wall = estimate["total_usd"], estimate["wall_hours"]
    return {"job_id": job_id, "records": estimate["workload"].get("history_records", 0),
            "job_cv": estimate["workload"]["terms"]["job_cv"]["value"],
            "cost_p50": cost["p50"], "cost_p90": cost["p90"], "actual_usd": history["spend_usd"],
            "wall_p50": wall["p50"] * 3600, "wall_p90": wall["p90"] * 3600, "actual_s": history["wall_seconds"],
            "load_during": history["host_load"]["load_average"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="K, the runs of the one job (at least 5)")
    parser.add_argument("--price", type=float, default=36.0, help="the rehearsal's $/h")
    # About 80 s a run on this 2-core machine: past the local billing minute, so the cost varies with the time.
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=16)
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-coverage-") as scratch:
        root = Path(scratch)
        os.environ.update(ENV, NASCLOUD_HOME=str(root / "home"))
        began = time.monotonic()
        print(nascloud("calibrate", str(job_file(root, args.trials, args.epochs, None))).strip(), flush=True)
        for n in range(args.runs):
            row = run(root, args.price, args.trials, args.epochs)
            row["cost_ok"], row["wall_ok"] = row["cost_p90"] >= row["actual_usd"], row["wall_p90"] >= row["actual_s"]
            rows.append(row)
            print(f"  run {n + 1}: from {row['records']} record(s), spread {row['job_cv']:.2f}: "
                  f"est ${row['cost_p50']:.2f} (P90 ${row['cost_p90']:.2f}) vs ${row['actual_usd']:.2f}; "
                  f"{row['wall_p50']:.0f} s (P90 {row['wall_p90']:.0f}) vs {row['actual_s']:.0f} s; "
                  f"load {row['load_during']:.1f} over its last minute", flush=True)
        minutes = (time.monotonic() - began) / 60
    print(f"\nP90 coverage of the next run, one digits job {args.trials}x{args.epochs} on the local provider at "
          f"${args.price:g}/h (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {minutes:.0f} min)")
    print(f"{'run':<4}{'records':>8}{'spread':>7}{'P50 $':>8}{'P90 $':>7}{'actual $':>9}{'ok':>4}"
          f"{'P50 s':>7}{'P90 s':>7}{'actual s':>9}{'ok':>4}")
    for n, r in enumerate(rows, 1):
        print(f"{n:<4}{r['records']:>8}{r['job_cv']:>7.2f}{r['cost_p50']:>8.2f}{r['cost_p90']:>7.2f}"
              f"{r['actual_usd']:>9.2f}{'yes' if r['cost_ok'] else 'NO':>4}{r['wall_p50']:>7.0f}{r['wall_p90']:>7.0f}"
              f"{r['actual_s']:>9.0f}{'yes' if r['wall_ok'] else 'NO':>4}")
    later = [r for r in rows if r["records"]]
    checks = [r[k] for r in later for k in ("cost_ok", "wall_ok")]
    covered = sum(checks)
    print(f"from at least one record: the P90 covered {covered} of {len(checks)} "
          f"({covered / max(1, len(checks)):.0%}; cost {sum(r['cost_ok'] for r in later)} of {len(later)}, "
          f"wall {sum(r['wall_ok'] for r in later)} of {len(later)}); goal: >= 90 %")


if __name__ == "__main__":
    main()

"""How long `nascloud status` takes, and how many bucket requests it makes, for one job and for 20 jobs,
each read from its bucket (the laptop's SQLite only names them).

    .venv/bin/python benchmarks/bench_status.py [--jobs 20] [--runs 5]

Runs one real small digits search to its end with `nascloud launch --detach` on the local provider
(a temporary NASCLOUD_HOME and file:// bucket), preempting it once with `launching.drill` so that its
ledger has two instances, as a spot job's does. That job's bucket prefix is then copied --jobs times under
new job ids (the bundle's job_id and job_url rewritten) and registered in a fresh NASCLOUD_HOME.

Times: the CLI as a user runs it (a new process; `python -c pass` and `nascloud --help` as baselines for
the interpreter and the CLI's imports), and nascloud.observer.summary in this process. Requests: what the
job's store counted (store.requests: class A lists and writes, class B reads), and which objects were read,
since on S3/GCS each request is a round trip and is billed. On file:// a request costs microseconds, so
the times here are nascloud's own overhead; multiply the request counts by a cloud's latency for the rest.
Prints figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_recovery import end_groups, wait_for  # noqa: E402

JOB = {
    "name": "bench-status",
    "search": {"data": "sklearn:digits", "max_trials": 3, "epochs": 4,
               "space": {"block_type": ["vanilla"], "num_blocks": [1, 1], "dropout": [0.0, 0.25]}},
    "compute": {"cloud": "local", "gpu": None},
    "checkpoint": {"interval_minutes": 0.01},
    "budget": {"usd": 5, "alerts": [0.05, 0.1, 0.25]},
}
ENV = {"NASCLOUD_HEARTBEAT_SECONDS": "1", "NASCLOUD_NOTICE_POLL_SECONDS": "0.5", "NASCLOUD_SHUTDOWN_SECONDS": "5",
       "NASCLOUD_STOP_TIMEOUT": "120", "TF_CPP_MIN_LOG_LEVEL": "3"}


def nascloud(*args: str, home: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "nascloud", *args], capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL, env={**os.environ, "NASCLOUD_HOME": str(home)})
    if done.returncode != 0:
        raise SystemExit(f"nascloud {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done


def finished_job(root: Path) -> str:
    """One real search run to its end, preempted once while it trains; its bucket prefix URL."""
    from nascloud.jobbucket import JobBucket
    from nascloud.launching import drill

    job_file = root / "job.yaml"
    job_file.write_text(json.dumps({**JOB, "checkpoint": {**JOB["checkpoint"], "bucket": f"file://{root / 'bucket'}"}}))
    # A rehearsal price, so the budget's alerts fire and the ledger bills, as on a cloud.
    launched = nascloud("launch", str(job_file), "--detach", "--price-per-hour", "36", "--force", home=root / "home")
    bucket = JobBucket.open(f"file://{root / 'bucket'}/{launched.stdout.split()[1].rstrip(':')}")
    try:
        wait_for(lambda: bucket.progress().get("trials_done", 0) >= 1 and bucket.heartbeat().get("phase") == "searching",
                 600, "the second trial")
        drill(bucket, timeout_seconds=600)
        wait_for(lambda: (bucket.exit_record() or {}).get("status") == "finished", 900, "the search to finish")
    finally:
        end_groups(bucket)
    nascloud("status", bucket.url, home=root / "home")  # the observer tidies the ended group away, as a user's would
    return bucket.url


def copies(url: str, n: int, home: Path) -> list[str]:
    """The finished job's prefix copied n times under new ids, each known to `home`'s job cache."""
    from nascloud.state import JobCache

    source = Path(url.removeprefix("file://"))
    bundle = json.loads((source / "bundle" / "job.json").read_text())
    cache = JobCache(home / "jobs.db")
    urls = []
    for i in range(n):
        job_id = f"{bundle['job_id']}-{i:02d}"
        target = source.parent / job_id
        shutil.copytree(source, target)
        (target / "bundle" / "job.json").write_text(json.dumps({**bundle, "job_id": job_id,
                                                                "job_url": f"file://{target}"}))
        cache.remember(job_id, bundle["spec"]["name"], f"file://{target}", bundle["created_at"] + i)
        urls.append(f"file://{target}")
    cache.close()
    return urls


class Reads:
    """Passes every call through to the bucket's object store, noting each read and list by prefix."""

    def __init__(self, objects):
        self._objects, self.seen = objects, Counter()

    def __getattr__(self, name: str):
        method = getattr(self._objects, name)
        if name not in ("get", "list", "download"):
            return method

        def noted(key, *args, **kwargs):
            self.seen[f"{name} {key.split('/')[0] + '/' if '/' in key else key}"] += 1
            return method(key, *args, **kwargs)

        return noted


def one_summary(url: str) -> tuple[float, object, Counter]:
    from nascloud.jobbucket import JobBucket
    from nascloud.observer import summary

    start = time.perf_counter()
    bucket = JobBucket.open(url)
    reads = bucket.store.objects._objects = Reads(bucket.store.objects._objects)
    summary(bucket)
    return time.perf_counter() - start, bucket.store.requests, reads.seen


def timed(argv: list[str], runs: int, home: Path) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, stdin=subprocess.DEVNULL,
                       env={**os.environ, "NASCLOUD_HOME": str(home)})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-status-") as scratch:
        root = Path(scratch)
        os.environ.update(ENV)
        url = finished_job(root)
        elsewhere = root / "elsewhere"
        elsewhere.mkdir()
        os.environ["NASCLOUD_HOME"] = str(elsewhere)  # this process reads the copies as a fresh machine would
        urls = copies(url, args.jobs, elsewhere)
        prefix = Path(url.removeprefix("file://"))
        objects = Counter(p.relative_to(prefix).parts[0] + ("/" if p.parent != prefix else "")
                          for p in prefix.rglob("*") if p.is_file() and not p.name.startswith("."))
        shown = json.loads(nascloud("status", urls[0], "--json", home=elsewhere).stdout)
        assert shown["status"] == "finished", shown["status"]

        cli = [sys.executable, "-m", "nascloud"]
        rows = {
            "python -c pass (interpreter start)": timed([sys.executable, "-c", "pass"], args.runs, elsewhere),
            "nascloud --help (the CLI's imports)": timed([*cli, "--help"], args.runs, elsewhere),
            "nascloud status URL --json (1 job)": timed([*cli, "status", urls[0], "--json"], args.runs, elsewhere),
            f"nascloud status ({args.jobs} jobs, table)": timed([*cli, "status"], args.runs, elsewhere),
            f"nascloud status --json ({args.jobs} jobs)": timed([*cli, "status", "--json"], args.runs, elsewhere),
        }
        one_summary(urls[0])  # imports and caches warm, as in a running `watch`
        single = [one_summary(urls[0]) for _ in range(args.runs)]
        everyone = []
        for _ in range(args.runs):
            start = time.perf_counter()
            results = [one_summary(u) for u in urls]
            everyone.append((time.perf_counter() - start, results))

    print(f"`nascloud status` on the local provider, file:// buckets; the job: {shown['progress']['trials_done']} "
          f"trials, {len(shown['instances'])} instances (1 preemption), {len(shown['alerts'])} alerts; its prefix "
          "holds " + ", ".join(f"{n} {k}" for k, n in sorted(objects.items())))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; medians of {args.runs} runs\n")
    print(f"{'command (a new process)':<44} {'median s':>9}")
    for name, seconds in rows.items():
        print(f"{name:<44} {seconds:>9.3f}")
    cli_one, cli_all = rows["nascloud status URL --json (1 job)"], rows[f"nascloud status --json ({args.jobs} jobs)"]
    print(f"per extra job (CLI): {(cli_all - cli_one) / (args.jobs - 1) * 1000:.1f} ms; "
          f"{args.jobs} jobs / 1 job = {cli_all / cli_one:.2f}x\n")

    one = statistics.median(t for t, _, _ in single)
    many = statistics.median(t for t, _ in everyone)
    _, requests, reads = single[0]
    print(f"{'nascloud.observer.summary in-process':<44} {'median ms':>9} {'class A':>8} {'class B':>8}")
    print(f"{'1 job':<44} {one * 1000:>9.1f} {requests.class_a:>8} {requests.class_b:>8}")
    total_a = sum(r.class_a for _, r, _ in everyone[0][1])
    total_b = sum(r.class_b for _, r, _ in everyone[0][1])
    print(f"{f'{args.jobs} jobs (every job from its bucket)':<44} {many * 1000:>9.1f} {total_a:>8} {total_b:>8}")
    print(f"{'per job':<44} {many / args.jobs * 1000:>9.1f} {total_a / args.jobs:>8.0f} {total_b / args.jobs:>8.0f}")
    print("\nrequests of one job's summary, by call and prefix: " +
          ", ".join(f"{k} {n}" for k, n in sorted(reads.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()

"""Recovery time on the local provider: from a spot preemption to training again, with the laptop gone.

    .venv/bin/python benchmarks/bench_recovery.py [--preemptions 3]

Launches one real digits search with `nascloud launch --detach` (a temporary NASCLOUD_HOME and file://
bucket), then preempts its host N times while it trains with `launching.drill` (what `nascloud drill` runs:
the provider's own preemption, every process of the host killed at once). The group's supervisor starts a
replacement whose bootstrap, governor and agent resume the search; nothing on this side helps.

Each recovery is timed from the bucket and the provider's own records, split into:
  replace   preemption (the host's end time) -> the replacement's launch (the group's supervisor)
  boot      launch -> the governor's ledger entry (bootstrap, Python, nascloud import, whoami)
  agent     ledger entry -> the agent's first heartbeat (reconcile, budget timer, the agent process starts)
  restore   first heartbeat -> heartbeat with phase "searching" (TensorFlow import, snapshot restore, data)
The heartbeat is read every 20 ms, so each moment is the writer's own timestamp, not the poll's. Prints
figures only; the machine's load average is printed with them (the host shares its cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

JOB = {
    "name": "bench-recovery",
    # Far more work than N recoveries take: the job is stopped at the end.
    "search": {"data": "sklearn:digits", "max_trials": 50, "epochs": 200,
               "space": {"block_type": ["vanilla"], "num_blocks": [1, 1], "dropout": [0.0, 0.25]}},
    "compute": {"cloud": "local", "gpu": None},
    "checkpoint": {"interval_minutes": 0.01},
    "budget": {"usd": 5},
}
# What the e2e tests use: a 1 s heartbeat (the recovery is read from it) and a short stop.
ENV = {"NASCLOUD_HEARTBEAT_SECONDS": "1", "NASCLOUD_NOTICE_POLL_SECONDS": "0.5", "NASCLOUD_SHUTDOWN_SECONDS": "5",
       "NASCLOUD_STOP_TIMEOUT": "120", "TF_CPP_MIN_LOG_LEVEL": "3"}
PARTS = ("replace", "boot", "agent", "restore")


def nascloud(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "nascloud", *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"nascloud {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


class Beats(threading.Thread):
    """Every distinct heartbeat the bucket held, read every 20 ms: (instance id, phase) -> its first time."""

    def __init__(self, bucket):
        super().__init__(daemon=True)
        self.bucket, self.first, self.done = bucket, {}, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            beat = self.bucket.heartbeat()
            if beat.get("instance_id"):
                key = (beat["instance_id"], beat.get("phase"))
                self.first[key] = min(self.first.get(key, beat["time"]), beat["time"])
            time.sleep(0.02)

    def first_beat(self, instance_id: str) -> float:
        return min(t for (i, _), t in self.first.items() if i == instance_id)


def end_groups(bucket) -> None:
    """Whatever happened, the job's hosts end before their folders go with the temporary directory."""
    from nascloud.observer import provisioner

    prov, job_id = provisioner(bucket), bucket.bundle().job_id
    for group in prov.groups(job_id):
        prov.resize(job_id, group.name, 0)
    wait_for(lambda: not any(g.live for g in prov.groups(job_id)), 60, "the job's hosts to end")


def hosts(bucket) -> dict:
    """The provider's own record of each host of the job: launch and end times."""
    from nascloud.observer import groups

    return {i.instance_id: i for g in groups(bucket) or () for i in g.instances}


def recover_once(bucket, beats: Beats) -> dict:
    from nascloud.launching import drill

    before = set(hosts(bucket))
    (victim,) = [i for i in hosts(bucket).values() if i.state.value == "running"]
    drilled = drill(bucket, timeout_seconds=600)
    new = wait_for(lambda: [i for i in hosts(bucket).values() if i.instance_id not in before], 30, "the replacement")[0]
    entry = wait_for(lambda: bucket.entry(new.instance_id), 30, "the replacement's ledger entry")
    searching = wait_for(lambda: beats.first.get((new.instance_id, "searching")), 30, "the searching heartbeat")
    preempted = hosts(bucket)[victim.instance_id].ended_at
    first = beats.first_beat(new.instance_id)
    return {"total": searching - preempted, "drill": drilled, "replace": new.launched_at - preempted,
            "boot": entry.booted_at - new.launched_at, "agent": first - entry.booted_at, "restore": searching - first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preemptions", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as scratch:
        root = Path(scratch)
        os.environ.update(ENV, NASCLOUD_HOME=str(root / "home"))  # for the CLI's processes and this one alike
        job_file = root / "job.yaml"
        job_file.write_text(json.dumps({**JOB, "checkpoint": {**JOB["checkpoint"], "bucket": f"file://{root / 'bucket'}"}}))
        from nascloud.jobbucket import JobBucket

        started = time.time()
        job_id = nascloud("launch", str(job_file), "--detach").split()[1].rstrip(":")
        bucket = JobBucket.open(f"file://{root / 'bucket'}/{job_id}")
        beats = Beats(bucket)
        beats.start()
        samples = []
        try:
            first_training = wait_for(lambda: min((t for (_, phase), t in beats.first.items() if phase == "searching"),
                                                  default=None), 600, "the first host to train") - started
            for _ in range(args.preemptions):
                # While it trains: after an epoch that the current host reported, not the moment it starts.
                training = max(t for (_, phase), t in beats.first.items() if phase == "searching")
                wait_for(lambda: bucket.progress().get("updated_at", 0) > training + 1, 300, "an epoch on the host")
                samples.append(recover_once(bucket, beats))
            nascloud("stop", bucket.url)
        finally:
            beats.done.set()
            end_groups(bucket)
    print(f"recovery on the local provider, digits search, NASCLOUD_HEARTBEAT_SECONDS=1, "
          f"{args.preemptions} preemptions while training (load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores); launch -> first training {first_training:.1f} s")
    print(f"{'':>9} {'total':>7} {'drill':>7}  " + " ".join(f"{p:>8}" for p in PARTS))
    for n, s in enumerate(samples, 1):
        print(f"{'#' + str(n):>9} {s['total']:>7.2f} {s['drill']:>7.2f}  " + " ".join(f"{s[p]:>8.2f}" for p in PARTS))
    print(f"{'median':>9} " + " ".join(f"{statistics.median(s[k] for s in samples):>7.2f}" for k in ("total", "drill"))
          + "  " + " ".join(f"{statistics.median(s[p] for s in samples):>8.2f}" for p in PARTS))
    print("seconds; total: preemption -> the replacement's agent trains again (heartbeat phase 'searching'); "
          "drill: what `nascloud drill` reports (0.5 s poll)")


if __name__ == "__main__":
    main()

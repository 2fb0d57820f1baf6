"""Recovery time on the local provider: from a spot preemption to training again.

    .venv/bin/python benchmarks/bench_recovery.py [--preemptions 3] [--default-poll-run]

Launches one real small digits search with `nascloud launch --detach` in a temporary NASCLOUD_HOME,
preempts its instance N times with the local provisioner's preempt() (every process killed at once,
as a reclaim), and times each recovery: preemption -> a heartbeat with phase "searching" from the new
instance in the bucket's agent/heartbeat.json. Split into the watch loop's part (noticing the loss and
launching the replacement: up to its launched_at) and the agent's start (bootstrap, SSH, TF import,
restoring the snapshot). With --default-poll-run, one more preemption with the default poll interval.
Prints figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nascloud.checkpoints import open_store  # noqa: E402
from nascloud.provisioners.local import LocalProvisioner  # noqa: E402

JOB = {
    "name": "bench-recovery",
    "search": {"data": "sklearn:digits", "max_trials": 50, "epochs": 200,
               "space": {"block_type": ["vanilla"], "num_blocks": [1, 1], "dropout": [0.0, 0.25]}},
    "compute": {"cloud": "local", "gpu": None},
    "checkpoint": {"interval_minutes": 0.01, "lease_minutes": 30},
    "budget": {"usd": 5},
}
FAST = {"NASCLOUD_POLL_SECONDS": "0.5", "NASCLOUD_HEARTBEAT_SECONDS": "1"}


def nascloud(env: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "nascloud", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"nascloud {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def recover_once(provisioner: LocalProvisioner, store, job_id: str) -> tuple[float, float]:
    """Preempt the running instance once; (seconds to training again, of which the agent's start)."""
    (instance,) = wait_for(lambda: provisioner.list_owned(job_id), 300, "a running instance")
    wait_for(lambda: (b := store.get_json("agent/heartbeat.json") or {}).get("instance_id") == instance.instance_id
             and b.get("phase") == "searching", 300, "the instance to train")
    preempted_at = time.time()
    provisioner.preempt(instance)
    (new,) = wait_for(lambda: [i for i in provisioner.list_owned(job_id) if i.instance_id != instance.instance_id],
                      300, "the replacement")
    beat = wait_for(lambda: (b := store.get_json("agent/heartbeat.json") or {}).get("instance_id") == new.instance_id
                    and b.get("phase") == "searching" and b, 300, "the replacement to train")
    return beat["time"] - preempted_at, beat["time"] - new.launched_at


def run_job(env: dict, work: Path, preemptions: int) -> list[tuple[float, float]]:
    job_file = work / "job.yaml"
    job_file.write_text(json.dumps({**JOB, "checkpoint": {**JOB["checkpoint"], "bucket": f"file://{work / 'bucket'}"}}))
    job_id = nascloud(env, "launch", str(job_file), "--detach").split()[1].rstrip(":")
    try:
        store = open_store(json.loads(nascloud(env, "status", job_id, "--json"))["job_url"])
        provisioner = LocalProvisioner(home=Path(env["NASCLOUD_HOME"]) / "local")
        return [recover_once(provisioner, store, job_id) for _ in range(preemptions)]
    finally:
        nascloud(env, "stop", job_id)


def show(label: str, runs: list[tuple[float, float]]) -> None:
    for total, agent in runs:
        print(f"  {label}: {total:5.1f} s (agent start {agent:4.1f} s, watch loop + launch {total - agent:4.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preemptions", type=int, default=3)
    parser.add_argument("--default-poll-run", action="store_true",
                        help="Also one preemption with the default poll interval (10 s).")
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in FAST} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as scratch:
        root = Path(scratch)
        (root / "fast").mkdir()
        fast = run_job(base | FAST | {"NASCLOUD_HOME": str(root / "fast" / "home")}, root / "fast",
                       args.preemptions)
        print(f"recovery on the local provider, digits search, NASCLOUD_POLL_SECONDS=0.5 "
              f"NASCLOUD_HEARTBEAT_SECONDS=1, {args.preemptions} preemptions:")
        show("preemption -> training", fast)
        print(f"  median {statistics.median(t for t, _ in fast):.1f} s, "
              f"of which the agent's start {statistics.median(a for _, a in fast):.1f} s")
        if args.default_poll_run:
            (root / "default").mkdir()
            # The poll interval is the default; the heartbeat stays at 1 s only so this measures its moment.
            default = run_job(base | {"NASCLOUD_HEARTBEAT_SECONDS": "1",
                                      "NASCLOUD_HOME": str(root / "default" / "home")}, root / "default", 1)
            print("with the default poll interval (10 s):")
            show("preemption -> training", default)


if __name__ == "__main__":
    main()

"""The agent on the digits search: time per trial, and the time and size of its snapshots.

    .venv/bin/python benchmarks/bench_agent.py [--trials 3] [--epochs 3] [--interval-minutes 0]

Runs the real agent loop in this process (file:// bucket in a temporary directory, a snapshot at
every epoch end with the default interval 0) and prints figures only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nascloud.agent.runner import Agent, AgentOptions, open_job  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--interval-minutes", type=float, default=0.0,
                        help="Epoch-end snapshot interval; 0 snapshots every epoch end.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as scratch:
        root = Path(scratch)
        job = root / "job.yaml"
        job.write_text(json.dumps({
            "name": "bench-digits",
            "search": {"data": "sklearn:digits", "max_trials": args.trials, "epochs": args.epochs,
                       "space": {"block_type": ["vanilla"], "num_blocks": [1, 1], "num_layers": [1, 2],
                                 "kernel_size": [3], "dropout": [0.0, 0.25]}},
            "compute": {"cloud": "local", "gpu": None},
            "checkpoint": {"bucket": f"file://{root / 'bucket'}", "interval_minutes": max(args.interval_minutes, 1e-9)}}))
        agent = Agent(open_job(str(job)), AgentOptions(str(job), work_dir=root / "work"))
        publishes = []
        publish = agent.store.publish

        def timed_publish(local_dir):
            snapshot_id = publish(local_dir)
            publishes.append(agent.store.last_publish)
            return snapshot_id

        agent.store.publish = timed_publish
        started = time.perf_counter()
        result = agent.run()
        wall = time.perf_counter() - started
        board = agent.store.get_json("results/leaderboard.json")
        sizes = [info.bytes for info in agent.store.list()]
    durations = [row["duration_seconds"] for row in board["trials"]]
    seconds = [p.seconds for p in publishes]
    uploaded = [p.uploaded_bytes for p in publishes]
    print(f"agent: {result.status}, {len(durations)} trials x {args.epochs} epochs in {wall:.1f} s wall "
          "(TensorFlow import, restore, search, export)")
    print(f"time per trial: median {statistics.median(durations):.2f} s, max {max(durations):.2f} s")
    print(f"snapshots: {len(publishes)}; publish time median {statistics.median(seconds) * 1000:.1f} ms, "
          f"max {max(seconds) * 1000:.1f} ms")
    print(f"uploaded per snapshot: median {statistics.median(uploaded) / 1e3:.1f} kB, "
          f"max {max(uploaded) / 1e3:.1f} kB; snapshot size (kept) {max(sizes) / 1e3:.1f} kB")
    print(f"best {board['objective']} {board['trials'][0]['score']:.4f}, test accuracy {board['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()

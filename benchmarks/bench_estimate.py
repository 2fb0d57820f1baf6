"""Median wall time of `nascloud estimate` and `nascloud prices` as a user runs them (new processes).

Run: .venv/bin/python benchmarks/bench_estimate.py [--runs N]
Prints figures only; the issue's target is "well under a second".
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "estimate --gpu T4 --hours 72": ["estimate", "--gpu", "T4", "--hours", "72"],
    "estimate (all offers, workload, budget, --json)": ["estimate", "--trials", "50", "--epochs", "20",
                                                        "--seconds-per-epoch", "60", "--budget", "50", "--json"],
    "plan --budget 800": ["plan", "--trials", "50", "--epochs", "20", "--seconds-per-epoch", "60", "--budget", "800"],
    "prices": ["prices"],
    "prices --json": ["prices", "--json"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    nascloud = shutil.which("nascloud", path=str(Path(sys.executable).parent)) or "nascloud"
    baseline = [sys.executable, "-c", "pass"]
    print(f"{'command':<50} {'median s':>9} {'min s':>7}  ({args.runs} runs each)")
    for name, argv in {"python -c pass (interpreter start)": None, **COMMANDS}.items():
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run(baseline if argv is None else [nascloud, *argv], check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        print(f"{name:<50} {statistics.median(times):>9.3f} {min(times):>7.3f}")


if __name__ == "__main__":
    main()

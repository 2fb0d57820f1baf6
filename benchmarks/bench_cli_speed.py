"""How long `nascloud estimate` takes beside importing its own light dependencies, measured side by side in
one run (new processes, interleaved so that a busy machine slows both alike), and where the time goes.

Run: .venv/bin/python benchmarks/bench_cli_speed.py [--runs N]
Prints the medians of wall and CPU time, their ratios (issue 15's target: at most 1.5), and the import profile
of one estimate (`python -X importtime`): self time by top-level package, and nascloud's own modules.

Every process runs with Python's bytecode cache on, in a temporary PYTHONPYCACHEPREFIX: an installed
nascloud has its .pyc files as its dependencies do, but a shell with PYTHONDONTWRITEBYTECODE=1 (some CI and
sandboxes) would otherwise compile nascloud's own sources on every run (~15 ms) and never the light imports'.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIGHT = "import typer, rich, rich.table, pydantic, numpy, yaml"
ESTIMATES = {
    "estimate --gpu T4 --hours 72": ["estimate", "--gpu", "T4", "--hours", "72"],
    "estimate examples/digits-aws-t4-spot.yaml": ["estimate", str(ROOT / "examples" / "digits-aws-t4-spot.yaml")],
}


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def seconds(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one run. On a machine others share, wall time also counts the
    waits for a core; the CPU time is the work itself, so its ratio holds still under load."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, cwd=ROOT, env=ENV)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def profile(argv: list[str]) -> tuple[collections.Counter, collections.Counter]:
    """Self time (ms) of every module one run imports, summed by top-level package, and nascloud's modules."""
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], check=True, capture_output=True, text=True,
                          cwd=ROOT, env=ENV)
    packages, ours = collections.Counter(), collections.Counter()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = line.split(":", 1)[1].split("|")
        name = name.strip()
        packages[name.split(".")[0]] += int(self_us) / 1000
        if name.startswith("nascloud"):
            ours[name] += int(self_us) / 1000
    return packages, ours


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    ENV["PYTHONPYCACHEPREFIX"] = cache = tempfile.mkdtemp(prefix="nascloud-bench-pyc-")
    atexit.register(shutil.rmtree, cache, True)
    nascloud = shutil.which("nascloud", path=str(Path(sys.executable).parent)) or "nascloud"
    light = [sys.executable, "-c", LIGHT]
    times: dict[str, list[tuple[float, float]]] = {"light imports": [], **{name: [] for name in ESTIMATES}}
    for argv in (light, *([nascloud, *a] for a in ESTIMATES.values())):  # warm the disk and bytecode caches once
        seconds(argv)
    for _ in range(args.runs):
        times["light imports"].append(seconds(light))
        for name, argv in ESTIMATES.items():
            times[name].append(seconds([nascloud, *argv]))
    medians = {name: [statistics.median(run[i] for run in measured) for i in (0, 1)] for name, measured in times.items()}
    wall, cpu = medians["light imports"]
    print(f"{'':<44} {'wall s':>7} {'ratio':>6} {'CPU s':>7} {'ratio':>6}  ({args.runs} interleaved runs, medians; "
          f"light: python -c \"{LIGHT}\")")
    for name, (w, c) in medians.items():
        print(f"{name:<44} {w:>7.3f} {w / wall:>6.2f} {c:>7.3f} {c / cpu:>6.2f}")
    print(f"load average over the last minute: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    packages, ours = profile(["-m", "nascloud", *ESTIMATES["estimate --gpu T4 --hours 72"]])
    light_packages, _ = profile(["-c", LIGHT])
    print("\nimport profile of `nascloud estimate --gpu T4 --hours 72` (self ms, -X importtime inflates them):")
    print(f"  {'package':<24} {'estimate':>9} {'light':>7}")
    for name, ms in packages.most_common(12):
        print(f"  {name:<24} {ms:>9.1f} {light_packages.get(name, 0.0):>7.1f}")
    print(f"  {'(all)':<24} {sum(packages.values()):>9.1f} {sum(light_packages.values()):>7.1f}")
    print("  nascloud's own modules: " + ", ".join(f"{name} {ms:.1f}" for name, ms in ours.most_common(8)))


if __name__ == "__main__":
    main()

"""How long `nascloud estimate` takes beside importing its own light dependencies, measured side by side in
one run (new processes, interleaved so that a busy machine slows both alike), and where the time goes.

Run: .venv/bin/python benchmarks/bench_cli_speed.py [--runs N]
Prints the medians of wall and CPU time, their ratios (issue 15's target: at most 1.5), and the import profile
of two estimates (`python -X importtime`): self time by top-level package, and nascloud's own modules.

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
# `import pydantic` loads a lazy shell; a job file is validated by a model, which loads pydantic's model and
# schema machinery. A second baseline shows the job-file form beside the light imports with that machinery.
LIGHT_WITH_A_MODEL = (LIGHT + "\nfrom pydantic import AfterValidator, BaseModel, Field, field_validator"
                      "\nclass Section(BaseModel):\n    x: int = Field(1, ge=1)\nSection(x=2)")
ESTIMATES = {
    "estimate --gpu T4 --hours 72": ["estimate", "--gpu", "T4", "--hours", "72"],
    "estimate --trials 20 --epochs 10 --seconds-per-epoch 3": ["estimate", "--trials", "20", "--epochs", "10",
                                                               "--seconds-per-epoch", "3"],
    "estimate examples/digits-aws-t4-spot.yaml": ["estimate", str(ROOT / "examples" / "digits-aws-t4-spot.yaml")],
}
JOB_FILE = "estimate examples/digits-aws-t4-spot.yaml"


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
    baselines = {"light imports": [sys.executable, "-c", LIGHT],
                 "light imports and one pydantic model": [sys.executable, "-c", LIGHT_WITH_A_MODEL]}
    runs = {**baselines, **{name: [nascloud, *argv] for name, argv in ESTIMATES.items()}}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for argv in runs.values():  # warm the disk and bytecode caches once
        seconds(argv)
    for _ in range(args.runs):
        for name, argv in runs.items():
            times[name].append(seconds(argv))
    medians = {name: [statistics.median(run[i] for run in measured) for i in (0, 1)] for name, measured in times.items()}
    wall, cpu = medians["light imports"]
    width = max(map(len, medians)) + 1
    print(f"{'':<{width}} {'wall s':>7} {'ratio':>6} {'CPU s':>7} {'ratio':>6}  ({args.runs} interleaved runs, "
          f"medians; light: python -c \"{LIGHT}\")")
    for name, (w, c) in medians.items():
        print(f"{name:<{width}} {w:>7.3f} {w / wall:>6.2f} {c:>7.3f} {c / cpu:>6.2f}")
    model_wall, model_cpu = medians["light imports and one pydantic model"]
    job_wall, job_cpu = medians[JOB_FILE]
    print(f"{JOB_FILE} against the light imports and one pydantic model: {job_wall / model_wall:.2f} "
          f"(CPU {job_cpu / model_cpu:.2f})")
    print(f"load average over the last minute: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    light_packages, _ = profile(["-c", LIGHT])
    for name in ("estimate --gpu T4 --hours 72", JOB_FILE):
        packages, ours = profile(["-m", "nascloud", *ESTIMATES[name]])
        print(f"\nimport profile of `nascloud {name}` (self ms, -X importtime inflates them):")
        print(f"  {'package':<24} {'estimate':>9} {'light':>7}")
        for package, ms in packages.most_common(12):
            print(f"  {package:<24} {ms:>9.1f} {light_packages.get(package, 0.0):>7.1f}")
        print(f"  {'(all)':<24} {sum(packages.values()):>9.1f} {sum(light_packages.values()):>7.1f}")
        print("  nascloud's own modules: " + ", ".join(f"{module} {ms:.1f}" for module, ms in ours.most_common(8)))


if __name__ == "__main__":
    main()

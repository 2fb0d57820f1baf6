"""Checkpoint store benchmark: bytes uploaded per snapshot against bytes changed, and time per snapshot,
on a synthetic KerasTuner project directory (hundreds of small JSON files plus a few MB of weights).

    .venv/bin/python benchmarks/bench_checkpoints.py [--backends file,s3,gs] [--snapshots 12]

s3 runs against moto and gs against fake-gcs-server, both on 127.0.0.1 (started here), so times are
the store's own overhead plus a local round trip per request, not a real cloud's latency.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nascloud.checkpoints import open_store  # noqa: E402
from tests.fixtures.servers import AWS_TEST_ENV, _fake_gcs_binary, free_port, wait_for_port  # noqa: E402

WEIGHTS = 1_500_000  # one trial's checkpoint.weights.h5: a small image model
TRIALS = 150


class Project:
    """A tuner project directory that evolves like a search: epochs rewrite the running trial's
    weights and trial.json; a trial's end writes a new trial and the oracle, and keeps only the best
    three trials' weights (KerasTuner keeps every trial.json)."""

    def __init__(self, root: Path, seed: int = 0):
        self.root, self.rng, self.trial = root, random.Random(seed), 0
        self.write("oracle.json", self.json_blob(5_000))
        self.write("tuner0.json", b'{"class": "AutoModel"}')
        for _ in range(TRIALS):
            self.new_trial()

    def json_blob(self, size: int) -> bytes:
        return json.dumps({"hp": [self.rng.random() for _ in range(size // 20)]}).encode()

    def write(self, rel: str, data: bytes) -> int:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return len(data)

    def new_trial(self) -> int:
        self.trial += 1
        t = f"trial_{self.trial:04d}"
        changed = self.write(f"{t}/trial.json", self.json_blob(1_500))
        changed += self.write(f"{t}/build_config.json", self.json_blob(300))
        changed += self.write(f"{t}/checkpoint.weights.h5", self.rng.randbytes(WEIGHTS))
        changed += self.write("oracle.json", self.json_blob(5_000))
        old = self.root / f"trial_{self.trial - 3:04d}" / "checkpoint.weights.h5"
        old.unlink(missing_ok=True)
        return changed

    def epoch(self) -> int:
        t = f"trial_{self.trial:04d}"
        return (self.write(f"{t}/checkpoint.weights.h5", self.rng.randbytes(WEIGHTS))
                + self.write(f"{t}/trial.json", self.json_blob(1_500)))

    def size(self) -> tuple[int, int]:
        files = [p for p in self.root.rglob("*") if p.is_file()]
        return len(files), sum(p.stat().st_size for p in files)


@contextmanager
def moto() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_TEST_ENV)
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    yield "s3://bench/runs/job-bench"
    server.stop()


@contextmanager
def fake_gcs() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([_fake_gcs_binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                             "-port", str(port), "-external-url", f"http://127.0.0.1:{port}", "-log-level", "warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket("bench")
    yield "gs://bench/runs/job-bench"
    proc.terminate()
    proc.wait(timeout=10)


def run(url: str, snapshots: int, scratch: Path) -> None:
    project = Project(scratch / "project")
    store = open_store(url, keep=3)
    files, total = project.size()
    store.publish(project.root)
    first = store.last_publish
    print(f"\n{url}: {files} files, {total / 1e6:.1f} MB; first snapshot uploaded "
          f"{first.uploaded_bytes / 1e6:.2f} MB in {first.seconds:.2f} s")
    print(f"{'snapshot':>8} {'kind':>10} {'changed':>11} {'uploaded':>11} {'ratio':>6} {'seconds':>8}")
    changed_sum = uploaded_sum = 0
    times = []
    for i in range(snapshots):
        kind = "trial end" if i % 3 == 2 else "epoch"
        changed = project.new_trial() if kind == "trial end" else project.epoch()
        store.publish(project.root)
        stats = store.last_publish
        changed_sum += changed
        uploaded_sum += stats.uploaded_bytes
        times.append(stats.seconds)
        print(f"{stats.snapshot_id:>8} {kind:>10} {changed:>11,} {stats.uploaded_bytes:>11,} "
              f"{stats.uploaded_bytes / changed:>6.3f} {stats.seconds:>8.3f}")
    store.publish(project.root)
    unchanged = store.last_publish.seconds
    restore_started = time.monotonic()
    open_store(url).restore(scratch / "restored")
    print(f"all: uploaded/changed = {uploaded_sum / changed_sum:.3f} (target <= 1.1); time per snapshot "
          f"mean {sum(times) / len(times):.3f} s, max {max(times):.3f} s; unchanged publish {unchanged * 1000:.1f} ms; "
          f"full restore {time.monotonic() - restore_started:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="file,s3,gs")
    parser.add_argument("--snapshots", type=int, default=12)
    args = parser.parse_args()
    with ExitStack() as stack:
        for backend in args.backends.split(","):
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            if backend == "file":
                url = f"file://{scratch}/bucket/job-bench"
            elif backend == "s3":
                url = stack.enter_context(moto())
            elif backend == "gs":
                url = stack.enter_context(fake_gcs())
            else:
                parser.error(f"unknown backend {backend!r}: use file, s3 or gs")
            run(url, args.snapshots, scratch)


if __name__ == "__main__":
    main()

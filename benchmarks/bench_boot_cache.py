"""The install step of a cloud boot, with and without the bucket's wheelhouse.

    .venv/bin/python benchmarks/bench_boot_cache.py [--extras search]

Runs the real bootstrap's GCP branch (provisioners/scripts/bootstrap.sh: curl with the metadata server's
token, a fresh venv, pip) twice, each in a fresh instance root with an empty pip cache, against a local
fake-gcs-server (filesystem backend) holding this repo's wheel:
  1. no wheelhouse in the bucket: pip resolves and downloads from the index (PyPI: needs the network),
     builds the wheelhouse, installs from it, and uploads it in the background;
  2. a replacement's boot: downloads the wheelhouse and installs with `pip install --no-index`.
Each is timed from the boot's start to "starting the instance's governor" (the governor then stops at
once: the metadata server answers only the token). Boot to training on a cloud is this plus what
benchmarks/bench_recovery.py measures after the install (governor, agent start, TensorFlow import,
restore). Prints figures only, with the machine's load average (it shares its cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nascloud.launching import build_wheel  # noqa: E402
from nascloud.provisioners.common import bootstrap_script  # noqa: E402
from tests.fixtures.hypervisor import MetadataServer, gce_token  # noqa: E402
from tests.fixtures.servers import _fake_gcs_binary, free_port, wait_for_port  # noqa: E402

JOB = "bench-1a2b3c"


def stamp(log: str, text: str) -> float | None:
    """The log line's own time (the bootstrap stamps each line to the second)."""
    from datetime import datetime

    line = next((line for line in log.splitlines() if text in line), None)
    return datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%SZ").timestamp() if line else None


def boot(folder: Path, number: int, endpoint: str, metadata: MetadataServer, extras: str) -> str:
    """One boot; returns its log once every process of it is done (the first boot's upload too)."""
    root = folder / f"root{number}"
    values = {"NASCLOUD_CLOUD": "gcp", "NASCLOUD_JOB_ID": JOB, "NASCLOUD_GROUP": "search",
              "NASCLOUD_JOB_URL": f"gs://bench/{JOB}", "NASCLOUD_ROOT": str(root), "NASCLOUD_GPU": "",
              "NASCLOUD_EXTRAS": extras}
    script = folder / "user-data"
    script.write_text(bootstrap_script(values))
    home = folder / f"home{number}"  # an empty pip cache, as on a new VM
    home.mkdir()
    subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=3600,
                   env={"PATH": os.environ["PATH"], "HOME": str(home), "NASCLOUD_POWEROFF_COMMAND": "true",
                        "NASCLOUD_GCE_METADATA_URL": metadata.url, "STORAGE_EMULATOR_HOST": endpoint})
    return (root / "bootstrap.log").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="search", help="the wheel's extras to install (default: search)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nascloud-bench-boot-") as tmp:
        folder = Path(tmp)
        port = free_port()
        (folder / "gcs" / "bench").mkdir(parents=True)
        server = subprocess.Popen([_fake_gcs_binary(), "-scheme", "http", "-backend", "filesystem", "-filesystem-root",
                                   str(folder / "gcs"), "-host", "127.0.0.1", "-port", str(port),
                                   "-external-url", f"http://127.0.0.1:{port}", "-log-level", "error"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port)
            endpoint = f"http://127.0.0.1:{port}"
            wheel = build_wheel()
            name = urllib.request.quote(f"{JOB}/bundle/{wheel.name}", safe="")
            urllib.request.urlopen(urllib.request.Request(
                f"{endpoint}/upload/storage/v1/b/bench/o?uploadType=media&name={name}", data=wheel.read_bytes(),
                method="POST", headers={"Content-Type": "application/octet-stream"})).read()
            results = {}
            with MetadataServer("gcp", gce_token()) as metadata:
                for number, what in ((1, "from the index, building the wheelhouse"),
                                     (2, "from the bucket's wheelhouse, --no-index")):
                    log = boot(folder, number, endpoint, metadata, args.extras)
                    start = stamp(log, "nascloud bootstrap: boot on")
                    ready = stamp(log, "starting the instance's governor")
                    results[what] = ready - start if ready else f"failed: {log.strip().splitlines()[-1]}"
                    uploaded = stamp(log, "wheelhouse uploaded")
                    if uploaded:
                        results["  the wheelhouse's upload, in the background"] = uploaded - ready
            listed = json.load(urllib.request.urlopen(
                f"{endpoint}/storage/v1/b/bench/o?prefix={JOB}/bundle/wheelhouse/"))
            sizes = [int(item["size"]) for item in listed.get("items", [])]
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(f"install of nascloud[{args.extras}] on a fresh venv (seconds to the governor's start):")
    for what, seconds in results.items():
        print(f"  {what:45} {seconds}")
    print(f"  wheelhouse object: {sum(sizes) / 1e6:.0f} MB; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()

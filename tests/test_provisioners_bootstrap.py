"""The instance bootstrap (one script for every provider): syntax, and each branch run for real in a scratch
folder with the machine's commands (aws, gcloud, nvidia-smi, apt-get, python3, sleep, shutdown) replaced by
PATH shims that record how they were called. It ends by becoming the governor (`nascloud instance`), or,
when the machine cannot run it, says why and powers off."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from nascloud.provisioners.common import bootstrap_script

WHEEL = "nascloud-0.1.0-py3-none-any.whl"
RECORD = 'echo "$(basename "$0") $*" >> "$SHIM_LOG"'
SHIMS = {
    # aws s3 cp --recursive ... SRC DEST/ and gcloud storage cp SRC DEST/: the last argument is the folder.
    "aws": f'touch "${{@: -1}}{WHEEL}"',
    "gcloud": f'touch "${{@: -1}}{WHEEL}"',
    "nvidia-smi": 'if [ -n "$NO_GPU" ]; then exit 9; fi; echo "GPU 0: Tesla T4 (UUID: GPU-0)"',
    "apt-get": "exit 100",  # never touch this machine's packages
    "shutdown": "exit 0",  # never power off this machine, whatever a branch does
    "sleep": "true",
    # python3 -m venv DIR: a venv whose pip and python only record how they were called (any other call,
    # such as the version check, just succeeds).
    "python3": 'if [ "$1 $2" = "-m venv" ] && [ -n "$3" ]; then mkdir -p "$3/bin"; for t in pip python; do '
               f"printf '#!/bin/bash\\n%s\\n' '{RECORD}' > \"$3/bin/$t\"; "
               'chmod +x "$3/bin/$t"; done; fi',
    # The local branch's Python (NASCLOUD_PYTHON): records its calls, and what the governor would be given.
    "local-python": 'if [ "$1" = -c ] && [ -n "$BROKEN_INSTALL" ]; then exit 1; fi\n'
                    'if [ "$1" = -m ]; then echo "governor sees $NASCLOUD_CLOUD $NASCLOUD_JOB_ID $NASCLOUD_GROUP '
                    '$NASCLOUD_JOB_URL $NASCLOUD_PYTHON" >> "$SHIM_LOG"; fi',
}
POWER_OFF = 'echo "powered off" >> "$SHIM_LOG"'


def test_the_script_parses():
    script = Path(__file__).parents[1] / "provisioners" / "scripts" / "bootstrap.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.fixture
def scratch(tmp_path):
    shims = tmp_path / "shims"
    shims.mkdir()
    for name, body in SHIMS.items():
        path = shims / name
        path.write_text(f"#!/bin/bash\n{RECORD}\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return tmp_path


def boot(scratch: Path, cloud: str, gpu: str = "", **env: str) -> tuple[subprocess.CompletedProcess, Path, list[str]]:
    """Run the bootstrap as the provider writes it for `cloud`; (result, the instance's root, the calls)."""
    root = scratch / "root"
    values = {"NASCLOUD_CLOUD": cloud, "NASCLOUD_JOB_ID": "digits-1a2b3c", "NASCLOUD_GROUP": "search",
              "NASCLOUD_JOB_URL": {"aws": "s3://bkt/jobs", "gcp": "gs://bkt", "local": f"file://{scratch}/b"}[cloud]
              + "/digits-1a2b3c", "NASCLOUD_REGION": "", "NASCLOUD_ROOT": str(root), "NASCLOUD_GPU": gpu}
    if cloud == "local":
        values["NASCLOUD_PYTHON"] = str(scratch / "shims" / "local-python")
    (scratch / "user-data").write_text(bootstrap_script(values))
    subprocess.run(["bash", "-n", str(scratch / "user-data")], check=True)
    done = subprocess.run(
        ["bash", str(scratch / "user-data")], capture_output=True, text=True, timeout=60,
        env={"PATH": f"{scratch / 'shims'}:{os.environ['PATH']}", "SHIM_LOG": str(scratch / "calls.log"),
             "NASCLOUD_POWEROFF_COMMAND": POWER_OFF, **env})
    log = scratch / "calls.log"
    return done, root, log.read_text().splitlines() if log.exists() else []


def test_the_local_branch_starts_the_governor_with_its_python_and_the_job_values(scratch):
    done, root, calls = boot(scratch, "local", gpu="T4", NO_GPU="1")  # no GPU here: the search runs on the CPU
    python = scratch / "shims" / "local-python"
    assert done.returncode == 0, (root / "bootstrap.log").read_text()
    assert calls[-2:] == ["local-python -m nascloud instance", f"governor sees local digits-1a2b3c search "
                                                                f"file://{scratch}/b/digits-1a2b3c {python}"]
    assert "local-python -c import nascloud" in calls
    assert not any(c.split()[0] in ("aws", "gcloud", "python3", "pip") for c in calls)  # nothing installed
    assert "runs on the CPU" in (root / "bootstrap.log").read_text() and not (root / "failed").exists()


def test_a_python_without_nascloud_fails_with_the_reason_and_powers_off(scratch):
    done, root, calls = boot(scratch, "local", BROKEN_INSTALL="1")
    assert done.returncode == 1
    assert (root / "failed").read_text().strip() == f"nascloud does not import with {scratch / 'shims' / 'local-python'}"
    assert calls[-1] == "powered off" and "local-python -m nascloud instance" not in calls


def test_the_aws_branch_checks_the_gpu_installs_this_wheel_and_becomes_the_governor(scratch):
    done, root, calls = boot(scratch, "aws", gpu="T4")
    assert done.returncode == 0, (root / "bootstrap.log").read_text()
    assert "nvidia-smi -L" in calls
    assert (f"aws s3 cp --recursive --exclude * --include *.whl s3://bkt/jobs/digits-1a2b3c/bundle/ {root}/bundle/"
            in calls)
    assert f"python3 -m venv {root}/venv" in calls
    assert f"pip install --quiet {root}/bundle/{WHEEL}[search]" in calls
    assert calls[-2:] == ["python -c import nascloud", "python -m nascloud instance"]  # the venv's own Python
    assert "powered off" not in calls and "shutdown -h now" not in calls


def test_the_gcp_branch_fetches_with_gcloud_and_a_missing_driver_fails_clearly_and_powers_off(scratch):
    done, root, calls = boot(scratch, "gcp", gpu="T4", NO_GPU="1")
    assert done.returncode == 1
    assert (root / "failed").read_text().strip() == (
        "no working NVIDIA driver for the T4 GPU (nvidia-smi failed); use a GPU image (compute.image)")
    assert calls.count("nvidia-smi -L") == 30  # it waited for the driver to load
    assert calls[-1] == "powered off" and not any("nascloud instance" in c for c in calls)

    (scratch / "calls.log").unlink()
    done, root, calls = boot(scratch, "gcp", gpu="T4")
    assert done.returncode == 0, (root / "bootstrap.log").read_text()
    assert f"gcloud storage cp gs://bkt/digits-1a2b3c/bundle/*.whl {root}/bundle/" in calls
    assert calls[-1] == "python -m nascloud instance"

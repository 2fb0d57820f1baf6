"""The instance bootstrap script: syntax, and its cloud branch run for real in a scratch directory with the
cloud's commands (aws, gcloud, nvidia-smi, systemctl, apt-get, python3, sleep) replaced by PATH shims."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from nascloud.provisioners.common import CLOUD_ROOT, cloud_bootstrap, ensure_key

WHEEL = "nascloud-0.1.0-py3-none-any.whl"
SHIMS = {
    # aws s3 cp --recursive ... SRC DEST/ and gcloud storage cp SRC DEST/: the last argument is the folder.
    "aws": f'touch "${{@: -1}}{WHEEL}"',
    "gcloud": f'touch "${{@: -1}}{WHEEL}"',
    "nvidia-smi": 'if [ -n "$NO_GPU" ]; then exit 9; fi; echo "GPU 0: Tesla T4 (UUID: GPU-0)"',
    "systemctl": "true",
    "apt-get": "exit 100",  # never touch this machine's packages
    "sleep": "true",
    # python3 -m venv DIR: a venv whose pip and python only record how they were called (any other call,
    # such as the version check, just succeeds).
    "python3": 'if [ "$1 $2" = "-m venv" ] && [ -n "$3" ]; then mkdir -p "$3/bin"; for t in pip python; do '
               'printf \'#!/bin/bash\\necho "$(basename $0) $*" >> "$SHIM_LOG"\\n\' > "$3/bin/$t"; '
               'chmod +x "$3/bin/$t"; done; fi',
}


def test_the_script_parses():
    script = Path(__file__).parents[1] / "provisioners" / "scripts" / "bootstrap.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.fixture
def scratch(tmp_path):
    shims = tmp_path / "shims"
    shims.mkdir()
    for name, body in SHIMS.items():
        path = shims / name
        path.write_text(f'#!/bin/bash\necho "{name} $*" >> "$SHIM_LOG"\n{body}\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "ssh").mkdir()
    return tmp_path


def run_cloud_branch(scratch: Path, cloud: str, **env: str) -> tuple[subprocess.CompletedProcess, Path, bytes]:
    host_key = ensure_key(scratch / "keys" / "host_ed25519", "host")
    script = cloud_bootstrap(cloud, "s3://bkt/jobs/digits-1a2b3c" if cloud == "aws" else "gs://bkt/digits-1a2b3c",
                             "T4", host_key)
    root = scratch / "root"
    script = script.replace(f"NASCLOUD_ROOT={CLOUD_ROOT}\n", f"NASCLOUD_ROOT={root}\n")
    (scratch / "user-data").write_text(script)
    subprocess.run(["bash", "-n", str(scratch / "user-data")], check=True)
    done = subprocess.run(
        ["bash", str(scratch / "user-data")], capture_output=True, text=True, timeout=60,
        env={"PATH": f"{scratch / 'shims'}:{os.environ['PATH']}", "SHIM_LOG": str(scratch / "calls.log"),
             "NASCLOUD_SSH_DIR": str(scratch / "ssh"), **env})
    return done, root, host_key.private_path.read_bytes()


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH's ssh-keygen")
def test_aws_branch_pins_the_host_key_checks_the_gpu_and_installs_this_wheel(scratch):
    done, root, private = run_cloud_branch(scratch, "aws")
    assert done.returncode == 0, (root / "bootstrap.log").read_text()
    assert (root / "ready").exists() and not (root / "failed").exists()
    key = scratch / "ssh" / "ssh_host_ed25519_key"
    assert key.read_bytes() == private and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (scratch / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2] == \
        (scratch / "keys" / "host_ed25519.pub").read_text().split()[:2]
    calls = (scratch / "calls.log").read_text().splitlines()
    assert calls[0] == "systemctl restart ssh"
    assert "nvidia-smi -L" in calls
    assert (f"aws s3 cp --recursive --exclude * --include *.whl s3://bkt/jobs/digits-1a2b3c/bundle/ {root}/bundle/"
            in calls)
    assert f"python3 -m venv {root}/venv" in calls
    assert f"pip install --quiet {root}/bundle/{WHEEL}[search]" in calls
    assert "python -c import nascloud" in calls

    again = subprocess.run(["bash", str(scratch / "user-data")], env={**os.environ, "SHIM_LOG": "/dev/null"})
    assert again.returncode == 0 and "already bootstrapped" in (root / "bootstrap.log").read_text()


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs OpenSSH's ssh-keygen")
def test_gcp_branch_fetches_with_gcloud_and_a_missing_driver_fails_clearly(scratch):
    done, root, _ = run_cloud_branch(scratch, "gcp", NO_GPU="1")
    assert done.returncode == 1
    assert (root / "failed").read_text().strip() == (
        "no working NVIDIA driver for the T4 GPU (nvidia-smi failed); use a GPU image (compute.image)")
    assert not (root / "ready").exists()
    assert (scratch / "calls.log").read_text().count("nvidia-smi -L") == 30  # waited for the driver to load

    (scratch / "calls.log").unlink()
    done, root, _ = run_cloud_branch(scratch, "gcp")
    assert done.returncode == 0
    assert f"gcloud storage cp gs://bkt/digits-1a2b3c/bundle/*.whl {root}/bundle/" in \
        (scratch / "calls.log").read_text().splitlines()

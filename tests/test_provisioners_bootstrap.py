"""The instance bootstrap (one script for every provider): syntax, and each branch run for real in a scratch
folder with the machine's commands (aws, nvidia-smi, apt-get, python3, sleep, shutdown) replaced by PATH
shims that record how they were called. GCP's branch reaches the bucket with curl and the metadata server's
token (no gcloud): against fake-gcs-server and the test hypervisor's metadata server. One boot installs for
real, twice: from the index (a local one) building the bucket's wheelhouse, then from that wheelhouse with
no index. It ends by becoming the governor (`nascloud instance`), or, when the machine cannot run it, says
why and powers off."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from nascloud.provisioners.common import bootstrap_script

WHEEL = "nascloud-0.1.0-py3-none-any.whl"
RECORD = 'echo "$(basename "$0") $*" >> "$SHIM_LOG"'
SHIMS = {
    # aws s3 ls: the bundle's wheel; aws s3 cp SRC DEST: a wheel, the bucket's wheelhouse when CACHED is set
    # (else no such object), or an upload.
    "aws": 'case "$2" in ls) echo "2026-12-01 10:00:00 1234 ' + WHEEL + '";; cp) case "$4" in\n'
           '  s3://*.whl) touch "$5";;\n'
           '  s3://*.tar) if [ -n "$CACHED" ]; then tar -cf "$5" -T /dev/null; else exit 1; fi;;\n'
           'esac;; esac',
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


def test_the_aws_branch_checks_the_gpu_installs_this_wheel_with_cuda_and_becomes_the_governor(scratch):
    done, root, calls = boot(scratch, "aws", gpu="T4")
    assert done.returncode == 0, (root / "bootstrap.log").read_text()
    assert "nvidia-smi -L" in calls
    assert f"aws s3 cp --quiet s3://bkt/jobs/digits-1a2b3c/bundle/{WHEEL} {root}/bundle/{WHEEL}" in calls
    assert f"python3 -m venv {root}/venv" in calls
    # No wheelhouse in the bucket yet: built from the index, installed from it, uploaded for the next boots.
    wanted = f"{root}/bundle/{WHEEL}[search] tensorflow[and-cuda]>=2.16"
    assert f"pip wheel --quiet --wheel-dir {root}/wheelhouse {wanted}" in calls
    assert f"pip install --quiet --no-index --find-links {root}/wheelhouse {wanted}" in calls
    (upload,) = [c for c in calls if c.startswith(f"aws s3 cp --quiet --cli-connect-timeout 10 --cli-read-timeout 20 {root}/wheelhouse.tar ")]
    assert re.fullmatch(r".* s3://bkt/jobs/digits-1a2b3c/bundle/wheelhouse/[0-9a-f]{16}-.*-cuda\.tar", upload)
    assert "python -m nascloud instance" in calls and calls.index("python -c import nascloud") > \
        calls.index(f"pip install --quiet --no-index --find-links {root}/wheelhouse {wanted}")
    assert "powered off" not in calls and "shutdown -h now" not in calls

    # A later boot (a replacement) finds that wheelhouse: no index, nothing built, nothing uploaded.
    shutil.rmtree(root)
    (scratch / "calls.log").unlink()
    done, root, calls = boot(scratch, "aws", CACHED="1")
    assert done.returncode == 0, (root / "bootstrap.log").read_text()
    assert f"pip install --quiet --no-index --find-links {root}/wheelhouse {root}/bundle/{WHEEL}[search]" in calls
    assert not any(c.startswith("pip wheel") or c.startswith(f"aws s3 cp --quiet {root}") for c in calls), calls
    assert "from the bucket's wheelhouse" in (root / "bootstrap.log").read_text()


@pytest.fixture
def gcs_bucket(gcs_server):
    """The job's bucket at fake-gcs-server, emptied."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = client.lookup_bucket("bkt") or client.create_bucket("bkt")
    for blob in list(bucket.list_blobs()):
        blob.delete()
    return bucket


def test_the_gcp_branch_reaches_the_bucket_with_the_metadata_token_and_no_gcloud(scratch, gcs_bucket):
    """No gcloud on this machine's PATH matters here: the bootstrap must not need one."""
    from tests.fixtures.hypervisor import MetadataServer, gce_token

    gcs_bucket.blob(f"digits-1a2b3c/bundle/{WHEEL}").upload_from_string(b"the wheel")
    gcs_bucket.blob("digits-1a2b3c/bundle/job.json").upload_from_string(b"{}")
    gcs = {"STORAGE_EMULATOR_HOST": os.environ["STORAGE_EMULATOR_HOST"]}
    with MetadataServer("gcp", gce_token()) as metadata:
        done, root, calls = boot(scratch, "gcp", gpu="T4", NO_GPU="1", NASCLOUD_GCE_METADATA_URL=metadata.url, **gcs)
        assert done.returncode == 1
        assert (root / "failed").read_text().strip() == (
            "no working NVIDIA driver for the T4 GPU (nvidia-smi failed); use a GPU image (compute.image)")
        assert calls.count("nvidia-smi -L") == 30  # it waited for the driver to load
        assert calls[-1] == "powered off" and not any("nascloud instance" in c for c in calls)

        (scratch / "calls.log").unlink()
        done, root, calls = boot(scratch, "gcp", NASCLOUD_GCE_METADATA_URL=metadata.url, **gcs)
    assert done.returncode == 0, (root / "bootstrap.log").read_text()
    assert os.listdir(root / "bundle") == [WHEEL] and (root / "bundle" / WHEEL).read_bytes() == b"the wheel"
    assert calls[-1] == "python -m nascloud instance"
    assert f"pip wheel --quiet --wheel-dir {root}/wheelhouse {root}/bundle/{WHEEL}[search]" in calls
    (uploaded,) = [b.name for b in gcs_bucket.list_blobs(prefix="digits-1a2b3c/bundle/wheelhouse/")]
    assert re.fullmatch(r"digits-1a2b3c/bundle/wheelhouse/[0-9a-f]{16}-.*-cpu\.tar", uploaded)
    assert "wheelhouse uploaded" in (root / "bootstrap.log").read_text()

    # Without a token (another image's metadata, a VM without a service account) the wheel is not there.
    with MetadataServer("gcp", {}) as metadata:
        shutil.rmtree(root)
        done, root, calls = boot(scratch, "gcp", NASCLOUD_GCE_METADATA_URL=metadata.url, **gcs)
    assert done.returncode == 1 and "no nascloud wheel under gs://bkt/digits-1a2b3c/bundle/" in \
        (root / "failed").read_text()


def installed_wheels(top: str, folder: Path) -> None:
    """The installed distributions that `top` needs (its base requirements, recursively), each packed back
    into a wheel from the files its RECORD lists: an index for pip made from this venv, with no network."""
    import importlib.metadata
    import zipfile

    from packaging.requirements import Requirement
    from packaging.tags import sys_tags
    from packaging.utils import canonicalize_name

    here = {str(t) for t in sys_tags()}
    seen, packed, todo = set(), set(), [(top, "")]
    while todo:
        wanted = todo.pop()
        dist = importlib.metadata.distribution(wanted[0])
        name = canonicalize_name(dist.metadata["Name"])
        if (name, wanted[1]) in seen:
            continue
        seen.add((name, wanted[1]))
        todo += [(r.name, extra) for r in map(Requirement, dist.requires or [])
                 if r.marker is None or r.marker.evaluate({"extra": wanted[1]}) for extra in ("", *r.extras)]
        if name == top or name in packed:
            continue  # top's wheel is the one launch builds
        packed.add(name)
        tag = next(t for line in dist.read_text("WHEEL").splitlines() if line.startswith("Tag:")
                   for t in [line.split(":", 1)[1].strip()] if t in here)  # e.g. py3 of py2.py3
        with zipfile.ZipFile(folder / f"{name.replace('-', '_')}-{dist.version}-{tag}.whl", "w") as wheel:
            for file in dist.files:
                path = dist.locate_file(file)
                if file.parts[0] != ".." and "__pycache__" not in file.parts and path.is_file():
                    wheel.write(path, str(file))


def test_a_boot_installs_for_real_from_the_index_then_the_next_from_the_bucket_wheelhouse(tmp_path, gcs_bucket):
    """The real make_venv: a venv from this machine's python3 and pip installing this repo's wheel. The base
    package only (NASCLOUD_EXTRAS empty): the search extra's TensorFlow is gigabytes, the same path."""
    from nascloud.launching import build_wheel
    from tests.fixtures.hypervisor import MetadataServer, gce_token

    index = tmp_path / "index"  # stands in for PyPI on the first boot
    index.mkdir()
    installed_wheels("nascloud", index)
    wheel = build_wheel()
    gcs_bucket.blob(f"digits-1a2b3c/bundle/{wheel.name}").upload_from_filename(str(wheel))
    seconds = {}
    with MetadataServer("gcp", gce_token()) as metadata:  # no instance id: the governor stops at once
        for boot_number, pip_env in ((1, {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(index)}), (2, {})):
            root = tmp_path / f"root{boot_number}"
            values = {"NASCLOUD_CLOUD": "gcp", "NASCLOUD_JOB_ID": "digits-1a2b3c", "NASCLOUD_GROUP": "search",
                      "NASCLOUD_JOB_URL": "gs://bkt/digits-1a2b3c", "NASCLOUD_ROOT": str(root), "NASCLOUD_GPU": "",
                      "NASCLOUD_EXTRAS": ""}
            (tmp_path / "user-data").write_text(bootstrap_script(values))
            started = time.monotonic()
            done = subprocess.run(["bash", str(tmp_path / "user-data")], capture_output=True, text=True, timeout=600,
                                  env={"PATH": os.environ["PATH"], "NASCLOUD_POWEROFF_COMMAND": "true",
                                       "NASCLOUD_GCE_METADATA_URL": metadata.url, "HOME": str(tmp_path),
                                       "STORAGE_EMULATOR_HOST": os.environ["STORAGE_EMULATOR_HOST"], **pip_env})
            seconds[boot_number] = round(time.monotonic() - started, 1)
            log = (root / "bootstrap.log").read_text()
            assert "starting the instance's governor" in log, log
            venv = root / "venv" / "bin" / "python"
            shown = subprocess.run([str(venv), "-c", "import nascloud, boto3, google.cloud.storage; "
                                    "print(nascloud.__file__)"], capture_output=True, text=True, cwd=tmp_path)
            assert shown.returncode == 0 and str(root / "venv") in shown.stdout, shown.stderr
            if boot_number == 1:
                assert "from the index; uploading its wheelhouse" in log and "wheelhouse uploaded" in log, log
            else:
                assert "from the bucket's wheelhouse" in log, log
    print("install seconds (1: from a local index, building the wheelhouse; 2: from the bucket's wheelhouse):",
          seconds)

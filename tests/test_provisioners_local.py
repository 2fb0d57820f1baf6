"""The local provider: real processes, a real private sshd per instance, preempted by killing them all."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nascloud import remote
from nascloud.job import parse_job
from nascloud.provisioners import Instance, State, get_provisioner
from nascloud.provisioners.local import LocalProvisioner, instance_pids
from tests.fixtures.servers import requires_sshd

SPEC = parse_job({"name": "digits-quick"})
JOB = "digits-quick-1a2b3c"


def _running(pid: int) -> bool:
    """True while pid is a live process (a zombie is dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def local(tmp_path):
    provisioner = get_provisioner("local", home=tmp_path / "home", price_per_hour=0.25)
    yield provisioner
    provisioner.terminate(provisioner.list_owned())


@requires_sshd
def test_launch_is_idempotent_and_reached_over_ssh_with_a_pinned_key(local):
    first = local.launch(JOB, None, SPEC)
    assert local.launch(JOB, None, SPEC) == first
    assert local.list_owned(JOB) == [first]
    assert first.extra["python"] == sys.executable and first.extra["price_per_hour"] == 0.25
    target = local.ssh_target(first)
    assert target.host == "127.0.0.1" and target.host_key.startswith("ssh-ed25519 ")
    assert Path(target.key_path).stat().st_mode & 0o777 == 0o600

    # Another process (the CLI) reads the same instances from the state files.
    other = subprocess.run(
        [sys.executable, "-c", "import sys; from nascloud.provisioners.local import LocalProvisioner as L; "
         "p = L(sys.argv[1]); print([i.instance_id for i in p.list_owned()], p.status(p.list_owned()))",
         str(local.home)], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == f"['{first.instance_id}'] {{'{first.instance_id}': <State.RUNNING: 'running'>}}"

    conn = remote.connect(target, first)
    try:
        code, output = conn.run("pwd; test -f ../ready && echo bootstrapped")
        assert (code, output.split()) == (0, [first.extra["workdir"], "bootstrapped"])
        assert conn.run("exit 7") == (7, "")
        assert conn.run("echo started; sleep 30", timeout=0.5) == (124, "started\n")
    finally:
        conn.close()


@requires_sshd
def test_preempt_kills_every_process_of_the_instance_even_detached_ones(local, tmp_path):
    instance = local.launch(JOB, None, SPEC)
    conn = remote.connect(local.ssh_target(instance), instance)
    pid = conn.start_detached("sleep 300", "sleep.log")
    (tmp_path / "in.txt").write_text("payload")
    conn.put_file(tmp_path / "in.txt", "copied.txt")
    conn.get_file("copied.txt", tmp_path / "back.txt")
    conn.close()
    assert (tmp_path / "back.txt").read_text() == "payload"
    assert Path(instance.extra["workdir"], "copied.txt").exists()
    assert _running(pid)  # it outlived the SSH connection

    local.preempt(instance)
    assert not _running(pid)
    assert local.status([instance]) == {instance.instance_id: State.PREEMPTED}
    with pytest.raises(remote.UnreachableError, match="cannot reach"):
        remote.connect(local.ssh_target(instance), instance, attempts=2, delay=0.05)

    # Recovery is the same call as the first launch: a new instance with a fresh directory.
    second = local.launch(JOB, None, SPEC)
    assert second.instance_id != instance.instance_id
    assert not Path(second.extra["workdir"], "copied.txt").exists()
    local.terminate([second])
    local.terminate([second, instance])  # twice, and an already preempted one: no error
    assert local.status([instance, second]) == {instance.instance_id: State.PREEMPTED,
                                                second.instance_id: State.TERMINATED}
    local.release(JOB)
    local.release(JOB)
    assert not (local.home / "keys" / JOB).exists()
    assert not list((local.home / "instances").iterdir())


def test_without_sshd_processes_run_directly_and_are_preempted(tmp_path):
    local = LocalProvisioner(home=tmp_path / "home", use_ssh=False)
    instance = local.launch(JOB, None, SPEC)
    assert local.ssh_target(instance) is None
    conn = remote.connect(None, instance)
    assert conn.run("pwd") == (0, instance.extra["workdir"] + "\n")
    pid = conn.start_detached("echo hello; sleep 300", "agent.log")
    deadline = time.monotonic() + 10
    while "hello" not in Path(instance.extra["workdir"], "agent.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running(pid)
    local.preempt(instance)
    assert not _running(pid)
    assert local.status([instance]) == {instance.instance_id: State.PREEMPTED}
    assert local.list_owned(JOB) == []


def test_an_unknown_instance_reads_terminated(local):
    unknown = Instance(instance_id="local-00000000", job_id=JOB, cloud="local", region="local", zone=None,
                       instance_type="local", spot=True, launched_at=0.0)
    assert local.status([unknown]) == {"local-00000000": State.TERMINATED}
    local.terminate([unknown])


@requires_sshd
def test_an_instance_whose_sshd_died_reads_failed(local):
    instance = local.launch(JOB, None, SPEC)
    pid_file = local.home / "instances" / instance.instance_id / "sshd" / "sshd.pid"
    assert pid_file.exists(), pid_file
    pid = int(pid_file.read_text())
    assert pid > 0, pid  # kill 0 (or a negative pid) would signal the test run's own process group
    subprocess.run(["kill", "-9", str(pid)], check=True)
    deadline = time.monotonic() + 5
    while local.status([instance])[instance.instance_id] != State.FAILED and time.monotonic() < deadline:
        time.sleep(0.05)
    assert local.status([instance]) == {instance.instance_id: State.FAILED}


def test_dry_run_describes_the_local_instance():
    from nascloud.provisioners.local import launch_request

    request = launch_request(JOB, None, SPEC.with_overrides(compute={"price_per_hour": 0.5}))
    assert (request["cloud"], request["python"], request["price_per_hour"]) == ("local", sys.executable, 0.5)


def test_the_package_dry_run_takes_the_launch_record_dict_for_each_cloud():
    from nascloud.provisioners import launch_request

    record = {"cloud": "aws", "region": "us-east-1", "zone": None, "instance_type": "g4dn.xlarge", "gpu": "T4",
              "gpu_count": 1, "spot": True, "price_per_hour": 0.21}
    spec = parse_job({"name": "digits-t4", "compute": {"cloud": "aws", "ssh_cidr": "203.0.113.7/32"},
                      "checkpoint": {"bucket": "s3://bkt/jobs"}})
    run = launch_request(spec, record)["RunInstances"]
    assert (run["InstanceType"], run["InstanceMarketOptions"]["MarketType"]) == ("g4dn.xlarge", "spot")
    assert "NASCLOUD_JOB_URL=s3://bkt/jobs/digits-t4-xxxxxx" in run["UserData"]
    gcp = spec.with_overrides(compute={"cloud": "gcp", "zone": "us-central1-a"},
                              checkpoint={"bucket": "gs://bkt"})
    body = launch_request(gcp, {**record, "cloud": "gcp", "region": "us-central1", "instance_type": "n1-standard-4",
                                "gpu_count": 2}, job_id="digits-t4-abcdef")["instances.insert"]
    assert body["guestAccelerators"][0]["acceleratorCount"] == 2
    assert body["labels"]["nascloud-job"] == "digits-t4-abcdef"
    assert launch_request(SPEC, {"cloud": "local", "spot": True})["cloud"] == "local"


@pytest.mark.parametrize("use_ssh", [pytest.param(True, marks=requires_sshd), False])
def test_a_preemption_while_the_instance_boots_leaves_nothing_running(tmp_path, use_ssh):
    local = LocalProvisioner(home=tmp_path / "home", use_ssh=use_ssh)
    instances = local.home / "instances"
    stop = threading.Event()

    def preempt_as_soon_as_it_exists():
        while not stop.is_set():
            for state in instances.glob("*/state.json"):
                local.preempt(Instance(**json.loads(state.read_text())["instance"]))
                return
            time.sleep(0.001)

    reclaimer = threading.Thread(target=preempt_as_soon_as_it_exists)
    reclaimer.start()
    try:
        instance = local.launch(JOB, None, SPEC)  # no error: a reclaim during boot is a normal event
    finally:
        stop.set()
        reclaimer.join()
    assert local.status([instance]) == {instance.instance_id: State.PREEMPTED}
    assert local.list_owned(JOB) == []
    assert instance_pids(instance.instance_id) == []


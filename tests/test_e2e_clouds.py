"""The watch loop on AWS (moto in server mode) and GCP (the local Compute Engine server), through the
real boto3 / google-cloud clients: a real search, the instance reclaimed by the cloud mid-search, the
search resumed on a new instance and finished, and nothing of the job left at the servers.

The machine behind each cloud instance is played by a private sshd on 127.0.0.1 (never the address
the emulator invents) presenting the job's host key, which is what the bootstrap installs on a real
instance, with the environment the instance's own identity would give it (the bucket's endpoint).
"""

from __future__ import annotations

import getpass
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tests.fixtures.moto_ec2 import preempt_ec2
from tests.fixtures.servers import AWS_TEST_ENV, requires_sshd

pytestmark = [pytest.mark.e2e, requires_sshd]

CIDR = "198.51.100.9/32"
SEARCH = {"data": "sklearn:digits", "max_trials": 3, "epochs": 6,
          "space": {"block_type": ["vanilla"], "num_blocks": [1, 1], "dropout": [0.0, 0.25]}}


class Machines:
    """One private sshd per cloud instance id, started when the orchestrator first connects."""

    def __init__(self, root: Path, home: Path, env: dict):
        self.root, self.home, self.env = root, home, env
        self.ports: dict[str, int] = {}

    def address(self, instance) -> tuple[str, int]:
        from nascloud.provisioners.common import job_keys
        from nascloud.provisioners.local import find_sshd, start_sshd

        if instance.instance_id not in self.ports:
            client, host = job_keys(self.home, instance.job_id)
            _, port = start_sshd(find_sshd(), self.root / instance.instance_id / "sshd", host, client.public_line,
                                 instance.instance_id, self.env)
            self.ports[instance.instance_id] = port
        return "127.0.0.1", self.ports[instance.instance_id]

    def machine(self, instance) -> dict:
        """Where this machine keeps nascloud: its bootstrap is done (ready), its Python is this one."""
        folder = self.root / instance.instance_id
        for part in ("boot", "work"):
            (folder / part).mkdir(parents=True, exist_ok=True)
        (folder / "boot" / "ready").touch()
        return {"python": sys.executable, "bootstrap_dir": str(folder / "boot"), "workdir": str(folder / "work")}

    def power_off(self, instance_id: str) -> None:
        """The machine is gone with its instance: every process it ran dies at once."""
        import os
        import signal

        from nascloud.provisioners.local import instance_pids

        for pid in instance_pids(instance_id):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def played_by(provisioner_class, machines: Machines, **options):
    class Played(provisioner_class):
        def launch(self, job_id, offer, spec):
            instance = super().launch(job_id, offer, spec)
            return replace(instance, extra={**instance.extra, **machines.machine(instance)})

    return Played(ssh_address=machines.address, ssh_user=getpass.getuser(), cidr_lookup=lambda: CIDR, **options)


def run_job(home: Path, spec, provisioner, preempt) -> tuple[str, list]:
    """Create the job (bundle, data and wheel in the bucket), run the watch loop in a thread, call
    `preempt(instance_id)` once the first instance is mid-trial, and wait for the end."""
    from nascloud import launching
    from nascloud.checkpoints import open_store
    from nascloud.orchestrator import Orchestrator, WatchSettings
    from nascloud.state import State

    state = State()
    # The machine playing the GPU instance has no GPU: its record says so (the agent refuses otherwise).
    offer = {**launching.choose_offer(spec, None), "gpu": None}
    job_id = launching.create_job(state, spec, offer, None, interval_minutes=0.01)
    settings = WatchSettings(poll_seconds=0.5, heartbeat_deadline_seconds=60, reach_timeout_seconds=120)
    outcome: list = []

    def watch() -> None:  # SQLite connections stay in their thread: the loop opens its own
        outcome.append(Orchestrator(State(), job_id, provisioner, settings).run())

    loop = threading.Thread(target=watch, daemon=True)
    loop.start()
    store = open_store(state.job(job_id).job_url)
    deadline = time.monotonic() + 300
    while ((store.get_json("agent/progress.json") or {}).get("running") or {}).get("epoch", 0) < 1:
        assert time.monotonic() < deadline and loop.is_alive(), state.events(job_id)
        time.sleep(0.3)
    preempt(state.open_instances(job_id)[-1].instance_id)
    loop.join(timeout=600)
    assert outcome == ["finished"], [(e.kind, e.message) for e in state.events(job_id)]
    progress = store.get_json("agent/progress.json")
    assert progress["trials_done"] == 3 and progress["finished"]
    instances = state.instances(job_id)
    assert [i.end_reason for i in instances] == ["preempted", "finished"]
    assert (home / "results" / job_id / "best_model.keras").exists()
    return job_id, instances


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("NASCLOUD_HOME", str(home))
    monkeypatch.setenv("NASCLOUD_HEARTBEAT_SECONDS", "1")
    return home


def test_aws_spot_reclaim_mid_search_resumes_and_leaves_nothing(moto_reset, home, tmp_path):
    import boto3

    from nascloud.job import parse_job
    from nascloud.provisioners.aws import AwsProvisioner

    boto3.client("s3").create_bucket(Bucket="nascloud-e2e")
    spec = parse_job({"name": "digits-aws", "search": SEARCH,
                      "compute": {"cloud": "aws", "gpu": "T4", "region": "us-east-1", "instance_type": "g4dn.xlarge",
                                  "image": "ami-03cf127a", "ssh_cidr": CIDR},
                      "checkpoint": {"bucket": "s3://nascloud-e2e/jobs"}})
    machines = Machines(tmp_path / "machines", home, {**AWS_TEST_ENV, "AWS_ENDPOINT_URL": moto_reset})
    aws = played_by(AwsProvisioner, machines, home=home, region="us-east-1", poll_seconds=0.2)

    def reclaim(instance_id: str) -> None:
        preempt_ec2(instance_id)
        machines.power_off(instance_id)

    job_id, instances = run_job(home, spec, aws, reclaim)

    ec2 = boto3.client("ec2", region_name="us-east-1")
    tagged = ec2.describe_instances(Filters=[{"Name": "tag:nascloud:job", "Values": [job_id]}])
    states = [i["State"]["Name"] for r in tagged["Reservations"] for i in r["Instances"]]
    assert len(states) == 2 and set(states) <= {"terminated", "shutting-down"}, states
    assert not [g for g in ec2.describe_security_groups()["SecurityGroups"] if job_id in g["GroupName"]]
    assert not [k for k in ec2.describe_key_pairs()["KeyPairs"] if job_id in k["KeyName"]]
    roles = boto3.client("iam").list_roles()["Roles"]
    assert not [r for r in roles if job_id in r["RoleName"]]

    # The ledger: each instance at its launch price plus boot disk and IPv4; the bucket's storage and the
    # requests of launch, the watch loop and both agents (the reclaimed one's up to its last heartbeat).
    from nascloud.orchestrator import Orchestrator
    from nascloud.state import State

    state = State()
    offer = state.job(job_id).bundle["offer"]
    assert offer["extras_per_hour"] == pytest.approx(100 * 0.08 / 730 + 0.005)  # billing.csv: gp3, IPv4
    assert all(i.price_per_hour == pytest.approx(offer["price_per_hour"] + offer["extras_per_hour"])
               for i in instances)
    charges = {c.source: c for c in state.charges(job_id)}
    agents = {source.split(":")[2] for source in charges if source.startswith("requests:agent:")}
    assert agents == {i.instance_id for i in instances}
    assert "requests:launch" in charges and any(s.startswith("requests:watch:") for s in charges)
    assert charges["storage"].detail["bytes"] > 0 and all(c.usd > 0 for c in charges.values())
    writes = sum(c.detail["class_a"] for s, c in charges.items() if s.startswith("requests:"))
    bucket = sum(c.usd for c in charges.values())
    assert bucket >= writes / 1000 * 0.005
    instances_usd = sum(i.price_per_hour * max(i.ended_at - i.launched_at, 60) / 3600 for i in instances)
    assert Orchestrator(state, job_id, aws).ledger_total() == pytest.approx(instances_usd + bucket)


def test_gcp_preempted_operation_mid_search_resumes_and_leaves_nothing(gce, gcs_server, home, tmp_path):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from nascloud.job import parse_job
    from nascloud.provisioners.gcp import GcpProvisioner

    storage.Client(project="test", credentials=AnonymousCredentials()).create_bucket("nascloud-e2e-gcs")
    spec = parse_job({"name": "digits-gcp", "search": SEARCH,
                      "compute": {"cloud": "gcp", "gpu": "T4", "region": "us-central1", "zone": "us-central1-a",
                                  "instance_type": "n1-standard-4", "ssh_cidr": CIDR},
                      "checkpoint": {"bucket": "gs://nascloud-e2e-gcs/jobs"}})
    machines = Machines(tmp_path / "machines", home, {"STORAGE_EMULATOR_HOST": gcs_server})
    gcp = played_by(GcpProvisioner, machines, project=gce.project, home=home,
                    service_account="nascloud-job@nascloud-test.iam.gserviceaccount.com")

    def preempt(name: str) -> None:
        gce.preempt(name)
        machines.power_off(name)

    run_job(home, spec, gcp, preempt)

    assert gce.count("instances.insert") == 2
    assert all(i["status"] == "TERMINATED" for i in gce.instances.values()) or not gce.instances
    assert not gce.firewalls

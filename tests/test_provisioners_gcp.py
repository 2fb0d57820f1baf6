"""The GCP provisioner through google-cloud-compute's REST clients against a local Compute Engine server."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, replace
from typing import Optional

import pytest

from nascloud.errors import CloudError, UsageError
from nascloud.job import parse_job
from nascloud.provisioners import State, get_provisioner
from nascloud.provisioners.gcp import launch_request

JOB = "digits-t4-4d5e6f"
CIDR = "198.51.100.9/32"


@dataclass(frozen=True)
class Offer:
    cloud: str = "gcp"
    region: Optional[str] = "us-central1"
    zone: Optional[str] = "us-central1-a"
    instance_type: str = "n1-standard-4"
    gpu: Optional[str] = "T4"
    spot: bool = True


def job(**compute) -> object:
    return parse_job({"name": "digits-t4", "checkpoint": {"bucket": "gs://nascloud-test/jobs"},
                      "compute": {"cloud": "gcp", "ssh_cidr": CIDR, **compute}})


def no_lookup() -> str:
    raise AssertionError("the caller's address must come from the job file in tests")


@pytest.fixture
def gcp(gce, tmp_path):
    return get_provisioner("gcp", project=gce.project, home=tmp_path / "home", cidr_lookup=no_lookup,
                           service_account="nascloud-job@nascloud-test.iam.gserviceaccount.com")


def test_launch_twice_makes_one_spot_vm_behind_a_narrow_firewall(gcp, gce):
    first = gcp.launch(JOB, Offer(), job())
    assert gcp.launch(JOB, Offer(), job()) == first
    assert gce.count("instances.insert") == 1 and gce.count("firewalls.insert") == 1
    # Operations finished later than they were created: the client waited on them through our server.
    assert gce.count("zoneOperations.wait") >= 1 and gce.count("globalOperations.wait") >= 1
    assert (first.zone, first.region, first.spot, first.instance_type) == ("us-central1-a", "us-central1", True,
                                                                           "n1-standard-4")
    assert gcp.list_owned(JOB) == [first]
    assert gcp.status([first]) == {first.instance_id: State.RUNNING}
    # Where its lease is, so `gc` on a machine that does not know the job can still judge it.
    assert first.extra["job_url"] == f"gs://nascloud-test/jobs/{JOB}"

    (body,) = [b for r, b in gce.bodies if r == "instances.insert"]
    assert body["scheduling"] == {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP",
                                  "automaticRestart": False, "onHostMaintenance": "TERMINATE"}
    assert body["guestAccelerators"] == [{"acceleratorType": "zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4",
                                          "acceleratorCount": 1}]
    assert body["labels"]["nascloud-job"] == JOB
    metadata = {item["key"]: item["value"] for item in body["metadata"]["items"]}
    target = gcp.ssh_target(first)
    assert metadata["ssh-keys"] == "nascloud:" + open(target.key_path + ".pub").read().strip()
    assert metadata["startup-script"].startswith("#!/bin/bash\nNASCLOUD_CLOUD=gcp\n")
    assert "NASCLOUD_JOB_URL=gs://nascloud-test/jobs/" + JOB in metadata["startup-script"]
    assert body["serviceAccounts"][0]["email"] == "nascloud-job@nascloud-test.iam.gserviceaccount.com"

    (rule,) = gce.firewalls.values()
    assert (rule["sourceRanges"], rule["allowed"], rule["targetTags"]) == (
        [CIDR], [{"IPProtocol": "tcp", "ports": ["22"]}], body["tags"]["items"])
    assert target.port == 22 and target.host == first.extra["public_ip"]

    gcp.terminate([first])
    gcp.terminate([first])  # twice: no error
    assert gcp.status([first]) == {first.instance_id: State.TERMINATED}
    gcp.release(JOB)
    gcp.release(JOB)
    assert gce.firewalls == {}


def test_a_preemption_operation_reads_preempted_a_plain_stop_does_not(gcp, gce):
    reclaimed = gcp.launch(JOB, Offer(), job())
    # Through the control call a CLI test in another process would use (gce.preempt in this one).
    urllib.request.urlopen(urllib.request.Request(f"{gce.url}/_control/preempt", method="POST",
                                                  data=json.dumps({"name": reclaimed.instance_id}).encode()))
    assert gce.instances["us-central1-a", reclaimed.instance_id]["status"] == "TERMINATED"
    stopped = gce.add_instance("us-central1-b", "nascloud-other-0000", {"nascloud-job": JOB}, status="TERMINATED")
    other = replace(reclaimed, instance_id=stopped["name"], zone="us-central1-b")
    gone = replace(reclaimed, instance_id="nascloud-gone-0000")
    assert gcp.status([reclaimed, other, gone]) == {reclaimed.instance_id: State.PREEMPTED,
                                                     other.instance_id: State.TERMINATED,
                                                     gone.instance_id: State.TERMINATED}
    replacement = gcp.launch(JOB, Offer(), job())  # recovery is the same call as the first launch
    assert replacement.instance_id not in (reclaimed.instance_id, other.instance_id)
    assert gcp.status([replacement]) == {replacement.instance_id: State.RUNNING}


def test_status_of_200_instances_is_one_list_call(gcp, gce):
    names = [f"nascloud-{JOB}-{n:04x}" for n in range(200)]
    for n, name in enumerate(names):
        gce.add_instance(["us-central1-a", "us-west1-b"][n % 2], name, {"nascloud-job": JOB})
    instances = gcp.list_owned(JOB)
    gce.requests.clear()
    assert set(gcp.status(instances).values()) == {State.RUNNING}
    assert sum(gce.requests.values()) == 1 and gce.count("instances.aggregatedList") == 1


def test_legacy_preemptible_and_on_demand_scheduling(gcp, gce):
    gcp.launch(JOB, Offer(), job(provisioning="preemptible"))
    gcp.launch("other-job-000001", Offer(spot=False, instance_type="g2-standard-4", gpu="L4"), job())
    preemptible, standard = [b for r, b in gce.bodies if r == "instances.insert"]
    assert preemptible["scheduling"] == {"preemptible": True, "automaticRestart": False,
                                         "onHostMaintenance": "TERMINATE"}
    assert standard["scheduling"]["provisioningModel"] == "STANDARD"
    assert "guestAccelerators" not in standard  # g2 machines come with their L4


@pytest.mark.parametrize("offer, message", [
    (Offer(instance_type="n9-huge-4"), "unknown GCP machine type 'n9-huge-4' in us-central1-a"),
    (Offer(zone="us-central1-z"), "unknown GCP zone 'us-central1-z'"),
    (Offer(zone="europe-west4-a"), "zone europe-west4-a is not in region us-central1"),
    (Offer(gpu="K9"), "unknown GPU 'K9' for GCP"),
])
def test_bad_input_is_a_usage_error(gcp, gce, offer, message):
    with pytest.raises(UsageError, match=message) as raised:
        gcp.launch(JOB, offer, job())
    assert raised.value.exit_code == 2
    assert gce.count("instances.insert") == 0


def test_preflight_refuses_a_vm_without_a_service_account_to_reach_the_bucket(gce, tmp_path, monkeypatch):
    monkeypatch.delenv("NASCLOUD_GCP_SERVICE_ACCOUNT", raising=False)
    bare = get_provisioner("gcp", project=gce.project, home=tmp_path / "home", cidr_lookup=no_lookup)
    with pytest.raises(UsageError, match="set NASCLOUD_GCP_SERVICE_ACCOUNT"):
        bare.preflight(Offer(), job())
    assert gce.count("instances.insert") == 0


def test_no_capacity_and_no_quota_say_what_to_try(gcp, gce):
    gce.exhausted_zones.add("us-central1-a")
    with pytest.raises(CloudError, match=r"no n1-standard-4 spot capacity in us-central1-a right now "
                                         r"\(ZONE_RESOURCE_POOL_EXHAUSTED\); try another zone \(compute.zone\) or "
                                         r"on-demand"):
        gcp.launch(JOB, Offer(), job())
    gce.quotas["us-central1"]["PREEMPTIBLE_NVIDIA_T4_GPUS"] = 0.0
    with pytest.raises(CloudError, match=r"quota PREEMPTIBLE_NVIDIA_T4_GPUS in us-central1 is 0 with 0 in use "
                                         r"\(new projects start at 0\)"):
        gcp.preflight(Offer(zone="us-central1-b"), job())
    with pytest.raises(CloudError, match="GCP quota stops creating the instance: Quota 'PREEMPTIBLE_NVIDIA_T4_GPUS'"):
        gcp.launch(JOB, Offer(zone="us-central1-b"), job())
    gcp.preflight(Offer(region="us-west1", zone="us-west1-b"), job())
    gce.project_quotas["GPUS_ALL_REGIONS"] = 0.0
    with pytest.raises(CloudError, match=r"quota GPUS_ALL_REGIONS in the project is 0 with 0 in use \(new projects "
                                         r"start at 0\); request more under IAM & Admin > Quotas$"):
        gcp.preflight(Offer(region="us-west1", zone="us-west1-b"), job())
    with pytest.raises(UsageError, match="use a gs://BUCKET/PREFIX bucket"):
        gcp.preflight(Offer(region="us-west1", zone="us-west1-b"),
                      job().with_overrides(checkpoint={"bucket": "s3://b/p"}))


def test_no_credentials_is_a_cloud_error_without_touching_the_network(monkeypatch, tmp_path):
    monkeypatch.delenv("NASCLOUD_GCE_ENDPOINT", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    provisioner = get_provisioner("gcp", project="p", home=tmp_path, cidr_lookup=no_lookup)
    with pytest.raises(CloudError, match="no Google Cloud credentials found"):
        provisioner.list_owned(JOB)


def test_the_fake_refuses_what_gce_refuses(gce):
    """The server's validation is what makes the provisioner's tests meaningful: check it directly."""
    import urllib.error

    def insert(body: dict) -> tuple[int, str]:
        request = urllib.request.Request(f"{gce.url}/compute/v1/projects/{gce.project}/zones/us-central1-a/instances",
                                         data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(request) as reply:
                return reply.status, json.loads(reply.read())["status"]
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())["error"]["message"]

    base = {"name": "vm-1", "machineType": "zones/us-central1-a/machineTypes/n1-standard-4",
            "disks": [{"boot": True, "initializeParams": {"sourceImage": "img"}}], "networkInterfaces": [{}]}
    gpu = {"guestAccelerators": [{"acceleratorType": "zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4"}]}
    assert insert({**base, "machineTyp": "x"})[1].startswith('Invalid JSON payload received. Unknown name "machineTyp"')
    assert insert({**base, **gpu}) == (400, "Instances with guest accelerators do not support live migration.")
    assert insert({**base, "scheduling": {"provisioningModel": "SPOT"}})[0] == 400
    assert insert({**base, "labels": {"Job": "x"}})[0] == 400
    assert insert(base) == (200, "RUNNING")  # an operation, still running
    assert insert(base)[0] == 409


def test_dry_run_bodies_need_no_credentials(monkeypatch):
    monkeypatch.delenv("NASCLOUD_GCE_ENDPOINT", raising=False)
    request = launch_request(JOB, Offer(), job(ssh_cidr=None))
    assert request["zone"] == "us-central1-a"
    assert request["firewalls.insert"]["sourceRanges"] == ["<your public address>/32"]
    body = request["instances.insert"]
    assert body["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert body["disks"][0]["initializeParams"]["sourceImage"].startswith("projects/deeplearning-platform-release/")
    json.dumps(request)




@pytest.mark.parametrize("provisioning", ["spot", "preemptible"])
def test_a_drill_simulates_a_maintenance_event_which_preempts_the_vm(gcp, gce, provisioning):
    instance = gcp.launch(JOB, Offer(), job(provisioning=provisioning))
    gcp.preempt(instance)  # returns once the event's operation is done
    assert gce.count("instances.simulateMaintenanceEvent") == 1
    assert gce.instances["us-central1-a", instance.instance_id]["status"] == "TERMINATED"
    assert gcp.status([instance]) == {instance.instance_id: State.PREEMPTED}


def test_a_drill_refuses_an_on_demand_vm(gcp, gce):
    instance = gcp.launch(JOB, Offer(spot=False), job())
    with pytest.raises(UsageError, match=f"{instance.instance_id} is on-demand: only Spot and preemptible VMs can be "
                                         r"preempted; drill a job that runs on spot \(compute.spot: true\)"):
        gcp.preempt(instance)
    assert gce.count("instances.simulateMaintenanceEvent") == 0
    assert gcp.status([instance]) == {instance.instance_id: State.RUNNING}

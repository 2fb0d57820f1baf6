"""The GCP provisioner through google-cloud-compute's REST clients against the local Compute Engine server:
a job group is a regional managed instance group over an instance template, and the group, not nascloud,
recreates a lost VM."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from nascloud.errors import CloudError, UsageError
from nascloud.job import parse_job
from nascloud.provisioners import State, get_provisioner
from nascloud.provisioners.common import dry_run_group
from nascloud.provisioners.gcp import identity_binding, launch_request
from tests.fixtures.gce import HttpError, assert_nothing_left_gce

JOB = "digits-t4-4d5e6f"
NAME = f"nascloud-{JOB}-search"
CIDR = "198.51.100.9/32"
ACCOUNT = "nascloud-job@nascloud-test.iam.gserviceaccount.com"
ZONES = [{"zone": "us-central1-a", "price_per_hour": 0.14, "on_demand_price_per_hour": 0.54},
         {"zone": "us-central1-b", "price_per_hour": 0.15, "on_demand_price_per_hour": 0.54}]


def job(**compute) -> object:
    return parse_job({"name": "digits-t4", "checkpoint": {"bucket": "gs://nascloud-test/jobs"},
                      "compute": {"cloud": "gcp", "region": "us-central1", **compute}})


def group(spec=None, job_id: str = JOB, **offer):
    offer = {"cloud": "gcp", "region": "us-central1", "instance_type": "n1-standard-4", "gpu": "T4", "spot": True,
             "zones": ZONES, **offer}
    return dry_run_group("gcp", job_id, offer, spec or job())


def until(check, what: str, timeout: float = 10.0):
    """The fake's operations finish a little later, as GCE's do: wait for what a user would see."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def vm(gce, instance) -> dict:
    with gce.lock:
        return next(v for v in gce.instances.values() if v["id"] == instance.instance_id)


@pytest.fixture
def gcp(gce, tmp_path):
    return get_provisioner("gcp", region="us-central1", project=gce.project, home=tmp_path / "home",
                           service_account=ACCOUNT, poll_seconds=0.05)


def running(gcp):
    return until(lambda: [i for g in gcp.groups(JOB) for i in g.live if i.state == State.RUNNING], "a running VM")


def test_create_twice_makes_one_group_whose_vm_the_group_recreates(gcp, gce):
    gcp.create_groups([group()])
    gcp.create_groups([group()])  # idempotent by name
    assert list(gce.groups) == [("us-central1", NAME)]
    assert sorted(gce.templates) == [NAME, f"{NAME}-standard"]
    (first,) = running(gcp)
    assert (first.group, first.job_id, first.spot, first.instance_type) == ("search", JOB, True, "n1-standard-4")
    assert first.zone in ("us-central1-a", "us-central1-b") and first.region == "us-central1"
    assert first.launched_at > 0 and first.ended_at is None
    # Operations finished later than they were created: the client waited on them through our server.
    assert gce.count("regionOperations.wait") >= 1 and gce.count("globalOperations.wait") >= 1

    started, first_name = time.monotonic(), vm(gce, first)["name"]
    gce.preempt(first_name)  # the cloud takes it away; the group recreates it
    (second,) = until(lambda: [i for i in running(gcp) if i.instance_id != first.instance_id], "a replacement")
    replaced_in = time.monotonic() - started
    (found,) = gcp.groups(JOB)
    (ended,) = [i for i in found.instances if i.instance_id == first.instance_id]
    assert ended.state == State.PREEMPTED and ended.ended_at >= first.launched_at
    assert vm(gce, second)["name"] != first_name

    with gce.lock:  # someone deletes the VM behind the group's back: recreated too
        gce._instances_delete(second.zone, vm(gce, second)["name"])
    until(lambda: [i for i in running(gcp) if i.instance_id not in (first.instance_id, second.instance_id)],
          "a second replacement")

    gcp.resize(JOB, "search", 0, reason="bucket not writable")
    until(lambda: not gcp.groups(JOB)[0].live, "no live VM at size 0")
    (found,) = gcp.groups(JOB)
    assert (found.size, found.reason) == (0, "bucket not writable")
    time.sleep(0.3)  # a resize to 0 is not repaired: still none after the fake's operations would have run
    assert not gcp.groups(JOB)[0].live
    gcp.delete(JOB)
    gcp.delete(JOB)  # quiet about what is already gone
    gcp.resize(JOB, "search", 0, reason="finished")  # a missing group is success
    assert gcp.groups(JOB) == []
    assert_nothing_left_gce(gce, JOB)
    assert replaced_in < 5


def test_the_templates_read_back_carry_spot_terminate_the_accelerator_and_no_inbound_rule(gcp, gce):
    gcp.create_groups([group()])
    spot, standard = gce.templates[NAME]["properties"], gce.templates[f"{NAME}-standard"]["properties"]
    assert spot["scheduling"] == {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP",
                                  "automaticRestart": False, "onHostMaintenance": "TERMINATE"}
    assert standard["scheduling"]["provisioningModel"] == "STANDARD"  # the on-demand fallback, made at launch
    assert spot["guestAccelerators"] == [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}]
    assert spot["labels"] == {"nascloud-job": JOB, "nascloud-owner": spot["labels"]["nascloud-owner"],
                              "nascloud-group": "search"}
    metadata = {item["key"]: item["value"] for item in spot["metadata"]["items"]}
    assert metadata["nascloud-job-url"] == f"gs://nascloud-test/jobs/{JOB}"
    assert metadata["startup-script"].startswith("#!/bin/bash\nNASCLOUD_CLOUD=gcp\n")
    assert "NASCLOUD_GROUP=search" in metadata["startup-script"]
    assert "ssh-keys" not in metadata and "PRIVATE KEY" not in json.dumps(spot)
    assert spot["serviceAccounts"] == [{"email": ACCOUNT, "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}]
    assert "tags" not in spot and gce.firewalls == {}  # no ssh_cidr: no inbound rule at all
    (manager,) = gce.groups.values()
    assert [z["zone"].rsplit("/", 1)[-1] for z in manager["distributionPolicy"]["zones"]] == [
        "us-central1-a", "us-central1-b"]  # the offer's zones: the group moves between them, not nascloud


def test_use_on_demand_points_the_group_at_its_standard_template_for_the_vms_it_recreates(gcp, gce):
    """What the instance does at boot after compute.on_demand_after_preemptions preemptions; its identity
    may use that template (the binding's condition names it beside the group)."""
    gcp.create_groups([group()])
    (first,) = running(gcp)
    gcp.use_on_demand(JOB, "search")
    gcp.use_on_demand(JOB, "search")  # idempotent: a second boot may find the same count
    with gce.lock:
        assert gce.groups["us-central1", NAME]["instanceTemplate"].endswith(f"/{NAME}-standard")
    assert [i.instance_id for i in running(gcp)] == [first.instance_id]  # the running VM stays

    gce.preempt(vm(gce, first)["name"])
    (second,) = until(lambda: [i for i in running(gcp) if i.instance_id != first.instance_id], "a replacement")
    assert second.spot is False and vm(gce, second)["scheduling"]["provisioningModel"] == "STANDARD"
    binding = identity_binding(gce.project, "us-central1", "digits-t4")["condition"]["expression"]
    assert 'global/instanceTemplates/nascloud-digits-t4-")' in binding  # the STANDARD template's name follows it
    assert 'instanceGroupManagers/nascloud-digits-t4-")' in binding
    gcp.delete(JOB)
    assert_nothing_left_gce(gce, JOB)

    # A group launched on-demand has no second template: nothing to switch, nothing refused.
    gcp.create_groups([group(spot=False)])
    gcp.use_on_demand(JOB, "search")
    gcp.delete(JOB)


def test_ssh_cidr_adds_a_narrow_firewall_and_delete_removes_it(gcp, gce):
    gcp.create_groups([group(job(ssh_cidr=CIDR))])
    (rule,) = gce.firewalls.values()
    properties = gce.templates[NAME]["properties"]
    assert (rule["sourceRanges"], rule["allowed"], rule["targetTags"]) == (
        [CIDR], [{"IPProtocol": "tcp", "ports": ["22"]}], properties["tags"]["items"])
    metadata = {item["key"]: item["value"] for item in properties["metadata"]["items"]}
    assert metadata["block-project-ssh-keys"] == "true" and "ssh-keys" not in metadata  # only the bundle's key
    gcp.delete(JOB)
    assert_nothing_left_gce(gce, JOB)


def test_a_zone_without_capacity_is_the_groups_to_avoid_not_nascloud(gcp, gce):
    gce.exhausted_zones.add("us-central1-a")  # the offer's cheapest zone
    gcp.create_groups([group()])
    (instance,) = running(gcp)
    assert instance.zone == "us-central1-b"  # priced from the table's us-central1-b row by the ledger
    gce.exhausted_zones.add("us-central1-b")
    gce.preempt(vm(gce, instance)["name"])  # no zone has capacity: the group keeps its target and waits
    time.sleep(0.5)  # what must not happen has no event to wait for: longer than the fake's operations take
    (found,) = gcp.groups(JOB)
    assert found.size == 1 and not found.live
    gce.exhausted_zones.clear()
    until(lambda: running(gcp), "the group's VM once capacity is back")


def test_groups_is_one_list_per_region_and_one_aggregated_list_each(gcp, gce):
    gcp.create_groups([group()])
    running(gcp)  # reads the template once
    gce.requests.clear()
    (found,) = gcp.groups(JOB)
    assert len(found.live) == 1
    assert dict(gce.requests) == {("GET", "regionInstanceGroupManagers.list"): 1,
                                  ("GET", "instances.aggregatedList"): 1, ("GET", "operations.aggregatedList"): 1}


def test_list_owned_finds_every_job_group_with_its_bucket_url_for_gc(gcp, gce):
    gcp.create_groups([group()])
    fresh = get_provisioner("gcp", region="us-central1", project=gce.project)  # gc elsewhere
    (owned,) = fresh.list_owned()
    assert (owned.job_id, owned.name, owned.size) == (JOB, "search", 1)
    assert fresh.job_url(owned) == f"gs://nascloud-test/jobs/{JOB}"


def test_legacy_preemptible_and_on_demand_scheduling(gcp, gce):
    gcp.create_groups([group(job(provisioning="preemptible"))])
    gcp.create_groups([group(job(spot=False), job_id="other-job-000001", spot=False, instance_type="g2-standard-4",
                             gpu="L4")])
    assert gce.templates[NAME]["properties"]["scheduling"] == {"preemptible": True, "automaticRestart": False,
                                                               "onHostMaintenance": "TERMINATE"}
    standard = gce.templates["nascloud-other-job-000001-search"]["properties"]
    assert standard["scheduling"]["provisioningModel"] == "STANDARD"
    assert "guestAccelerators" not in standard  # g2 machines come with their L4
    assert "nascloud-other-job-000001-search-standard" not in gce.templates  # already on-demand


@pytest.mark.parametrize("offer, message", [
    ({"instance_type": "n9-huge-4"}, "unknown GCP machine type 'n9-huge-4' in us-central1-a"),
    ({"zones": [{"zone": "us-central1-z"}]}, "unknown GCP zone 'us-central1-z'"),
    ({"zones": [{"zone": "europe-west4-a"}]}, "zone europe-west4-a is not in region us-central1"),
    ({"region": "us-south9", "zones": []}, "unknown GCP region 'us-south9'"),
    ({"gpu": "K9"}, "unknown GPU 'K9' for GCP"),
])
def test_bad_input_is_a_usage_error_with_nothing_made(gcp, gce, offer, message):
    with pytest.raises(UsageError, match=message) as raised:
        gcp.create_groups([group(**offer)])
    assert raised.value.exit_code == 2
    assert gce.count("instanceTemplates.insert") == 0
    assert_nothing_left_gce(gce, JOB)


def test_a_group_the_server_refuses_fails_at_launch_with_nothing_left(gcp, gce, monkeypatch):
    original = gce._instanceTemplates_insert

    def refuse_standard(body, **rest):  # as GCE does for an identity without the permission
        if body["name"].endswith("-standard"):
            raise HttpError(403, "forbidden", "Required 'compute.instanceTemplates.create' permission")
        return original(body=body, **rest)

    monkeypatch.setattr(gce, "_instanceTemplates_insert", refuse_standard)
    with pytest.raises(CloudError, match="^GCP refused creating the instance template .*-standard "
                                         r"\(Required 'compute.instanceTemplates.create' permission\)") as raised:
        gcp.create_groups([group()])
    assert raised.value.exit_code == 1 and "\n" not in str(raised.value)
    assert gce.count("instanceTemplates.insert") == 2  # the first one was made, then deleted again
    assert_nothing_left_gce(gce, JOB)


def test_a_job_name_too_long_for_gce_is_refused_before_anything_is_made(gcp, gce):
    long_job = "a-job-name-of-thirty-two-letters-1a2b3c"
    with pytest.raises(UsageError, match=r"exceed GCE's 63 characters; shorten the job's name by 1 character "):
        gcp.preflight([group(job_id=long_job)])
    with pytest.raises(UsageError, match="exceed GCE's 63 characters"):
        gcp.create_groups([group(job_id=long_job)])
    assert gce.count("instanceTemplates.insert") == 0


def test_preflight_refuses_a_vm_without_a_service_account_to_reach_the_bucket(gce, tmp_path, monkeypatch):
    monkeypatch.delenv("NASCLOUD_GCP_SERVICE_ACCOUNT", raising=False)
    bare = get_provisioner("gcp", region="us-central1", project=gce.project)
    with pytest.raises(UsageError, match="set NASCLOUD_GCP_SERVICE_ACCOUNT"):
        bare.preflight([group()])


def test_preflight_reports_the_quotas_for_the_groups_sizes(gcp, gce):
    gce.quotas["us-central1"]["PREEMPTIBLE_NVIDIA_T4_GPUS"] = 0.0
    with pytest.raises(CloudError, match=r"quota PREEMPTIBLE_NVIDIA_T4_GPUS in us-central1 is 0 with 0 in use "
                                         r"\(new projects start at 0\)"):
        gcp.preflight([group()])
    gcp.preflight([group(region="us-west1", zones=[{"zone": "us-west1-b"}])])
    gce.project_quotas["GPUS_ALL_REGIONS"] = 0.0
    with pytest.raises(CloudError, match=r"quota GPUS_ALL_REGIONS in the project is 0 with 0 in use \(new projects "
                                         r"start at 0\); request more under IAM & Admin > Quotas$"):
        gcp.preflight([group(region="us-west1", zones=[{"zone": "us-west1-b"}])])
    with pytest.raises(UsageError, match="use a gs://BUCKET/PREFIX bucket"):
        group(job().with_overrides(checkpoint={"bucket": "s3://b/p"}))
    assert gce.templates == {} and gce.groups == {}  # preflight creates nothing


def test_no_credentials_is_a_cloud_error_without_touching_the_network(monkeypatch, tmp_path):
    monkeypatch.delenv("NASCLOUD_GCE_ENDPOINT", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    provisioner = get_provisioner("gcp", region="us-central1", project="p")
    with pytest.raises(CloudError, match="no Google Cloud credentials found"):
        provisioner.groups(JOB)


def _post(gce, path: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(f"{gce.url}/compute/v1/projects/{gce.project}/{path}",
                                     data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request) as reply:
            return reply.status, json.loads(reply.read())["status"]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())["error"]["message"]


def test_the_fake_refuses_what_gce_refuses(gce):
    """The server's validation is what makes the provisioner's tests meaningful: check it directly."""
    base = {"name": "vm-1", "machineType": "zones/us-central1-a/machineTypes/n1-standard-4",
            "disks": [{"boot": True, "initializeParams": {"sourceImage": "img"}}], "networkInterfaces": [{}]}
    gpu = {"guestAccelerators": [{"acceleratorType": "zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4"}]}
    insert = lambda body: _post(gce, "zones/us-central1-a/instances", body)  # noqa: E731
    assert insert({**base, "machineTyp": "x"})[1].startswith('Invalid JSON payload received. Unknown name "machineTyp"')
    assert insert({**base, **gpu}) == (400, "Instances with guest accelerators do not support live migration.")
    assert insert({**base, "scheduling": {"provisioningModel": "SPOT"}})[0] == 400
    assert insert({**base, "labels": {"Job": "x"}})[0] == 400
    assert insert(base) == (200, "RUNNING")  # an operation, still running
    assert insert(base)[0] == 409
    properties = {k: v for k, v in base.items() if k != "name"} | {"machineType": "n1-standard-4"}
    template = lambda body: _post(gce, "global/instanceTemplates", body)  # noqa: E731
    assert template({"name": "t-1", "properties": {**properties, "guestAccelerators": [
        {"acceleratorType": "nvidia-tesla-t4"}]}}) == (400, "Instances with guest accelerators do not support live "
                                                            "migration.")
    assert template({"name": "t-1", "properties": {**properties, "machineType": "n9-huge"}})[0] == 400
    assert template({"name": "t-1", "properties": properties})[0] == 200
    until(lambda: gce.tick() or "t-1" in gce.templates, "the template's operation")
    manager = lambda body: _post(gce, "regions/us-central1/instanceGroupManagers", body)  # noqa: E731
    assert manager({"name": "g-1", "baseInstanceName": "g-1", "instanceTemplate": "global/instanceTemplates/none",
                    "targetSize": 1})[0] == 404
    assert manager({"name": "g-1", "baseInstanceName": "g-1", "instanceTemplate": "global/instanceTemplates/t-1",
                    "targetSize": 1, "distributionPolicy": {"zones": [{"zone": "zones/us-west1-b"}]}})[0] == 400
    assert manager({"name": "g-1", "baseInstanceName": "g-1", "instanceTemplate": "global/instanceTemplates/t-1",
                    "targetSize": 1, "size": 1})[0] == 400


def test_dry_run_shows_the_templates_and_the_group_without_credentials(monkeypatch):
    monkeypatch.delenv("NASCLOUD_GCE_ENDPOINT", raising=False)
    request = launch_request(JOB, {"cloud": "gcp", "region": "us-central1", "instance_type": "n1-standard-4",
                                   "gpu": "T4", "spot": True, "zones": ZONES}, job())
    spot, standard = request["instanceTemplates.insert"]
    assert spot["properties"]["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert standard["properties"]["scheduling"]["provisioningModel"] == "STANDARD"
    assert spot["properties"]["disks"][0]["initializeParams"]["sourceImage"].startswith(
        "projects/deeplearning-platform-release/")
    manager = request["regionInstanceGroupManagers.insert"]
    assert (manager["name"], manager["targetSize"], manager["instanceTemplate"]) == (
        NAME, 1, f"global/instanceTemplates/{NAME}")
    assert "firewalls.insert" not in request
    binding = request["service account binding"]["condition"]["expression"]
    assert 'instanceGroupManagers/nascloud-digits-t4-")' in binding  # every run of the job name
    json.dumps(request)


@pytest.mark.parametrize("provisioning", ["spot", "preemptible"])
def test_a_drill_simulates_a_maintenance_event_which_preempts_the_vm_and_the_group_recreates_it(gcp, gce,
                                                                                                 provisioning):
    gcp.create_groups([group(job(provisioning=provisioning))])
    (instance,) = running(gcp)
    gcp.preempt(instance)  # returns once the event's operation is done
    assert gce.count("instances.simulateMaintenanceEvent") == 1
    (found,) = gcp.groups(JOB)
    assert [i.state for i in found.instances if i.instance_id == instance.instance_id] == [State.PREEMPTED]
    until(lambda: [i for i in running(gcp) if i.instance_id != instance.instance_id], "the group's replacement")


def test_a_drill_refuses_an_on_demand_vm(gcp, gce):
    gcp.create_groups([group(job(spot=False), spot=False)])
    (instance,) = running(gcp)
    with pytest.raises(UsageError, match=f"{instance.instance_id} is on-demand: only Spot and preemptible VMs can be "
                                         r"preempted; drill a job that runs on spot \(compute.spot: true\)"):
        gcp.preempt(instance)
    assert gce.count("instances.simulateMaintenanceEvent") == 0


def test_whoami_reads_the_metadata_server_and_power_off_runs_the_command(gcp, gce, monkeypatch, tmp_path):
    from tests.fixtures.hypervisor import MetadataServer, act_as_the_vm

    gcp.create_groups([group()])
    (instance,) = running(gcp)
    raw = vm(gce, instance)
    with MetadataServer.gce(raw["id"], raw["name"], instance.zone, "n1-standard-4", True, gce.project) as server:
        act_as_the_vm(server, monkeypatch)  # its calls with the VM's token, as on the VM
        me = get_provisioner("gcp", region="us-central1").whoami(JOB, "search")  # as the instance makes it
    assert (me.instance_id, me.zone, me.spot, me.instance_type, me.launched_at) == (
        instance.instance_id, instance.zone, True, "n1-standard-4", instance.launched_at)
    monkeypatch.setenv("NASCLOUD_POWEROFF_COMMAND", f"touch {tmp_path / 'off'}")
    gcp.power_off()
    assert (tmp_path / "off").exists()

"""Issue 20, part 2, GCP: the Compute Engine fake and the GCS proxy check who calls and what IAM lets them do
(tests/fixtures/gcp_iam.py); the instance calls as its service account, with its metadata server's token;
and each permission and condition of what the code has the user grant is shown needed, by removing or
narrowing it and seeing the call it covers refused."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest

from nascloud.errors import CloudError
from nascloud.job import parse_job
from nascloud.provisioners import State, get_provisioner
from nascloud.provisioners.common import dry_run_group
from nascloud.provisioners.gcp import (INSTANCE_PERMISSIONS, bucket_bindings, identity_binding, instance_role,
                                       launch_request)
from tests.fixtures.gcp_iam import IAM, OWNER, ConditionError, evaluate, gcs_checks, grant_job
from tests.fixtures.hypervisor import MetadataServer, act_as_the_vm, gce_token
from tests.test_provisioners_gcp import until

pytestmark = [pytest.mark.strict_cloud]

JOB_NAME = "digits-iam"
JOB = f"{JOB_NAME}-a1b2c3"
NAME = f"nascloud-{JOB}-search"
RUNS = f"nascloud-{JOB_NAME}-"  # what the binding names: every run of the job name, granted before the first
BUCKET = "nascloud-iam"
BUCKET_URL = f"gs://{BUCKET}/jobs"  # the job file's checkpoint.bucket
ACCOUNT = "nascloud-job@nascloud-test.iam.gserviceaccount.com"
MEMBER = f"serviceAccount:{ACCOUNT}"
ZONES = [{"zone": "us-central1-a", "price_per_hour": 0.14, "on_demand_price_per_hour": 0.54}]


# --- the evaluator, on the documented examples ----------------------------------------------------------
# https://cloud.google.com/iam/docs/configuring-resource-based-access: a Compute Engine grant limited to
# disks and instances whose names start with a prefix, every other resource type left granted.
COMPUTE_EXAMPLE = (
    '(resource.type == "compute.googleapis.com/Disk" && '
    'resource.name.startsWith("projects/project-123/regions/us-central1/disks/example-prefix")) || '
    '(resource.type == "compute.googleapis.com/Instance" && '
    'resource.name.startsWith("projects/project-123/zones/us-central1-a/instances/example-prefix")) || '
    '(resource.type != "compute.googleapis.com/Disk" && resource.type != "compute.googleapis.com/Instance")')
# https://cloud.google.com/storage/docs/access-control/iam#conditions: objects under a name prefix.
STORAGE_EXAMPLE = ('resource.type == "storage.googleapis.com/Object" && '
                   'resource.name.startsWith("projects/_/buckets/example-bucket/objects/example-object-prefix")')


@pytest.mark.parametrize("resource, granted", [
    ({"type": "compute.googleapis.com/Instance",
      "name": "projects/project-123/zones/us-central1-a/instances/example-prefix-vm"}, True),
    ({"type": "compute.googleapis.com/Instance", "name": "projects/project-123/zones/us-central1-a/instances/prod"},
     False),
    ({"type": "compute.googleapis.com/Disk", "name": "projects/project-123/regions/us-central1/disks/example-prefix1"},
     True),
    ({"type": "compute.googleapis.com/Disk", "name": "projects/project-123/zones/us-central1-a/disks/example-prefix1"},
     False),  # a zonal disk's name is not under the regional prefix
    ({"type": "compute.googleapis.com/Subnetwork", "name": "projects/project-123/regions/us-central1/subnetworks/x"},
     True),  # the last clause: types the condition does not restrict
])
def test_the_evaluator_on_the_compute_engine_example(resource, granted):
    assert evaluate(COMPUTE_EXAMPLE, resource) is granted


def test_the_evaluator_on_the_storage_example_and_refuses_what_iam_refuses():
    objects = "projects/_/buckets/example-bucket/objects/"
    assert evaluate(STORAGE_EXAMPLE, {"type": "storage.googleapis.com/Object", "name": objects + "example-object-prefix/a"})
    assert not evaluate(STORAGE_EXAMPLE, {"type": "storage.googleapis.com/Object", "name": objects + "other/a"})
    # The bucket itself, which listing is checked on, is no object: the object-name condition is false there.
    assert not evaluate(STORAGE_EXAMPLE, {"type": "storage.googleapis.com/Bucket",
                                          "name": "projects/_/buckets/example-bucket"})
    assert evaluate('resource.name == "a" || resource.name == "b" && resource.type == "t"', {"name": "a"})  # && first
    assert not evaluate('(resource.name == "a" || resource.name == "b") && resource.type == "t"', {"name": "a"})
    for malformed in ['resource.name = "a"', 'resource.name == "a" ||', '(resource.name == "a"',
                      'resource.labels.x == "a"', 'resource.name.startsWith("a"']:
        with pytest.raises(ConditionError):
            evaluate(malformed, {"name": "a"})
    with pytest.raises(ConditionError):
        IAM.grant(MEMBER, "roles/storage.objectViewer", "projects/p", 'resource.name ~ "a"')  # refused when set


def test_cloud_storage_checks_listing_on_the_bucket_and_a_replacing_write_needs_delete():
    def exists(bucket, name):
        return name == "jobs/j/HEAD"

    assert gcs_checks("GET", "/storage/v1/b/B/o", {"prefix": "jobs/j/"}, b"", exists) == [
        ("storage.objects.list", {"name": "projects/_/buckets/B", "type": "storage.googleapis.com/Bucket",
                                  "service": "storage.googleapis.com"})]
    body = b'--x\r\ncontent-type: application/json\r\n\r\n{"name": "jobs/j/HEAD"}\r\n--x\r\n\r\ndata\r\n--x--'
    made = gcs_checks("POST", "/upload/storage/v1/b/B/o", {"uploadType": "multipart"}, body, exists)
    assert [(p, r["name"]) for p, r in made] == [("storage.objects.create", "projects/_/buckets/B/objects/jobs/j/HEAD"),
                                                 ("storage.objects.delete", "projects/_/buckets/B/objects/jobs/j/HEAD")]
    assert [p for p, _ in gcs_checks("GET", "/download/storage/v1/b/B/o/jobs%2Fj%2Fx", {"alt": "media"}, b"",
                                     exists)] == ["storage.objects.get"]
    assert gcs_checks("POST", "/storage/v1/b/B/o/a/copyTo/b/C/o/d", {}, b"", exists) is None  # never made: refused


# --- the fakes refuse who IAM does not allow --------------------------------------------------------------
def job(**compute):
    return parse_job({"name": JOB_NAME, "checkpoint": {"bucket": BUCKET_URL},
                      "compute": {"cloud": "gcp", "region": "us-central1", **compute}})


def group():
    offer = {"cloud": "gcp", "region": "us-central1", "instance_type": "n1-standard-4", "gpu": None, "spot": True,
             "zones": ZONES}
    return dry_run_group("gcp", JOB, offer, job())


@pytest.fixture
def launched(gce, gcp_iam, gcs_proxy):
    """The job's groups and bucket, made by the launcher (the owner, through its ADC); its VM running."""
    from google.cloud import storage

    from nascloud.gcp_auth import gcp_credentials

    launcher = get_provisioner("gcp", region="us-central1", project=gce.project, service_account=ACCOUNT,
                               poll_seconds=0.05)
    launcher.create_groups([group()])
    (me,) = until(lambda: [i for g in launcher.groups(JOB) for i in g.live if i.state == State.RUNNING], "the VM",
                  timeout=20)
    credentials, _ = gcp_credentials()
    client = storage.Client(project=gce.project, credentials=credentials)
    client.lookup_bucket(BUCKET) or client.create_bucket(BUCKET)
    with gce.lock:
        raw = next(v for v in gce.instances.values() if v["id"] == me.instance_id)
    yield launcher, raw
    with gce.lock:  # the owner cleans up whatever the test refused the VM
        gce.groups.clear()
        gce.instances.clear()


@pytest.fixture
def vm(launched, gce, monkeypatch):
    """This process as the VM, whose metadata server serves the service account's token (issued by IAM).
    Yields the metadata server."""
    _, raw = launched
    zone = raw["zone"].rsplit("/", 1)[-1]
    token = IAM.token_for(MEMBER)
    with MetadataServer.gce(raw["id"], raw["name"], zone, "n1-standard-4", True, gce.project,
                            account=gce_token(token, ACCOUNT)) as server:
        act_as_the_vm(server, monkeypatch)
        server.access_token = token
        yield server


def grant(gce, zone: str, without: str = "", narrow: str = "") -> None:
    """Grant what the code builds, less one permission of the custom role or one bucket role (`without`),
    with one clause of a condition narrowed (`narrow`: the text in it that gets "-x" more, before a closing
    quote, so it names something else)."""
    narrowed = []

    def narrowing(expression: str) -> str:
        if narrow and narrow in expression:
            narrowed.append(narrow)
            return expression.replace(narrow, narrow.rstrip('"') + "-x" + '"' * narrow.endswith('"'))
        return expression

    role = instance_role(gce.project)
    IAM.create_role(f"projects/{gce.project}/roles/{role['roleId']}",
                    [p for p in role["role"]["includedPermissions"] if p != without])
    binding = identity_binding(gce.project, "us-central1", JOB_NAME, (zone,))
    IAM.grant(MEMBER, binding["role"], f"projects/{gce.project}", narrowing(binding["condition"]["expression"]))
    for found in bucket_bindings(BUCKET_URL, JOB_NAME):
        if found["role"] != without:
            condition = (found.get("condition") or {}).get("expression")
            IAM.grant(MEMBER, found["role"], f"projects/_/buckets/{BUCKET}", condition and narrowing(condition))
    assert bool(narrowed) == bool(narrow), f"{narrow!r} is in no condition"


def test_no_token_is_401_and_a_token_without_a_binding_is_403_in_compute_engines_json(launched, gce):
    from google.api_core.exceptions import Forbidden
    from google.cloud import compute_v1
    from google.oauth2.credentials import Credentials

    def client(credentials):
        return compute_v1.RegionInstanceGroupManagersClient(transport="rest", credentials=credentials,
                                                            client_options={"api_endpoint": gce.url})

    url = f"{gce.url}/compute/v1/projects/{gce.project}/regions/us-central1/instanceGroupManagers/{NAME}"
    with pytest.raises(urllib.error.HTTPError) as refused:  # no Authorization header at all
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401 and json.load(refused.value)["error"]["errors"][0]["reason"] == "required"
    forged = urllib.request.Request(url, headers={"Authorization": "Bearer ya29.nobody-issued-this"})
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(forged, timeout=10)
    with pytest.raises(Forbidden, match=f"{ACCOUNT} does not have compute.instanceGroupManagers.update access to "
                                        f"projects/{gce.project}/regions/us-central1/instanceGroupManagers/{NAME}"):
        client(Credentials(IAM.token_for(MEMBER))).resize(project=gce.project, region="us-central1",
                                                          instance_group_manager=NAME, size=5)
    with gce.lock:
        assert gce.groups["us-central1", NAME]["targetSize"] == 1  # refused: nothing done


def test_the_instance_calls_as_its_service_account_and_the_granted_binding_covers_what_it_does(launched, vm, gce):
    """whoami (instances.get), the resize with its reason and the waits on them (regionOperations.get), the
    on-demand switch (instanceTemplates.get, setInstanceTemplate with the template's use), and the bootstrap's
    own reason and resize: curl with the metadata token, as provisioners/scripts/bootstrap.sh sends them."""
    _, raw = launched
    zone = raw["zone"].rsplit("/", 1)[-1]
    instance = get_provisioner("gcp", region="us-central1", poll_seconds=0.05)
    with pytest.raises(CloudError, match="compute.instances.get"):  # nothing granted yet: refused
        instance.whoami(JOB, "search")
    grant(gce, zone)
    me = get_provisioner("gcp", region="us-central1", poll_seconds=0.05)
    assert me.whoami(JOB, "search").instance_id == raw["id"]
    me.use_on_demand(JOB, "search")
    me.resize(JOB, "search", 1, reason="still searching")
    with gce.lock:
        group = gce.groups["us-central1", NAME]
        assert group["instanceTemplate"].endswith(f"/{NAME}-standard") and group["description"] == "still searching"
    group_url = f"{gce.url}/compute/v1/projects/{gce.project}/regions/us-central1/instanceGroupManagers/{NAME}"
    bearer = {"Authorization": f"Bearer {vm.access_token}"}
    noted = urllib.request.Request(group_url, method="PATCH", data=json.dumps({"description": "a boot failed"}).encode(),
                                   headers={**bearer, "Content-Type": "application/json"})
    urllib.request.urlopen(noted, timeout=10).read()
    request = urllib.request.Request(f"{group_url}/resize?size=0", method="POST", data=b"", headers=bearer)
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert json.load(reply)["operationType"] == "compute.instanceGroupManagers.resize"
    gce.tick()  # let the operation finish (time passes at the server)
    until(lambda: gce.tick() or gce.groups["us-central1", NAME]["targetSize"] == 0, "the curl resize")


def test_growing_updating_or_deleting_the_group_beyond_the_custom_role_is_refused(launched, vm, gce):
    """The custom role, not roles/compute.instanceAdmin.v1: the VM cannot delete its group, make VMs or
    groups, or point its group at another template. A resize up it can still make: resize needs
    compute.instanceGroupManagers.update whatever the size (its reference's "IAM Permissions")."""
    from google.api_core.exceptions import Forbidden
    from google.cloud import compute_v1
    from google.oauth2.credentials import Credentials

    _, raw = launched
    zone = raw["zone"].rsplit("/", 1)[-1]
    grant(gce, zone)
    credentials = Credentials(vm.access_token)
    managers = compute_v1.RegionInstanceGroupManagersClient(transport="rest", credentials=credentials,
                                                            client_options={"api_endpoint": gce.url})
    with pytest.raises(Forbidden, match="compute.instanceGroupManagers.delete"):
        managers.delete(project=gce.project, region="us-central1", instance_group_manager=NAME)
    with pytest.raises(Forbidden, match="compute.instanceTemplates.useReadOnly"):
        managers.set_instance_template(
            project=gce.project, region="us-central1", instance_group_manager=NAME,
            region_instance_group_managers_set_template_request_resource={
                "instance_template": "global/instanceTemplates/someone-elses-template"})
    with pytest.raises(Forbidden, match="compute.instanceGroupManagers.create"):
        managers.insert(project=gce.project, region="us-central1", instance_group_manager_resource={
            "name": f"{NAME}-more", "base_instance_name": f"{NAME}-more", "target_size": 4,
            "instance_template": f"global/instanceTemplates/{NAME}"})
    instances = compute_v1.InstancesClient(transport="rest", credentials=credentials,
                                           client_options={"api_endpoint": gce.url})
    with pytest.raises(Forbidden, match="compute.instances.create"):
        instances.insert(project=gce.project, zone=zone, instance_resource={"name": f"{NAME}-x"})
    with pytest.raises(Forbidden, match="compute.instances.delete"):
        instances.delete(project=gce.project, zone=zone, instance=raw["name"])
    # With the old role the same condition let it delete the group.
    IAM.bindings.clear()
    binding = identity_binding(gce.project, "us-central1", JOB_NAME, (zone,))
    IAM.grant(MEMBER, "roles/compute.instanceAdmin.v1", f"projects/{gce.project}", binding["condition"]["expression"])
    managers.delete(project=gce.project, region="us-central1", instance_group_manager=NAME)


# --- each permission and each condition, removed or narrowed, refuses the call it covers ----------------------
def _whoami(gce):
    get_provisioner("gcp", region="us-central1", poll_seconds=0.05).whoami(JOB, "search")


def _resize(gce):
    get_provisioner("gcp", region="us-central1", project=gce.project, poll_seconds=0.05).resize(
        JOB, "search", 0, reason="a test")


def _on_demand(gce):
    me = get_provisioner("gcp", region="us-central1", project=gce.project, poll_seconds=0.05)
    me.use_on_demand(JOB, "search")


def _groups(gce):
    """What the governor lists at boot to close the ledger (the fallback counts its preemptions)."""
    get_provisioner("gcp", region="us-central1", project=gce.project, poll_seconds=0.05).groups(JOB)


COMPUTE_CASES = [  # (what is removed or narrowed, the call it covers, the permission refused)
    ("without compute.instanceGroupManagers.list", dict(without="compute.instanceGroupManagers.list"), _groups,
     "compute.instanceGroupManagers.list"),
    ("without compute.instances.list", dict(without="compute.instances.list"), _groups, "compute.instances.list"),
    ("without compute.globalOperations.list", dict(without="compute.globalOperations.list"), _groups,
     "compute.globalOperations.list"),
    ("narrowed: the project, where lists are checked", dict(narrow="cloudresourcemanager.googleapis.com/Project"),
     _groups, "compute.instanceGroupManagers.list"),
    ("narrowed: the templates' names, the Spot one", dict(narrow=f"instanceTemplates/{RUNS}"), _groups,
     "compute.instanceTemplates.get"),
    ("without compute.instances.get", dict(without="compute.instances.get"), _whoami, "compute.instances.get"),
    ("narrowed: the VMs' names", dict(narrow=f"/instances/{RUNS}"), _whoami, "compute.instances.get"),
    ("without compute.instanceGroupManagers.update", dict(without="compute.instanceGroupManagers.update"), _resize,
     "compute.instanceGroupManagers.update"),
    ("narrowed: the groups' names", dict(narrow=f"instanceGroupManagers/{RUNS}"), _resize,
     "compute.instanceGroupManagers.update"),
    ("without compute.regionOperations.get", dict(without="compute.regionOperations.get"), _resize,
     "compute.regionOperations.get"),
    ("narrowed: the region's operations", dict(narrow="regions/us-central1/operations"), _resize,
     "compute.regionOperations.get"),
    ("without compute.instanceTemplates.get", dict(without="compute.instanceTemplates.get"), _on_demand,
     "compute.instanceTemplates.get"),
    ("without compute.instanceTemplates.useReadOnly", dict(without="compute.instanceTemplates.useReadOnly"),
     _on_demand, "compute.instanceTemplates.useReadOnly"),
    ("narrowed: the templates' names, the on-demand one", dict(narrow=f"instanceTemplates/{RUNS}"), _on_demand,
     "compute.instanceTemplates.get"),
]


def test_every_permission_of_the_custom_role_is_one_the_cases_below_need():
    assert sorted({case[1].get("without") for case in COMPUTE_CASES} - {None}) == sorted(INSTANCE_PERMISSIONS)


@pytest.mark.parametrize("what, change, call, refused", COMPUTE_CASES, ids=[c[0] for c in COMPUTE_CASES])
def test_each_permission_and_condition_of_the_identity_binding_is_needed(launched, vm, gce, what, change, call,
                                                                          refused):
    _, raw = launched
    grant(gce, raw["zone"].rsplit("/", 1)[-1], **change)
    with pytest.raises(CloudError, match=refused.replace(".", r"\.")):
        call(gce)


def _store():
    from nascloud.checkpoints.gcs import GCSObjects

    return GCSObjects(BUCKET, f"jobs/{JOB}")


def _data_store():
    from nascloud.checkpoints.gcs import GCSObjects

    return GCSObjects(BUCKET, "jobs")


BUCKET_CASES = [  # (what, change, the call, the status or error it meets)
    ("without roles/storage.objectAdmin", dict(without="roles/storage.objectAdmin"),
     lambda: _store().put("agent/heartbeat.json", b"{}"), "403"),
    ("narrowed: the job name's prefix", dict(narrow=f"objects/jobs/{JOB_NAME}-"),
     lambda: _store().put("ledger/1.json", b"{}"), "403"),
    ("without roles/storage.objectViewer", dict(without="roles/storage.objectViewer"),
     lambda: _data_store().get("data/abc.npz"), "403"),
    ("narrowed: the data sets' prefix", dict(narrow="objects/jobs/data"), lambda: _data_store().get("data/abc.npz"),
     "403"),
    # The bootstrap's bundle_wheels, the store's listings and its missing-object check are bucket-level.
    ("without roles/storage.legacyBucketReader: listing", dict(without="roles/storage.legacyBucketReader"),
     lambda: _store().list("bundle/"), "403"),
    ("without roles/storage.legacyBucketReader: a missing record", dict(without="roles/storage.legacyBucketReader"),
     lambda: _store().get("agent/exit.json"), "403"),
]


@pytest.mark.parametrize("what, change, call, refused", BUCKET_CASES, ids=[c[0] for c in BUCKET_CASES])
def test_each_bucket_binding_is_needed(launched, vm, gce, what, change, call, refused):
    grant(gce, "us-central1-a")
    call()  # as the VM, with every binding: allowed
    IAM.bindings.clear()
    grant(gce, "us-central1-a", **change)
    with pytest.raises(CloudError, match=f"GCS refused a request on gs://{BUCKET}/jobs.*: {refused}"):
        call()


def test_an_object_name_condition_does_not_grant_listing(launched, vm, gce):
    """The README's earlier binding (objectAdmin conditioned on the job's prefix, nothing on the bucket):
    what the bootstrap's bundle_wheels lists (curl with the token) is refused; the bucket's own binding
    grants it."""
    objects = f"projects/_/buckets/{BUCKET}/objects/"
    IAM.grant(MEMBER, "roles/storage.objectAdmin", f"projects/_/buckets/{BUCKET}",
              f'resource.name.startsWith("{objects}jobs/{JOB}/")')
    store = _store()
    store.put("bundle/nascloud-1.0-py3-none-any.whl", b"wheel")  # the object itself: granted
    listing = (f"{os.environ['STORAGE_EMULATOR_HOST']}/storage/v1/b/{BUCKET}/o?prefix=jobs%2F{JOB}%2Fbundle%2F"
               "&delimiter=%2F&fields=items(name)")
    request = urllib.request.Request(listing, headers={"Authorization": f"Bearer {vm.access_token}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    assert json.load(refused.value)["error"]["errors"][0]["reason"] == "forbidden"
    IAM.grant(MEMBER, "roles/storage.legacyBucketReader", f"projects/_/buckets/{BUCKET}")
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert [i["name"] for i in json.load(reply)["items"]] == [f"jobs/{JOB}/bundle/nascloud-1.0-py3-none-any.whl"]


OFFER = {"cloud": "gcp", "region": "us-central1", "instance_type": "n1-standard-4", "gpu": "T4", "spot": True,
         "zones": ZONES}


def test_the_dry_run_shows_the_custom_role_and_the_bindings_as_the_code_builds_them(monkeypatch):
    monkeypatch.setenv("NASCLOUD_GCP_PROJECT", "my-project")
    request = launch_request(JOB, OFFER, job())
    assert request["service account role"]["role"]["includedPermissions"] == list(INSTANCE_PERMISSIONS)
    binding = request["service account binding"]
    assert binding == identity_binding("my-project", "us-central1", JOB_NAME, ("us-central1-a",))
    assert binding["role"] == "projects/my-project/roles/nascloudInstance"
    assert f'projects/my-project/zones/us-central1-a/instances/{RUNS}"' in binding["condition"]["expression"]
    assert request["bucket bindings"] == bucket_bindings(BUCKET_URL, JOB_NAME)
    assert [b["role"] for b in request["bucket bindings"]] == ["roles/storage.objectAdmin", "roles/storage.objectViewer",
                                                               "roles/storage.legacyBucketReader"]
    assert OWNER not in json.dumps(request)


def test_the_dry_runs_bindings_are_the_same_for_every_run_of_the_job_name(monkeypatch):
    """What the user grants is printed before the job's id exists (the dry run's placeholder NAME-xxxxxx): it
    must be what every launch of the name needs, whatever id the launch then draws."""
    from nascloud.provisioners import launch_request as dry_run_request

    monkeypatch.setenv("NASCLOUD_GCP_PROJECT", "my-project")
    printed = dry_run_request(job(), OFFER)
    for job_id in (JOB, f"{JOB_NAME}-ffffff"):
        launched = launch_request(job_id, OFFER, job())
        assert [launched[k] for k in ("service account role", "service account binding", "bucket bindings")] == [
            printed[k] for k in ("service account role", "service account binding", "bucket bindings")]


def grant_printed(request: dict) -> None:
    """The user's grants, copied from what `launch --dry-run` printed (README: gcloud iam roles create,
    projects add-iam-policy-binding, storage buckets add-iam-policy-binding)."""
    role, binding = request["service account role"], request["service account binding"]
    IAM.create_role(f"{role['parent']}/roles/{role['roleId']}", role["role"]["includedPermissions"])
    IAM.grant(MEMBER, binding["role"], role["parent"], binding["condition"]["expression"])
    for found in request["bucket bindings"]:
        condition = (found.get("condition") or {}).get("expression")
        IAM.grant(MEMBER, found["role"], f"projects/_/buckets/{BUCKET}", condition)


def test_what_the_dry_run_printed_before_the_launch_covers_the_launched_jobs_vm(launched, vm, gce, monkeypatch):
    """Granted from the dry run (before the id the launch drew existed), the VM reads itself, notes its reason
    and resizes its group, and writes its job's records: the first boot of a job is not one without
    permissions."""
    from nascloud.provisioners import launch_request as dry_run_request

    monkeypatch.setenv("NASCLOUD_GCP_PROJECT", gce.project)
    grant_printed(dry_run_request(job(), OFFER))
    me = get_provisioner("gcp", region="us-central1", project=gce.project, poll_seconds=0.05)
    assert me.whoami(JOB, "search").instance_id == launched[1]["id"]
    me.resize(JOB, "search", 0, reason="a test")
    _store().put("ledger/1.json", b"{}")
    with gce.lock:
        assert gce.groups["us-central1", NAME]["targetSize"] == 0


def test_what_is_granted_for_one_job_name_refuses_another_names_groups_and_objects(launched, vm, gce):
    """Granted for the job name digits-ia (a prefix of this job's name digits-iam, but not of nascloud-digits-iam-
    up to its hyphen): this job's VM, group and prefix are refused; granted for digits-iam, they are not."""
    from nascloud.checkpoints.gcs import GCSObjects

    zone = launched[1]["zone"].rsplit("/", 1)[-1]
    grant_job(IAM, gce.project, ACCOUNT, "digits-ia", BUCKET_URL, "us-central1", [zone])
    with pytest.raises(CloudError, match=r"compute\.instances\.get"):
        _whoami(gce)
    with pytest.raises(CloudError, match=r"compute\.instanceGroupManagers\.update"):
        _resize(gce)
    with pytest.raises(CloudError, match="403"):
        _store().put("ledger/1.json", b"{}")
    GCSObjects(BUCKET, "jobs/digits-ia-a1b2c3").put("ledger/1.json", b"{}")  # its own name's prefix: granted
    grant_job(IAM, gce.project, ACCOUNT, JOB_NAME, BUCKET_URL, "us-central1", [zone])
    _whoami(gce)
    _resize(gce)
    _store().put("ledger/1.json", b"{}")

"""GCP: a job group is a regional managed instance group over an instance template, through
google-cloud-compute's REST clients.

What a job creates, named nascloud-<job-id>-<group> and labelled nascloud-job / nascloud-owner /
nascloud-group: per group, two global instance templates (the offer's Spot or preemptible one, and a
STANDARD one the group may be switched to for the on-demand fallback) and the managed group, spread over
the offer's zones of the region, which recreates a VM that is preempted, stopped or deleted by anyone but
itself. The template holds the bootstrap as startup-script, the job's bucket URL (metadata
nascloud-job-url), onHostMaintenance TERMINATE, the accelerator, the service account and, with a budget or a
deadline, the launcher's backstop (scheduling.terminationTime, see _scheduling). With
compute.ssh_cidr set, also a firewall rule nascloud-<job-id> admitting 22/tcp from it to the job's network
tag; without, no inbound rule at all. Operations are waited on with our own operations clients: the
library's `.result()` would poll Google's real host whatever endpoint the clients were given.

NASCLOUD_GCE_ENDPOINT (e.g. http://127.0.0.1:PORT) points every client at another Compute Engine endpoint:
that is how the tests reach their local server, which checks the caller's token and IAM as Google does.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from nascloud.cloud_errors import one_line
from nascloud.cost import BOOT_DISK_GB
from nascloud.errors import CloudError, NascloudError, UsageError
from nascloud.gcp_auth import METADATA_ENV, gcp_credentials
from nascloud.provisioners.base import Group, GroupSpec, Instance, State
from nascloud.provisioners.common import (bootstrap_script, default_owner, dry_run_group, job_prefix, power_off,
                                          remove_job_keys, ssh_cidr)

ENDPOINT_ENV = "NASCLOUD_GCE_ENDPOINT"
METADATA_URL = "http://metadata.google.internal/computeMetadata/v1"
# Deep Learning VM image family with CUDA and the NVIDIA driver installer, as listed on
# https://cloud.google.com/deep-learning-vm/docs/images (families are renamed over time); compute.image
# overrides it.
DEFAULT_IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu124-debian-11-py310"
JOB_LABEL, OWNER_LABEL, GROUP_LABEL = "nascloud-job", "nascloud-owner", "nascloud-group"
JOB_URL_KEY = "nascloud-job-url"  # metadata (labels cannot hold a URL): where `gc` finds the job's bucket
ACCELERATORS = {"T4": "nvidia-tesla-t4", "V100": "nvidia-tesla-v100", "P100": "nvidia-tesla-p100",
                "P4": "nvidia-tesla-p4", "L4": "nvidia-l4", "A100": "nvidia-tesla-a100",
                "A100-80GB": "nvidia-a100-80gb", "H100": "nvidia-h100-80gb"}
BUILT_IN_GPU = ("g2-", "a2-", "a3-")  # these machine types come with their GPUs attached
PREEMPTED_OP = "compute.instances.preempted"
# The instance resizes its own group (IAM on the service account decides what it may do) and uses the bucket.
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


def group_name(job_id: str, group: str) -> str:
    """The managed group's name, its VMs' base name and its (Spot) template's name."""
    return f"nascloud-{job_id}-{group}"


def standard_template(job_id: str, group: str) -> str:
    """The on-demand (STANDARD) template made beside the Spot one, for the fallback switch."""
    return f"{group_name(job_id, group)}-standard"


def _check_names(job_id: str, group: str) -> None:
    """GCE names have at most 63 characters, a group's base instance name 58 (its VMs add "-xxxx")."""
    longest = max(len(standard_template(job_id, group)) - 63, len(group_name(job_id, group)) - 58)
    if longest > 0:
        raise UsageError(f"the job's GCP names (e.g. {standard_template(job_id, group)}) exceed GCE's 63 characters; "
                         f"shorten the job's name by {longest} character{'s' * (longest > 1)} (name in the job file)")


def _of_job(name: str, job_id: str, parts: int) -> bool:
    """Whether a group's (parts=1) or its VM's (parts=2) name is this job's: group names have no '-', so
    another job whose id merely starts with this one's is not taken for it."""
    prefix = f"nascloud-{job_id}-"
    return name.startswith(prefix) and name[len(prefix):].count("-") == parts - 1


def _firewall(job_id: str) -> str:
    return f"nascloud-{job_id}"


def _text(error: Exception) -> str:
    """A failure's cause in one line: the REST transport's message starts with the request ("POST https://...: "),
    the cause is what follows."""
    return one_line(re.sub(r"^[A-Z]+ \S+: ", "", getattr(error, "message", None) or str(error)))


def _error(error: Exception, what: str) -> NascloudError:
    from google.api_core import exceptions

    if isinstance(error, NascloudError):
        return error
    if isinstance(error, exceptions.RetryError):  # only throttling is retried (_throttled): it outlasted the cap
        return CloudError(f"GCP kept refusing {what} as over its rate quota for {THROTTLED_SECONDS:.0f}s "
                          f"({_text(error.cause)}); try again in a few minutes")
    reason = getattr(error, "reason", None) or ""
    text = _text(error)
    if isinstance(error, exceptions.Forbidden) and "quota" in (reason + text).lower():
        return CloudError(f"GCP quota stops {what}: {text}; request more under IAM & Admin > Quotas")
    if isinstance(error, (exceptions.Unauthorized, exceptions.Forbidden)):
        return CloudError(f"GCP refused {what} ({text}); check your credentials and the permissions listed in the "
                          "README, 'Providers and permissions'")
    return CloudError(f"GCP {what} failed: {text}")


# Compute Engine refuses a call over a rate quota with 403 rateLimitExceeded, and the quota refills at the
# next minute (https://cloud.google.com/compute/api-quota: "you receive a 403 error with the reason
# rateLimitExceeded ... wait a minute then try your request again"); Google's APIs also answer 429. So
# every call retries those with google-api-core's backoff (0.5 s doubling up to 16 s, random within each)
# for at most 90 s, one refill and a half. api-core caps the time, not the attempts (googleapis/
# python-api-core#535): within 90 s that is at least 10 attempts, about 16 on average.
RATE_LIMIT_REASONS = {"rateLimitExceeded", "userRateLimitExceeded"}
THROTTLED_SECONDS = 90.0


def _throttled(error: Exception) -> bool:
    from google.api_core import exceptions

    if isinstance(error, exceptions.TooManyRequests):
        return True
    return isinstance(error, exceptions.Forbidden) and any(
        isinstance(e, dict) and e.get("reason") in RATE_LIMIT_REASONS for e in error.errors)


class _Retrying:
    """A compute_v1 client whose every method retries throttling (each GAPIC method takes `retry`; the
    clients have no default for all of them)."""

    def __init__(self, client, retry):
        self._client, self._retry = client, retry

    def __getattr__(self, name: str):
        return functools.partial(getattr(self._client, name), retry=self._retry)


def _gpu_quota_metric(gpu: str, spot: bool) -> str:
    return f"{'PREEMPTIBLE_' if spot else ''}NVIDIA_{gpu.upper().replace('-', '_')}_GPUS"


def quota_metrics(offer: dict, spec) -> list[tuple[str, Optional[str]]]:
    """The GPU quotas preflight reads, as (metric, region, or None for the project's): GPUS_ALL_REGIONS, the
    project's cap (0 in a new one), and the region's metric for the group's market; with
    compute.on_demand_after_preemptions on a Spot group the on-demand one too, which its fallback runs on."""
    if not offer.get("gpu"):
        return []
    spot = bool(offer.get("spot"))
    markets = [True, False] if spot and spec.compute.on_demand_after_preemptions else [spot]
    return [("GPUS_ALL_REGIONS", None)] + [(_gpu_quota_metric(offer["gpu"], m), _region(offer)) for m in markets]


def _accelerator(gpu: str) -> str:
    if gpu.upper() not in ACCELERATORS:
        raise UsageError(f"unknown GPU {gpu!r} for GCP; use one of {', '.join(ACCELERATORS)} (compute.gpu)")
    return ACCELERATORS[gpu.upper()]


def _region(offer: dict) -> str:
    region = offer.get("region") or (offer.get("zone") or "")[:-2]
    if not region:
        raise UsageError("GCP groups live in a region: set compute.region (e.g. us-central1)")
    return region


def _zones(offer: dict) -> list[str]:
    """The zones the group may place VMs in: the offer's price table (cheapest first), else its zone."""
    region = _region(offer)
    zones = [z["zone"] for z in offer.get("zones", ()) if z.get("zone")] or \
        ([offer["zone"]] if offer.get("zone") else [])
    for zone in zones:
        if not zone.startswith(region + "-"):
            raise UsageError(f"zone {zone} is not in region {region}; fix compute.zone or compute.region")
    return zones


# The launcher's backstop (README "When a boot fails"; GroupSpec.stop_at) is the templates' terminationTime,
# which no identity of the VMs can move: "When the MIG creates VMs based on the template, the time limit is
# applied to each VM", and "When a VM reaches its time limit, the MIG automatically terminates (deletes) that
# VM" (https://cloud.google.com/compute/docs/instance-groups/limit-vm-runtime-in-migs). A time limit is 30 s
# to 120 days and legacy preemptible VMs take none (https://cloud.google.com/compute/docs/instances/
# limit-vm-runtime, "Restrictions"): so from 30 s before that time on no VM of the template can be made, and
# a group on legacy preemptible VMs has the backstop on its on-demand template only.
TIME_LIMIT_MAX_SECONDS = 120 * 86400


def _termination_time(stop_at: float) -> str:
    """stop_at as RFC 3339, no later than the longest time limit a VM made from now on may have."""
    return datetime.fromtimestamp(min(stop_at, time.time() + TIME_LIMIT_MAX_SECONDS), timezone.utc).isoformat(
        timespec="seconds")


def _scheduling(spot: bool, preemptible: bool, stop_at: Optional[float] = None) -> dict:
    if spot and preemptible:
        return {"preemptible": True, "automaticRestart": False, "onHostMaintenance": "TERMINATE"}
    if spot:
        # STOP, not DELETE: the group sees a stopped member and recreates it, as after any failure.
        scheduling = {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP", "automaticRestart": False,
                      "onHostMaintenance": "TERMINATE"}
    else:
        scheduling = {"provisioningModel": "STANDARD", "automaticRestart": True, "onHostMaintenance": "TERMINATE"}
    if stop_at:
        scheduling["terminationTime"] = _termination_time(stop_at)
    return scheduling


def requests(group: GroupSpec, image: str, service_account: Optional[str], cidr: Optional[str]) -> dict:
    """Every request create_groups makes for one group, as the API receives it (the dry run prints them)."""
    offer, spec, job_id = group.offer, group.spec, group.job_id
    name = group_name(job_id, group.name)
    labels = {JOB_LABEL: job_id, OWNER_LABEL: str(group.tags.get("nascloud-owner") or default_owner()),
              GROUP_LABEL: group.name}
    items = [{"key": "startup-script", "value": bootstrap_script(group.bootstrap_env)},
             {"key": JOB_URL_KEY, "value": job_prefix(spec, job_id, "gs").url}]
    if offer.get("gpu"):
        items.append({"key": "install-nvidia-driver", "value": "True"})
    if cidr:  # the instance admits only the bundle's key: no project-wide key may log in through port 22
        items.append({"key": "block-project-ssh-keys", "value": "true"})

    def template(template_name: str, spot: bool) -> dict:
        properties = {
            "machineType": offer["instance_type"],
            "labels": labels,
            "disks": [{"boot": True, "autoDelete": True,
                       "initializeParams": {"sourceImage": image, "diskSizeGb": str(int(BOOT_DISK_GB))}}],
            "networkInterfaces": [{"network": "global/networks/default",
                                   "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]}],
            "scheduling": _scheduling(spot, spec.compute.provisioning == "preemptible", group.stop_at),
            "metadata": {"items": items},
        }
        if cidr:
            properties["tags"] = {"items": [_firewall(job_id)]}
        if offer.get("gpu") and not offer["instance_type"].startswith(BUILT_IN_GPU):
            properties["guestAccelerators"] = [{"acceleratorType": _accelerator(offer["gpu"]),
                                                "acceleratorCount": int(offer.get("gpu_count") or 1)}]
        if service_account:
            properties["serviceAccounts"] = [{"email": service_account, "scopes": SCOPES}]
        return {"name": template_name, "description": f"nascloud {job_id} {group.name}", "properties": properties}

    spot = bool(offer.get("spot"))
    templates = [template(name, spot)] + ([template(standard_template(job_id, group.name), False)] if spot else [])
    manager = {"name": name, "baseInstanceName": name, "instanceTemplate": f"global/instanceTemplates/{name}",
               "targetSize": group.size, "description": "",
               # A repair recreates a preempted VM from the template it was made from unless this is YES
               # (cloud.google.com/compute/docs/instance-groups/update-on-repair): with it, use_on_demand's
               # setInstanceTemplate takes effect at the next preemption, and the running VM stays.
               "instanceLifecyclePolicy": {"forceUpdateOnRepair": "YES", "defaultActionOnFailure": "REPAIR"},
               "distributionPolicy": {"targetShape": "ANY", "zones": [
                   {"zone": f"zones/{zone}"} for zone in _zones(offer)]}}
    made = {"instanceTemplates.insert": templates, "regionInstanceGroupManagers.insert": manager}
    if cidr:
        made["firewalls.insert"] = {
            "name": _firewall(job_id), "network": "global/networks/default", "direction": "INGRESS",
            "description": f"nascloud {job_id}: SSH from {cidr} only",
            "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}], "sourceRanges": [cidr],
            "targetTags": [_firewall(job_id)]}
    return made


# The instance's own calls, each named by its API reference's "IAM Permissions": whoami reads its VM
# (instances.get); resize and the reason patch its group (regionInstanceGroupManagers.resize and .patch:
# compute.instanceGroupManagers.update), and it waits on their region operations (regionOperations.get);
# the on-demand fallback reads the STANDARD template and points the group at it (setInstanceTemplate:
# update, and compute.instanceTemplates.useReadOnly on that template); at boot it lists the job's groups,
# VMs and preemptions to close the ledger, whose preemption count the fallback reads (instanceGroupManagers
# .list, instances.aggregatedList, globalOperations.aggregatedList: checked on the project), and reads the
# groups' templates. Not roles/compute.instanceAdmin.v1, which also lets it create, delete and update any
# group or VM the condition names.
INSTANCE_ROLE_ID = "nascloudInstance"
INSTANCE_PERMISSIONS = ("compute.globalOperations.list", "compute.instanceGroupManagers.list",
                        "compute.instanceGroupManagers.update", "compute.instanceTemplates.get",
                        "compute.instanceTemplates.useReadOnly", "compute.instances.get", "compute.instances.list",
                        "compute.regionOperations.get")


def instance_role(project: str) -> dict:
    """The custom role the service account is granted (projects.roles.create's body; `gcloud iam roles create
    nascloudInstance --project=PROJECT --permissions=...` makes it), one per project for every job."""
    return {"parent": f"projects/{project}", "roleId": INSTANCE_ROLE_ID,
            "role": {"title": "nascloud instance", "stage": "GA", "includedPermissions": list(INSTANCE_PERMISSIONS),
                     "description": "What a nascloud VM does to its own job's group: resize it, note the reason, "
                                    "switch it to its on-demand template; read itself and the operations"}}


def identity_binding(project: str, region: str, job_name: str, zones: tuple = ()) -> dict:
    """The project binding the service account needs for every run of a job name, granted by the user (who
    owns the project's IAM) once, before the first launch: a job's id (NAME-6 random hex digits) is made at
    launch and its first VM boots seconds after its group exists, too soon to grant anything for that id.
    The custom role above, conditioned on the name's prefix: the runs' groups and their two templates
    (nascloud-NAME-...), the groups' VMs in the offer's zones (the VM reads itself), the region's operations
    (names GCE picks; reading one reveals only its progress) and the project, where the lists are checked (of
    the role's permissions only those are checked there). The prefix also covers a job named NAME-MORE.
    IAM Conditions see these names and types as
    https://cloud.google.com/iam/docs/conditions-resource-attributes writes them."""
    runs = group_name(job_name, "")  # nascloud-NAME-: every job id and group of the name follows it
    names = [f'resource.name.startsWith("projects/{project}/regions/{region}/instanceGroupManagers/{runs}")',
             # the on-demand fallback points the group at its STANDARD template: using it is checked on it
             f'resource.name.startsWith("projects/{project}/global/instanceTemplates/{runs}")']
    names += [f'resource.name.startsWith("projects/{project}/zones/{zone}/instances/{runs}")' for zone in zones]
    names.append(f'resource.name.startsWith("projects/{project}/regions/{region}/operations/")')
    names.append('resource.type == "cloudresourcemanager.googleapis.com/Project"')
    return {"role": f"projects/{project}/roles/{INSTANCE_ROLE_ID}", "condition": {
        "title": f"nascloud {job_name} jobs", "expression": " || ".join(names)}}


def bucket_bindings(bucket_url: str, job_name: str) -> list[dict]:
    """The bucket bindings the service account needs for every run of a job name (gcloud storage buckets
    add-iam-policy-binding; bucket_url: the job file's checkpoint.bucket, gs://BUCKET/PREFIX): the runs'
    prefixes (PREFIX/NAME-...) read and written; the data sets beside them (PREFIX/data/, written by launch)
    read only; and the bucket itself read. Listing is checked on the bucket, not on object names, so no
    object-name condition grants it (https://cloud.google.com/storage/docs/access-control/iam#conditions):
    the bootstrap's wheel listing and the store's prefix listings need legacyBucketReader
    (storage.objects.list and storage.buckets.get, which the store reads to tell a missing object from a
    missing bucket)."""
    bucket, _, prefix = bucket_url.removeprefix("gs://").partition("/")
    prefix = prefix.strip("/")
    objects = f"projects/_/buckets/{bucket}/objects/{prefix}/" if prefix else f"projects/_/buckets/{bucket}/objects/"
    return [{"role": "roles/storage.objectAdmin", "condition": {
                "title": f"nascloud {job_name} jobs",
                "expression": f'resource.name.startsWith("{objects}{job_name}-")'}},
            {"role": "roles/storage.objectViewer", "condition": {
                "title": "nascloud data sets", "expression": f'resource.name.startsWith("{objects}data/")'}},
            {"role": "roles/storage.legacyBucketReader"}]


def launch_request(job_id: str, offer, spec) -> dict:
    """What create_groups would send for the job's search group, with no credentials and no network."""
    group = dry_run_group("gcp", job_id, offer, spec)
    project = os.environ.get("NASCLOUD_GCP_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT") or "<your project>"
    account = os.environ.get("NASCLOUD_GCP_SERVICE_ACCOUNT") or "<NASCLOUD_GCP_SERVICE_ACCOUNT>"
    made = requests(group, spec.compute.image or DEFAULT_IMAGE, account, spec.compute.ssh_cidr)
    region = _region(group.offer)
    return {"cloud": "gcp", "project": project, "region": region, **made,
            "service account role": instance_role(project),
            # granted before the launch, for every run of the job's name: what the user grants, exactly
            "service account binding": identity_binding(project, region, spec.name, tuple(_zones(group.offer))),
            "bucket bindings": bucket_bindings(spec.checkpoint.bucket, spec.name),
            "quotas (preflight)": [f"{metric} in {where or 'the project'}"
                                   for metric, where in quota_metrics(group.offer, spec)]}


def _timestamp(value: Optional[str]) -> Optional[float]:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


class GcpProvisioner:
    cloud = "gcp"

    def __init__(self, region: Optional[str] = None, project: Optional[str] = None, home: Optional[Path] = None,
                 owner: Optional[str] = None, service_account: Optional[str] = None, endpoint: Optional[str] = None,
                 timeout: float = 600.0, poll_seconds: float = 2.0):
        """region: where the job's groups live (an observer passes the bundle's). service_account: the
        identity the VMs get (README: limit it to the bucket prefix and the job's groups); without one a VM
        cannot reach the bucket, so preflight refuses."""
        self.region = region
        self.regions = {region} if region else set()
        self.project = project or os.environ.get("NASCLOUD_GCP_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT")
        self.home = home
        self.owner = owner or default_owner()
        self.service_account = service_account or os.environ.get("NASCLOUD_GCP_SERVICE_ACCOUNT")
        self.endpoint = endpoint or os.environ.get(ENDPOINT_ENV)
        self._timeout = timeout
        self._poll = poll_seconds
        self._clients: dict[str, object] = {}
        self._credentials = None
        self._templates: dict[str, object] = {}  # name -> template, read once (templates never change)

    def _client(self, kind: str):
        """A compute_v1 REST client; every one gets the same endpoint and credentials."""
        if kind not in self._clients:
            from google.api_core.retry import Retry
            from google.cloud import compute_v1

            if self._credentials is None:
                self._credentials = self._authenticate()
            options = {"api_endpoint": self.endpoint} if self.endpoint else None
            client = getattr(compute_v1, kind)(transport="rest", credentials=self._credentials,
                                               client_options=options)
            self._clients[kind] = _Retrying(client, Retry(predicate=_throttled, initial=0.5, multiplier=2.0,
                                                          maximum=16.0, timeout=THROTTLED_SECONDS))
        return self._clients[kind]

    def _authenticate(self):
        # Under a test endpoint too: the fakes check who calls (on a VM, its service account's token).
        credentials, project = gcp_credentials(SCOPES)
        self.project = self.project or project
        if not self.project:
            raise UsageError("no GCP project: set NASCLOUD_GCP_PROJECT or `gcloud config set project ...`")
        return credentials

    def _call(self, what: str, kind: str, method: str, **params):
        if "request" not in params:  # a request object carries its project itself
            params["project"] = self.project
        try:
            return getattr(self._client(kind), method)(**params)
        except Exception as error:
            raise _error(error, what) from None

    def _wait(self, operation, what: str, zone: Optional[str] = None, region: Optional[str] = None) -> None:
        """Wait on an operation with our own operations client (never .result()), then read its error."""
        from google.cloud import compute_v1

        deadline = time.monotonic() + self._timeout
        while operation.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() > deadline:
                raise CloudError(f"GCP {what} did not finish in {self._timeout:.0f}s (operation {operation.name})")
            if zone:
                operation = self._call(what, "ZoneOperationsClient", "wait", zone=zone, operation=operation.name)
            elif region:
                operation = self._call(what, "RegionOperationsClient", "wait", region=region,
                                       operation=operation.name)
            else:
                operation = self._call(what, "GlobalOperationsClient", "wait", operation=operation.name)
        errors = list(operation.error.errors) if operation.error else []
        if errors:
            code, message = errors[0].code, one_line(errors[0].message)
            if code == "QUOTA_EXCEEDED":
                raise CloudError(f"GCP quota stops {what}: {message}; request more under IAM & Admin > Quotas")
            raise CloudError(f"GCP {what} failed: {code}: {message}")

    def _insert(self, what: str, kind: str, resource: str, body: dict, message, region: Optional[str] = None) -> bool:
        """Insert unless it exists (made by an earlier launch of the same job: left as it is); whether it was made."""
        from google.api_core.exceptions import Conflict

        params = {resource: message.from_json(json.dumps(body))}
        if region:
            params["region"] = region
        try:
            operation = getattr(self._client(kind), "insert_unary")(project=self.project, **params)
        except Conflict:
            return False
        except Exception as error:
            raise _error(error, what) from None
        self._wait(operation, what, region=region)
        return True

    # --- launch ---------------------------------------------------------------------------------------
    def _check_offer(self, offer: dict) -> str:
        """The region, zones, machine type and GPU exist (UsageError otherwise); returns the region."""
        from google.api_core.exceptions import NotFound

        region = _region(offer)
        if not offer.get("instance_type"):
            raise UsageError("no GCP machine type: set compute.instance_type (e.g. n1-standard-4) or compute.gpu")
        zones = _zones(offer) or [f"{region}-a"]
        checks = [("region", "RegionsClient", {"region": region},
                   f"unknown GCP region {region!r}; use one like us-central1 (compute.region)")]
        checks += [("zone", "ZonesClient", {"zone": z}, f"unknown GCP zone {z!r}; use one like us-central1-a "
                                                         "(compute.zone)") for z in zones]
        checks.append(("machine type", "MachineTypesClient", {"zone": zones[0], "machine_type": offer["instance_type"]},
                       f"unknown GCP machine type {offer['instance_type']!r} in {zones[0]}; use one like n1-standard-4"))
        if offer.get("gpu") and not offer["instance_type"].startswith(BUILT_IN_GPU):
            checks.append(("GPU", "AcceleratorTypesClient", {"zone": zones[0],
                                                             "accelerator_type": _accelerator(offer["gpu"])},
                           f"no {offer['gpu']} GPUs in {zones[0]}; try another zone (compute.zone)"))
        for what, kind, params, message in checks:
            try:
                self._client(kind).get(project=self.project, **params)
            except NotFound:
                raise UsageError(message) from None
            except Exception as error:
                raise _error(error, f"looking up the {what}") from None
        self.regions.add(region)
        return region

    def preflight(self, groups: list[GroupSpec]) -> None:
        for group in groups:
            offer = group.offer
            _check_names(group.job_id, group.name)
            region = self._check_offer(offer)
            job_prefix(group.spec, group.job_id, "gs")
            if not self.service_account:  # the VM would boot, bill, and fail to reach the bucket
                raise UsageError("a GCP instance reaches the bucket as a service account: set "
                                 "NASCLOUD_GCP_SERVICE_ACCOUNT to one limited to the jobs' prefix (README: GCP)")
            if not offer.get("gpu"):
                continue
            spot, needed = bool(offer.get("spot")), int(offer.get("gpu_count") or 1) * max(group.size, 1)
            project = self._call("reading the project's quotas", "ProjectsClient", "get")
            found = self._call("reading the region's quotas", "RegionsClient", "get", region=region)
            for metric, where in quota_metrics(offer, group.spec):
                other = "" if not where else ", or try another region" + (
                    " or on-demand (compute.spot: false)" if metric.startswith("PREEMPTIBLE_") else
                    " or unset compute.on_demand_after_preemptions" if spot else "")
                quota = next((q for q in (found if where else project).quotas if q.metric == metric), None)
                if quota is not None and quota.limit - quota.usage < needed:
                    raise CloudError(f"your GCP quota {metric} in {where or 'the project'} is {quota.limit:g} with "
                                     f"{quota.usage:g} in use (new projects start at 0); request more under IAM & "
                                     f"Admin > Quotas{other}")

    def create_groups(self, groups: list[GroupSpec]) -> None:
        if not groups:
            return
        try:
            for group in groups:
                self._create(group)
        except NascloudError:
            self.delete(groups[0].job_id)  # a group that cannot be made leaves nothing behind
            raise

    def _create(self, group: GroupSpec) -> None:
        from google.cloud import compute_v1

        spec, job_id = group.spec, group.job_id
        _check_names(job_id, group.name)
        region = self._check_offer(group.offer)
        cidr = ssh_cidr(spec, lambda: "") if spec.compute.ssh_cidr else None
        made = requests(group, spec.compute.image or DEFAULT_IMAGE, self.service_account, cidr)
        if cidr:
            self._insert("creating the firewall rule", "FirewallsClient", "firewall_resource",
                         made["firewalls.insert"], compute_v1.Firewall)
        templates = made["instanceTemplates.insert"]
        kept = [t for t in templates if not self._insert(f"creating the instance template {t['name']}",
                                                         "InstanceTemplatesClient", "instance_template_resource",
                                                         t, compute_v1.InstanceTemplate)]
        if self._other_backstop(kept):
            # A resume of a job whose group is still there (at 0): a template cannot change, nor be deleted
            # while a group uses it, so the group and those templates are made anew with the new time.
            manager = made["regionInstanceGroupManagers.insert"]["name"]
            self._delete("RegionInstanceGroupManagersClient", {"region": region, "instance_group_manager": manager},
                         f"deleting {manager}", region=region)
            for template in kept:
                self._delete("InstanceTemplatesClient", {"instance_template": template["name"]},
                             f"deleting {template['name']}")
                self._templates.pop(template["name"], None)
                self._insert(f"creating the instance template {template['name']}", "InstanceTemplatesClient",
                             "instance_template_resource", template, compute_v1.InstanceTemplate)
        self._insert(f"creating the managed instance group {made['regionInstanceGroupManagers.insert']['name']}",
                     "RegionInstanceGroupManagersClient", "instance_group_manager_resource",
                     made["regionInstanceGroupManagers.insert"], compute_v1.InstanceGroupManager, region=region)

    def _other_backstop(self, templates: list[dict]) -> bool:
        """Whether any of these templates, as GCE holds them, ends its VMs at another time than asked."""
        for template in templates:
            held = self._template(template["name"]).properties.scheduling.termination_time
            if _timestamp(held or None) != _timestamp(template["properties"]["scheduling"].get("terminationTime")):
                return True
        return False

    # --- observe and resize ---------------------------------------------------------------------------
    def _managers(self, region: str, job_id: Optional[str]) -> list:
        pages = self._call("listing managed instance groups", "RegionInstanceGroupManagersClient", "list",
                           region=region)
        try:
            return [m for m in pages if _of_job(m.name, job_id, 1) or (not job_id and m.name.startswith("nascloud-"))]
        except Exception as error:
            raise _error(error, "listing managed instance groups") from None

    def _template(self, name: str):
        if name not in self._templates:
            self._templates[name] = self._call("reading the instance template", "InstanceTemplatesClient", "get",
                                               instance_template=name)
        return self._templates[name]

    def _instance(self, raw, state: State, ended_at: Optional[float]) -> Instance:
        zone = raw.zone.rsplit("/", 1)[-1]
        return Instance(
            instance_id=str(raw.id), job_id=raw.labels.get(JOB_LABEL, ""), group=raw.labels.get(GROUP_LABEL, ""),
            cloud="gcp", region=zone[:-2], zone=zone, instance_type=raw.machine_type.rsplit("/", 1)[-1],
            spot=raw.scheduling.provisioning_model == "SPOT" or bool(raw.scheduling.preemptible), state=state,
            launched_at=_timestamp(raw.creation_timestamp), ended_at=ended_at)

    def groups(self, job_id: str) -> list[Group]:
        """Per region one list of managed groups; for all regions one aggregated list of the job's VMs and
        one of preemptions (a preempted VM the group has already recreated is only seen there); each
        template is read once."""
        from google.cloud import compute_v1

        managers = [(region, m) for region in sorted(self.regions) for m in self._managers(region, job_id)]
        if not managers:
            return []
        request = compute_v1.AggregatedListInstancesRequest(project=self.project,
                                                            filter=f'labels.{JOB_LABEL} = "{job_id}"')
        pages = self._call("listing instances", "InstancesClient", "aggregated_list", request=request)
        operations = compute_v1.AggregatedListGlobalOperationsRequest(project=self.project,
                                                                      filter=f'operationType = "{PREEMPTED_OP}"')
        ops = self._call("listing preemptions", "GlobalOperationsClient", "aggregated_list", request=operations)
        try:
            vms = [i for _, scoped in pages for i in scoped.instances]
            preempted = {op.target_id: op for _, scoped in ops for op in scoped.operations
                         if _of_job(op.target_link.rsplit("/", 1)[-1], job_id, 2)}
        except Exception as error:
            raise _error(error, "listing instances") from None
        seen, by_group = set(), {}
        for raw in vms:
            seen.add(str(raw.id))
            op = preempted.get(raw.id)
            if raw.status == "RUNNING":
                state, ended = State.RUNNING, None
            elif raw.status in ("PROVISIONING", "STAGING"):
                state, ended = State.PENDING, None
            else:  # TERMINATED (stopped), STOPPING, SUSPENDED: gone for the job
                state = State.PREEMPTED if op else State.TERMINATED
                ended = _timestamp(op.insert_time) if op else _timestamp(raw.last_stop_timestamp or None)
            by_group.setdefault(raw.labels.get(GROUP_LABEL, ""), []).append(self._instance(raw, state, ended))
        result = []
        for region, manager in managers:
            template = self._template(manager.instance_template.rsplit("/", 1)[-1])
            name = manager.name.removeprefix(f"nascloud-{job_id}-")
            ended = [self._preempted(op, job_id, name, template) for op in preempted.values()
                     if str(op.target_id) not in seen and op.target_link.rsplit("/", 1)[-1].startswith(manager.name + "-")]
            instances = sorted(by_group.get(name, []) + ended, key=lambda i: i.launched_at or i.ended_at or 0)
            result.append(Group(job_id=job_id, name=name, size=manager.target_size, instances=tuple(instances),
                                reason=manager.description or None))
        return sorted(result, key=lambda g: g.name)

    @staticmethod
    def _preempted(op, job_id: str, group: str, template) -> Instance:
        """A VM known only from its preemption (the group has recreated it since): its end is the op's."""
        zone = op.zone.rsplit("/", 1)[-1]
        scheduling = template.properties.scheduling
        return Instance(instance_id=str(op.target_id), job_id=job_id, group=group, cloud="gcp", region=zone[:-2],
                        zone=zone, instance_type=template.properties.machine_type,
                        spot=scheduling.provisioning_model == "SPOT" or bool(scheduling.preemptible),
                        state=State.PREEMPTED, launched_at=None, ended_at=_timestamp(op.insert_time))

    def revive(self, job_id: str) -> list[str]:
        """The managed instance group is the cloud's own engine: nothing of ours to start again."""
        return []

    def resize(self, job_id: str, group: str, size: int, reason: Optional[str] = None) -> None:
        from google.api_core.exceptions import NotFound
        from google.cloud import compute_v1

        name = group_name(job_id, group)
        for region in sorted(self.regions):
            client = self._client("RegionInstanceGroupManagersClient")
            try:
                # The resize first: it is what stops the bill; the reason is for observers.
                operation = client.resize_unary(project=self.project, region=region, instance_group_manager=name,
                                                size=size)
                if reason:  # the group's description carries it to every observer
                    noted = client.patch_unary(project=self.project, region=region, instance_group_manager=name,
                                               instance_group_manager_resource=compute_v1.InstanceGroupManager(
                                                   description=reason[:2048]))
            except NotFound:
                continue  # a missing group is success
            except Exception as error:
                raise _error(error, f"resizing {name}") from None
            self._wait(operation, f"resizing {name}", region=region)
            if reason:
                self._wait(noted, "noting the reason", region=region)

    def spot_prices(self, region: str, instance_type: str, zone: Optional[str], start: float,
                    end: float) -> Optional[list[tuple[float, float]]]:
        """Compute Engine changes Spot prices at most once every 30 days (cloud.google.com/skus: "Spot prices are
        dynamic and can change up to once every 30 days") and its API keeps no history of them: the launch
        price is the bill unless a change fell within the VM's life."""
        return None

    def use_on_demand(self, job_id: str, group: str) -> None:
        """The group's later VMs from the STANDARD template made at launch (a VM it recreates after a
        preemption comes from it; the running ones stay as they are). A group launched on-demand has none."""
        from google.api_core.exceptions import NotFound

        name, template = group_name(job_id, group), standard_template(job_id, group)
        try:
            self._client("InstanceTemplatesClient").get(project=self.project, instance_template=template)
        except NotFound:
            return
        except Exception as error:
            raise _error(error, "reading the on-demand template") from None
        for region in sorted(self.regions):
            self._wait(self._call(f"switching {name} to on-demand", "RegionInstanceGroupManagersClient",
                                  "set_instance_template_unary", region=region, instance_group_manager=name,
                                  region_instance_group_managers_set_template_request_resource={
                                      "instance_template": f"global/instanceTemplates/{template}"}),
                       f"switching {name} to on-demand", region=region)

    def delete(self, job_id: str, tries: int = 150) -> None:
        for region in sorted(self.regions):
            managers = self._managers(region, job_id)
            for manager in managers:
                if manager.target_size:
                    self.resize(job_id, manager.name.removeprefix(f"nascloud-{job_id}-"), 0)
            self._wait_gone(job_id, tries)
            for manager in managers:
                self._delete("RegionInstanceGroupManagersClient", {"region": region,
                                                                   "instance_group_manager": manager.name},
                             f"deleting {manager.name}", region=region)
        # Templates by name, not by group: a launch that failed half-way may have made some without a group.
        templates = self._call("listing instance templates", "InstanceTemplatesClient", "list")
        for template in [t.name for t in templates if t.properties.labels.get(JOB_LABEL) == job_id]:
            self._delete("InstanceTemplatesClient", {"instance_template": template}, f"deleting {template}")
            self._templates.pop(template, None)
        self._delete("FirewallsClient", {"firewall": _firewall(job_id)}, "deleting the firewall rule")
        remove_job_keys(self.home, job_id)

    def _delete(self, kind: str, params: dict, what: str, region: Optional[str] = None) -> None:
        from google.api_core.exceptions import NotFound

        try:
            operation = self._client(kind).delete_unary(project=self.project, **params)
        except NotFound:
            return  # already gone
        except Exception as error:
            raise _error(error, what) from None
        self._wait(operation, what, region=region)

    def _wait_gone(self, job_id: str, tries: int) -> None:
        from google.cloud import compute_v1

        request = compute_v1.AggregatedListInstancesRequest(project=self.project,
                                                            filter=f'labels.{JOB_LABEL} = "{job_id}"')
        for _ in range(tries):
            pages = self._call("listing instances", "InstancesClient", "aggregated_list", request=request)
            left = [i.name for _, scoped in pages for i in scoped.instances]
            if not left:
                return
            time.sleep(self._poll)
        raise CloudError(f"{', '.join(left)} of job {job_id} are still being deleted; run the command again in a "
                         "minute")

    def list_owned(self) -> list[Group]:
        found = []
        for region in sorted(self.regions):
            for manager in self._managers(region, None):
                template = self._template(manager.instance_template.rsplit("/", 1)[-1])
                labels = template.properties.labels
                found.append(Group(job_id=labels.get(JOB_LABEL, ""), name=labels.get(GROUP_LABEL, ""),
                                   size=manager.target_size, reason=manager.description or None))
        return found

    def job_url(self, group: Group) -> Optional[str]:
        template = self._template(group_name(group.job_id, group.name))
        return next((i.value for i in template.properties.metadata.items if i.key == JOB_URL_KEY), None)

    # --- fire drill -----------------------------------------------------------------------------------------
    def preempt(self, instance: Instance) -> None:
        """Simulate a host maintenance event: a Spot or preemptible VM (onHostMaintenance TERMINATE) is
        preempted by it, as in a real reclaim; the group then recreates it."""
        if not instance.spot:
            raise UsageError(f"{instance.instance_id} is on-demand: only Spot and preemptible VMs can be preempted; "
                             "drill a job that runs on spot (compute.spot: true)")
        name = self._vm_name(instance)
        operation = self._call("simulating a maintenance event", "InstancesClient", "simulate_maintenance_event_unary",
                               zone=instance.zone, instance=name)
        self._wait(operation, "simulating a maintenance event", zone=instance.zone)

    def _vm_name(self, instance: Instance) -> str:
        from google.cloud import compute_v1

        request = compute_v1.ListInstancesRequest(project=self.project, zone=instance.zone,
                                                  filter=f'labels.{JOB_LABEL} = "{instance.job_id}"')
        for raw in self._call("listing instances", "InstancesClient", "list", request=request):
            if str(raw.id) == instance.instance_id:
                return raw.name
        raise UsageError(f"no VM {instance.instance_id} of job {instance.job_id} in {instance.zone} (gone already?)")

    # --- the instance side -----------------------------------------------------------------------------------
    def whoami(self, job_id: str, group: str) -> Instance:
        """This VM from the metadata server, and its creation time from instances.get."""
        base = os.environ.get(METADATA_ENV, METADATA_URL).rstrip("/")

        def read(path: str) -> str:
            request = urllib.request.Request(f"{base}/{path}", headers={"Metadata-Flavor": "Google"})
            with urllib.request.urlopen(request, timeout=5) as reply:
                return reply.read().decode().strip()

        def read_if_there(path: str) -> str:
            """A value some images' metadata lacks: provisioning-model is newer than preemptible."""
            try:
                return read(path)
            except urllib.error.HTTPError as error:
                if error.code == 404:
                    return ""
                raise

        try:
            number, name = read("instance/id"), read("instance/name")
            zone, kind = read("instance/zone").rsplit("/", 1)[-1], read("instance/machine-type").rsplit("/", 1)[-1]
            spot = read_if_there("instance/scheduling/provisioning-model") == "SPOT" or \
                read_if_there("instance/scheduling/preemptible").upper() == "TRUE"
            self.project = self.project or read("project/project-id")
        except OSError as error:
            raise CloudError(f"cannot read this VM's metadata at {base} ({error}); is this a GCE VM?") from None
        self.regions.add(zone[:-2])
        raw = self._call("reading this VM", "InstancesClient", "get", zone=zone, instance=name)
        return Instance(instance_id=number, job_id=job_id, group=group, cloud="gcp", region=zone[:-2], zone=zone,
                        instance_type=kind, spot=spot, state=State.RUNNING,
                        launched_at=_timestamp(raw.creation_timestamp))

    def power_off(self) -> None:
        power_off()

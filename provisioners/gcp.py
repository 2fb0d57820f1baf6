"""GCP: one Spot (or legacy preemptible, or standard) GPU VM per job, through google-cloud-compute's REST
clients.

What a job creates, named nascloud-<job-id> and labelled nascloud-job / nascloud-owner: a firewall rule
admitting only 22/tcp from the caller's CIDR to the job's network tag, and the instance (the job's SSH key
in its metadata, the bootstrap as startup-script, onHostMaintenance TERMINATE). Operations are waited on
with our own Zone/GlobalOperationsClient built like every other client: the library's `.result()` would
poll Google's real host whatever endpoint the clients were given.

NASCLOUD_GCE_ENDPOINT (e.g. http://127.0.0.1:PORT) points every client at another Compute Engine endpoint
with anonymous credentials: that is how the tests reach their local server.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from nascloud.cost import BOOT_DISK_GB
from nascloud.errors import CapacityError, CloudError, NascloudError, UsageError
from nascloud.provisioners.base import Instance, Offer, SshTarget, State
from nascloud.provisioners.common import (CLOUD_PYTHON, CLOUD_ROOT, LaunchOffer, as_offer, cloud_bootstrap, default_owner, host_key_line, job_keys,
                                          job_prefix, lookup_public_cidr, remove_job_keys, ssh_cidr)

ENDPOINT_ENV = "NASCLOUD_GCE_ENDPOINT"
# Deep Learning VM image family with CUDA and the NVIDIA driver installer; overridable with compute.image.
DEFAULT_IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu124-debian-11-py310"
SSH_USER = "nascloud"
JOB_LABEL, OWNER_LABEL = "nascloud-job", "nascloud-owner"
JOB_URL_KEY = "nascloud-job-url"  # metadata (labels cannot hold a URL): where `gc` reads the job's lease
ACCELERATORS = {"T4": "nvidia-tesla-t4", "V100": "nvidia-tesla-v100", "P100": "nvidia-tesla-p100",
                "P4": "nvidia-tesla-p4", "L4": "nvidia-l4", "A100": "nvidia-tesla-a100",
                "A100-80GB": "nvidia-a100-80gb", "H100": "nvidia-h100-80gb"}
BUILT_IN_GPU = ("g2-", "a2-", "a3-")  # these machine types come with their GPUs attached
CAPACITY_CODES = {"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
                  "RESOURCE_POOL_EXHAUSTED"}
LIVE = {"PROVISIONING", "STAGING", "RUNNING", "REPAIRING"}
PREEMPTED_OP = "compute.instances.preempted"
STORAGE_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"


def _name(job_id: str) -> str:
    return f"nascloud-{job_id}"


def _what_to_try(offer: LaunchOffer) -> str:
    spot = " or on-demand (compute.spot: false)" if offer.spot else ""
    return f"try another zone (compute.zone){spot}"


def _error(error: Exception, what: str, offer: Optional[LaunchOffer] = None) -> NascloudError:
    from google.api_core import exceptions

    reason = getattr(error, "reason", None) or ""
    text = getattr(error, "message", None) or str(error)
    if isinstance(error, exceptions.Forbidden) and "quota" in (reason + text).lower():
        return CloudError(f"GCP quota stops {what}: {text}; request more under IAM & Admin > Quotas"
                          + (f", or {_what_to_try(offer)}" if offer else ""))
    if isinstance(error, (exceptions.Unauthorized, exceptions.Forbidden)):
        return CloudError(f"GCP refused {what} ({text}); check your credentials and the permissions listed in the "
                          "README, 'Providers and permissions'")
    return CloudError(f"GCP {what} failed: {text}")


def _gpu_quota_metric(gpu: str, spot: bool) -> str:
    return f"{'PREEMPTIBLE_' if spot else ''}NVIDIA_{gpu.upper().replace('-', '_')}_GPUS"


def _zone_of(offer: LaunchOffer) -> str:
    zone, region = offer.zone, offer.region
    if not zone and region:
        zone = f"{region}-a"
    if not zone:
        raise UsageError("GCP instances live in a zone: set compute.zone (e.g. us-central1-a)")
    if region and not zone.startswith(region + "-"):
        raise UsageError(f"zone {zone} is not in region {region}; fix compute.zone or compute.region")
    return zone


def _bodies(job_id: str, offer: LaunchOffer, spec, zone: str, name: str, image: str, cidr: str, ssh_key: str,
            script: str, owner: str, service_account: Optional[str]) -> tuple[dict, dict]:
    """The firewall rule and the instance, as instances.insert / firewalls.insert receive them."""
    tag = _name(job_id)
    firewall = {"name": tag, "network": "global/networks/default", "direction": "INGRESS",
                "description": f"nascloud {job_id}: SSH from {cidr} only",
                "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}], "sourceRanges": [cidr], "targetTags": [tag]}
    if offer.spot and spec.compute.provisioning == "preemptible":
        scheduling = {"preemptible": True, "automaticRestart": False, "onHostMaintenance": "TERMINATE"}
    elif offer.spot:
        # STOP keeps the reclaimed VM (TERMINATED) where status can see it; terminate() deletes it.
        scheduling = {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP", "automaticRestart": False,
                      "onHostMaintenance": "TERMINATE"}
    else:
        scheduling = {"provisioningModel": "STANDARD", "automaticRestart": True, "onHostMaintenance": "TERMINATE"}
    instance = {
        "name": name,
        "machineType": f"zones/{zone}/machineTypes/{offer.instance_type}",
        "labels": {JOB_LABEL: job_id, OWNER_LABEL: owner},
        "tags": {"items": [tag]},
        "disks": [{"boot": True, "autoDelete": True,
                   "initializeParams": {"sourceImage": image, "diskSizeGb": str(int(BOOT_DISK_GB))}}],
        "networkInterfaces": [{"network": "global/networks/default",
                               "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]}],
        "scheduling": scheduling,
        "metadata": {"items": [
            {"key": "ssh-keys", "value": ssh_key},
            {"key": "block-project-ssh-keys", "value": "true"},
            {"key": "install-nvidia-driver", "value": "True"},
            {"key": "startup-script", "value": script},
            {"key": JOB_URL_KEY, "value": job_prefix(spec, job_id, "gs").url},
        ]},
    }
    gpu = offer.gpu
    if gpu and not offer.instance_type.startswith(BUILT_IN_GPU):
        instance["guestAccelerators"] = [{"acceleratorType": f"zones/{zone}/acceleratorTypes/{_accelerator(gpu)}",
                                          "acceleratorCount": offer.gpu_count}]
    if service_account:
        instance["serviceAccounts"] = [{"email": service_account, "scopes": [STORAGE_SCOPE]}]
    return firewall, instance


def _accelerator(gpu: str) -> str:
    if gpu.upper() not in ACCELERATORS:
        raise UsageError(f"unknown GPU {gpu!r} for GCP; use one of {', '.join(ACCELERATORS)} (compute.gpu)")
    return ACCELERATORS[gpu.upper()]


def launch_request(job_id: str, offer: Offer, spec) -> dict:
    """What launch would send, with no credentials and no network: look-ups show as placeholders."""
    offer = as_offer(offer, spec)
    zone = _zone_of(offer)
    bucket = job_prefix(spec, job_id, "gs")
    script = cloud_bootstrap("gcp", bucket.url, offer.gpu, None)
    firewall, instance = _bodies(
        job_id, offer, spec, zone, f"{_name(job_id)}-<4 hex>", spec.compute.image or DEFAULT_IMAGE,
        spec.compute.ssh_cidr or "<your public address>/32",
        f"{SSH_USER}:<the job's SSH public key, generated at launch>",
        script, default_owner(), os.environ.get("NASCLOUD_GCP_SERVICE_ACCOUNT") or None)
    project = os.environ.get("NASCLOUD_GCP_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT") or "<your project>"
    return {"cloud": "gcp", "project": project, "zone": zone, "firewalls.insert": firewall,
            "instances.insert": instance}


class GcpProvisioner:
    cloud = "gcp"

    def __init__(self, project: Optional[str] = None, home: Optional[Path] = None, owner: Optional[str] = None,
                 service_account: Optional[str] = None, endpoint: Optional[str] = None,
                 ssh_address: Optional[Callable[[Instance], tuple[str, int]]] = None,
                 cidr_lookup: Callable[[], str] = lookup_public_cidr, timeout: float = 600.0,
                 ssh_user: str = SSH_USER):
        """service_account: the identity the VM gets (README: limit it to the bucket prefix); without one the
        VM has none and cannot reach the bucket. ssh_address overrides where SSH connects (tests); ssh_user
        is the login the job's key is installed for."""
        self.project = project or os.environ.get("NASCLOUD_GCP_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT")
        self.home = home
        self.owner = owner or default_owner()
        self.service_account = service_account or os.environ.get("NASCLOUD_GCP_SERVICE_ACCOUNT")
        self.endpoint = endpoint or os.environ.get(ENDPOINT_ENV)
        self._ssh_address = ssh_address
        self._cidr_lookup = cidr_lookup
        self._timeout = timeout
        self.ssh_user = ssh_user
        self._clients: dict[str, object] = {}
        self._credentials = None

    def _client(self, kind: str):
        """A compute_v1 REST client; every one gets the same endpoint and credentials."""
        if kind not in self._clients:
            from google.cloud import compute_v1

            if self._credentials is None:
                self._credentials = self._authenticate()
            options = {"api_endpoint": self.endpoint} if self.endpoint else None
            self._clients[kind] = getattr(compute_v1, kind)(transport="rest", credentials=self._credentials,
                                                            client_options=options)
        return self._clients[kind]

    def _authenticate(self):
        if self.endpoint:
            from google.auth.credentials import AnonymousCredentials

            if not self.project:
                raise UsageError("set NASCLOUD_GCP_PROJECT to the project to launch in")
            return AnonymousCredentials()
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            credentials, project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        except DefaultCredentialsError:
            raise CloudError("no Google Cloud credentials found; run `gcloud auth application-default login` or "
                             "set GOOGLE_APPLICATION_CREDENTIALS") from None
        self.project = self.project or project
        if not self.project:
            raise UsageError("no GCP project: set NASCLOUD_GCP_PROJECT or `gcloud config set project ...`")
        return credentials

    def _call(self, what: str, call, *args, offer: Optional[LaunchOffer] = None, **kwargs):
        try:
            return call(*args, **kwargs)
        except NascloudError:
            raise
        except Exception as error:
            raise _error(error, what, offer) from None

    def _wait(self, operation, zone: Optional[str], what: str, offer: Optional[LaunchOffer] = None) -> None:
        """Wait on an operation with our own operations client (never .result()), then read its error."""
        from google.cloud import compute_v1

        deadline = time.monotonic() + self._timeout
        while operation.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() > deadline:
                raise CloudError(f"GCP {what} did not finish in {self._timeout:.0f}s (operation {operation.name})")
            if zone:
                operation = self._call(what, self._client("ZoneOperationsClient").wait, project=self.project,
                                       zone=zone, operation=operation.name)
            else:
                operation = self._call(what, self._client("GlobalOperationsClient").wait, project=self.project,
                                       operation=operation.name)
        errors = list(operation.error.errors) if operation.error else []
        if not errors:
            return
        code, message = errors[0].code, errors[0].message
        if code in CAPACITY_CODES and offer:
            raise CapacityError(f"GCP has no {offer.instance_type} {'spot ' if offer.spot else ''}capacity in {zone} "
                             f"right now ({code}); {_what_to_try(offer)}")
        if code == "QUOTA_EXCEEDED":
            raise CloudError(f"GCP quota stops {what}: {message}; request more under IAM & Admin > Quotas"
                             + (f", or {_what_to_try(offer)}" if offer else ""))
        raise CloudError(f"GCP {what} failed: {code}: {message}")

    def _check_offer(self, offer: LaunchOffer) -> str:
        """The zone, machine type and GPU exist (UsageError otherwise); returns the zone."""
        from google.api_core.exceptions import NotFound

        zone = _zone_of(offer)
        if not offer.instance_type:
            raise UsageError("no GCP machine type: set compute.instance_type (e.g. n1-standard-4) or compute.gpu")
        checks = [("zone", "ZonesClient", {"zone": zone}, f"unknown GCP zone {zone!r}; use one like us-central1-a "
                                                          "(compute.zone)"),
                  ("machine type", "MachineTypesClient", {"zone": zone, "machine_type": offer.instance_type},
                   f"unknown GCP machine type {offer.instance_type!r} in {zone}; use one like n1-standard-4")]
        if offer.gpu and not offer.instance_type.startswith(BUILT_IN_GPU):
            checks.append(("GPU", "AcceleratorTypesClient", {"zone": zone, "accelerator_type": _accelerator(offer.gpu)},
                           f"no {offer.gpu} GPUs in {zone}; try another zone (compute.zone)"))
        for what, kind, params, message in checks:
            try:
                self._client(kind).get(project=self.project, **params)
            except NotFound:
                raise UsageError(message) from None
            except NascloudError:
                raise
            except Exception as error:
                raise _error(error, f"looking up the {what}") from None
        return zone

    def _instance(self, raw) -> Instance:
        zone = raw.zone.rsplit("/", 1)[-1]
        created = raw.creation_timestamp
        nat = [c.nat_i_p for n in raw.network_interfaces for c in n.access_configs if c.nat_i_p]
        return Instance(
            instance_id=raw.name, job_id=raw.labels.get(JOB_LABEL, ""), cloud="gcp", region=zone[:-2], zone=zone,
            instance_type=raw.machine_type.rsplit("/", 1)[-1],
            spot=raw.scheduling.provisioning_model == "SPOT" or bool(raw.scheduling.preemptible),
            launched_at=datetime.fromisoformat(created).timestamp() if created else time.time(),
            extra={"python": CLOUD_PYTHON, "bootstrap_dir": CLOUD_ROOT, "public_ip": nat[0] if nat else None,
                   "project": self.project,
                   "job_url": next((i.value for i in raw.metadata.items if i.key == JOB_URL_KEY), None)},
        )

    def _owned(self, job_id: Optional[str]) -> list:
        from google.cloud import compute_v1

        expression = f'labels.{JOB_LABEL} = "{job_id}"' if job_id else f"labels.{JOB_LABEL}:*"
        request = compute_v1.AggregatedListInstancesRequest(project=self.project, filter=expression)
        pages = self._call("listing instances", self._client("InstancesClient").aggregated_list, request=request)
        return self._call("listing instances", lambda: [i for _, scoped in pages for i in scoped.instances])

    # --- protocol ------------------------------------------------------------------------------
    def preflight(self, offer: Offer, spec) -> None:
        offer = as_offer(offer, spec)
        zone = self._check_offer(offer)
        job_prefix(spec, "preflight", "gs")
        if not self.service_account:  # the VM would boot, bill, and fail to reach the bucket
            raise UsageError("a GCP instance reaches the bucket as a service account: set "
                             "NASCLOUD_GCP_SERVICE_ACCOUNT to one limited to the jobs' prefix (README: GCP)")
        if not offer.gpu:
            return
        region = zone[:-2]
        project = self._call("reading the project's quotas", self._client("ProjectsClient").get, project=self.project)
        found = self._call("reading the region's quotas", self._client("RegionsClient").get, project=self.project,
                           region=region)
        # GPUS_ALL_REGIONS caps the whole project (0 in a new one), the regional metric this region.
        for quotas, metric, where, other in (
                (project.quotas, "GPUS_ALL_REGIONS", "the project", ""),
                (found.quotas, _gpu_quota_metric(offer.gpu, offer.spot), region, ", or try another region")):
            quota = next((q for q in quotas if q.metric == metric), None)
            if quota is not None and quota.limit - quota.usage < 1:
                raise CloudError(f"your GCP quota {metric} in {where} is {quota.limit:g} with {quota.usage:g} in use "
                                 f"(new projects start at 0); request more under IAM & Admin > Quotas{other}"
                                 + (" or on-demand (compute.spot: false)" if offer.spot and other else ""))

    def launch(self, job_id: str, offer: Offer, spec) -> Instance:
        offer = as_offer(offer, spec)
        zone = self._check_offer(offer)
        for raw in self._owned(job_id):
            if raw.status in LIVE:
                return self._instance(raw)
        from google.cloud import compute_v1

        cidr = ssh_cidr(spec, self._cidr_lookup)
        client_key, host_key = job_keys(self.home, job_id)
        script = cloud_bootstrap("gcp", job_prefix(spec, job_id, "gs").url, offer.gpu, host_key)
        name = f"{_name(job_id)}-{secrets.token_hex(2)}"
        firewall, body = _bodies(job_id, offer, spec, zone, name, spec.compute.image or DEFAULT_IMAGE, cidr,
                                 f"{self.ssh_user}:{client_key.public_line}", script, self.owner,
                                 self.service_account)
        self._ensure_firewall(firewall)
        instances = self._client("InstancesClient")
        operation = self._call("creating the instance", instances.insert_unary, offer=offer, project=self.project,
                               zone=zone, instance_resource=compute_v1.Instance.from_json(json.dumps(body)))
        self._wait(operation, zone, "creating the instance", offer)
        return self._instance(self._call("reading the instance", instances.get, project=self.project, zone=zone,
                                         instance=name))

    def _ensure_firewall(self, firewall: dict) -> None:
        from google.api_core.exceptions import Conflict
        from google.cloud import compute_v1

        try:
            operation = self._client("FirewallsClient").insert_unary(
                project=self.project, firewall_resource=compute_v1.Firewall.from_json(json.dumps(firewall)))
        except Conflict:
            return  # made by an earlier launch of the same job
        except Exception as error:
            raise _error(error, "creating the firewall rule") from None
        self._wait(operation, None, "creating the firewall rule")

    def status(self, instances: list[Instance]) -> dict[str, State]:
        """One aggregated list per job (all zones and regions at once), plus one aggregated operations
        list when something stopped: a TERMINATED VM was preempted only if GCP logged a preemption."""
        from google.cloud import compute_v1

        wanted = {i.instance_id for i in instances}
        seen = {raw.name: raw.status for job in sorted({i.job_id for i in instances})
                for raw in self._owned(job) if raw.name in wanted}
        states = {}
        for name in wanted:
            status = seen.get(name)
            states[name] = (State.RUNNING if status == "RUNNING" else State.PENDING if status in LIVE
                            else State.TERMINATED)
        if any(state == State.TERMINATED for state in states.values()):
            request = compute_v1.AggregatedListGlobalOperationsRequest(
                project=self.project, filter=f'operationType = "{PREEMPTED_OP}"')
            pages = self._call("listing operations", self._client("GlobalOperationsClient").aggregated_list,
                               request=request)
            preempted = self._call("listing operations", lambda: {
                op.target_link.rsplit("/", 1)[-1] for _, scoped in pages for op in scoped.operations})
            for name in wanted & preempted:
                states[name] = State.PREEMPTED
        return states

    def terminate(self, instances: list[Instance]) -> None:
        from google.api_core.exceptions import NotFound

        client = self._client("InstancesClient")
        started = []
        for instance in instances:
            try:
                started.append((client.delete_unary(project=self.project, zone=instance.zone,
                                                    instance=instance.instance_id), instance.zone))
            except NotFound:
                continue  # already gone: success
            except Exception as error:
                raise _error(error, f"deleting {instance.instance_id}") from None
        for operation, zone in started:
            self._wait(operation, zone, "deleting the instance")

    def preempt(self, instance: Instance) -> None:
        """Simulate a host maintenance event: a Spot or preemptible VM (onHostMaintenance TERMINATE) is
        preempted by it, as in a real reclaim (TERMINATED plus a compute.instances.preempted operation)."""
        if not instance.spot:
            raise UsageError(f"{instance.instance_id} is on-demand: only Spot and preemptible VMs can be preempted; "
                             "drill a job that runs on spot (compute.spot: true)")
        operation = self._call("simulating a maintenance event", self._client("InstancesClient")
                               .simulate_maintenance_event_unary, project=self.project, zone=instance.zone,
                               instance=instance.instance_id)
        self._wait(operation, instance.zone, "simulating a maintenance event")

    def list_owned(self, job_id: Optional[str] = None) -> list[Instance]:
        return [self._instance(raw) for raw in self._owned(job_id)]

    def ssh_target(self, instance: Instance) -> SshTarget:
        client_key, host_key = job_keys(self.home, instance.job_id)
        if self._ssh_address:
            host, port = self._ssh_address(instance)
        else:
            raw = self._call("reading the instance", self._client("InstancesClient").get, project=self.project,
                             zone=instance.zone, instance=instance.instance_id)
            host, port = self._instance(raw).extra["public_ip"], 22
            if not host:
                raise CloudError(f"{instance.instance_id} has no external address (yet); wait until it is running")
        return SshTarget(host, port, self.ssh_user, str(client_key.private_path), host_key_line(host_key))

    def release(self, job_id: str) -> None:
        from google.api_core.exceptions import NotFound

        try:
            operation = self._client("FirewallsClient").delete_unary(project=self.project, firewall=_name(job_id))
            self._wait(operation, None, "deleting the firewall rule")
        except NotFound:
            pass
        except NascloudError:
            raise
        except Exception as error:
            raise _error(error, "deleting the firewall rule") from None
        remove_job_keys(self.home, job_id)

"""AWS: a job group is an EC2 Auto Scaling group over a launch template, through boto3.

What a job creates, all tagged nascloud-job / nascloud-owner / nascloud-job-url:
- per job: an IAM role + instance profile nascloud-<job-id> (read/write the job's prefix, resize only the
  job's own groups); with compute.ssh_cidr set, also a security group admitting 22/tcp from that CIDR (the
  instance admits the bundle's public key itself: no key pair). Without ssh_cidr no inbound port at all.
- per group: a launch template and an Auto Scaling group, both nascloud-<job-id>-<group>. The template
  holds the bootstrap (user data), IMDSv2 required, the instance profile and terminate-on-shutdown; the
  group spreads over the offer's instance types and its zones' default subnets, all spot with
  price-capacity-optimized allocation (and capacity rebalancing in groups of more than one). Spot is asked
  for by the group's instances distribution: AWS refuses a launch template with spot market options in a
  mixed group.
A fire drill adds a role nascloud-fis-<job-id> that only AWS FIS may assume, to interrupt a spot instance.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from nascloud.cloud_errors import one_line
from nascloud.errors import CloudError, NascloudError, UsageError
from nascloud.provisioners.base import Group, GroupSpec, Instance, State
from nascloud.provisioners.common import (bootstrap_script, default_owner, dry_run_group, job_prefix, power_off,
                                          remove_job_keys, ssh_cidr)

# The Deep Learning Base AMI (NVIDIA driver, Ubuntu 22.04), found through AWS's public SSM parameter, as
# https://docs.aws.amazon.com/dlami/latest/devguide/find-dlami-id.html names it (the AMI's own release
# notes list the same path); it carries the NVIDIA driver and the `aws` CLI the bootstrap uses.
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
JOB_TAG, OWNER_TAG, JOB_URL_TAG, GROUP_TAG = "nascloud-job", "nascloud-owner", "nascloud-job-url", "nascloud-group"
REASON_TAG = "nascloud-reason"  # why an instance resized its group to 0, for the observer
BACKSTOP_ACTION = "nascloud-backstop"  # the scheduled action that ends a group at its budget (backstop_request)
ASG_TAG = "aws:autoscaling:groupName"
METADATA_ENV = "NASCLOUD_AWS_METADATA_URL"
SPOT_REASONS = {"Server.SpotInstanceTermination", "Server.SpotInstanceShutdown"}
ENDED_AT = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")  # StateTransitionReason's time
# Service Quotas codes (vCPUs) per instance family: (spot, on-demand).
QUOTAS = {
    "g": ("L-3819A6DF", "L-DB2E81BA"),  # All G and VT Spot Instance Requests / Running On-Demand G and VT
    "vt": ("L-3819A6DF", "L-DB2E81BA"),
    "p": ("L-7212CCBC", "L-417A185B"),  # All P Spot Instance Requests / Running On-Demand P
}
PROFILE_ATTEMPTS = 6  # CreateAutoScalingGroup tries while a new instance profile propagates (_create_group)
QUOTA_CODES = {"MaxSpotInstanceCountExceeded", "VcpuLimitExceeded", "InstanceLimitExceeded", "LimitExceeded"}
AUTH_CODES = {"AuthFailure", "UnauthorizedOperation", "AccessDenied", "AccessDeniedException",
              "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken", "UnrecognizedClientException"}


def _name(job_id: str) -> str:
    return f"nascloud-{job_id}"


def group_name(job_id: str, group: str) -> str:
    """The Auto Scaling group's and the launch template's name."""
    return f"nascloud-{job_id}-{group}"


def _fis_role(job_id: str) -> str:
    return f"nascloud-fis-{job_id}"


def _code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return response.get("Error", {}).get("Code", "")


def _error(error: Exception, what: str) -> NascloudError:
    """A boto3 failure as one line naming the cause and what to try."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(error, NascloudError):
        return error
    if isinstance(error, NoCredentialsError):
        return CloudError("no AWS credentials found; run `aws configure` or set AWS_PROFILE / AWS_ACCESS_KEY_ID")
    if not isinstance(error, ClientError):
        return CloudError(f"AWS {what} failed: {one_line(error)}")
    code, message = _code(error), one_line(error.response["Error"].get("Message", ""))
    if error.response.get("ResponseMetadata", {}).get("MaxAttemptsReached"):  # botocore retried it: throttled, or 5xx
        from nascloud.aws_session import RETRY_ATTEMPTS

        return CloudError(f"AWS {what} failed {RETRY_ATTEMPTS} times in a row ({code}: {message}); AWS is throttling "
                          "or unavailable: try again in a few minutes")
    if code in QUOTA_CODES:
        return CloudError(f"your AWS quota stops {what} ({code}: {message}); request an increase in the Service "
                          "Quotas console, or try on-demand (compute.spot: false)")
    if code in AUTH_CODES:
        return CloudError(f"AWS refused {what} ({code}); check your credentials and the permissions listed in "
                          "the README, 'Providers and permissions'")
    return CloudError(f"AWS {what} failed: {code}: {message}")


def _trust(service: str, account: Optional[str] = None, source_arn: Optional[str] = None) -> dict:
    """A role only `service` may assume; with account, only on behalf of that account's own resources
    (source_arn), against the confused deputy
    (https://docs.aws.amazon.com/IAM/latest/UserGuide/confused-deputy.html)."""
    statement = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    if account:
        statement["Condition"] = {"StringEquals": {"aws:SourceAccount": account},
                                  "ArnLike": {"aws:SourceArn": source_arn}}
    return {"Version": "2012-10-17", "Statement": [statement]}


TRUST_POLICY = _trust("ec2.amazonaws.com")


def data_prefix(job_prefix: str) -> str:
    """Where the bucket keeps data sets, beside the job prefixes: PREFIX/data/ for PREFIX/JOB-ID."""
    return "/".join([*job_prefix.split("/")[:-1], "data", ""])


# What the instance side writes under the job's prefix (nascloud/jobbucket.py's records, the snapshot store,
# the agent's results, the bootstrap's failed boots and wheelhouse): all but what only the launcher writes,
# bundle/job.json and the wheel, budget.json and stop.json. It deletes only what the snapshot store prunes.
INSTANCE_WRITES = ("agent/*", "ledger/*", "charges/*", "events/*", "claims/*", "logs/*", "hosts/*", "results/*",
                   "history.json", "boots/*", "bundle/wheelhouse/*", "blobs/*", "manifests/*", "HEAD")
INSTANCE_DELETES = ("blobs/*", "manifests/*")


def role_policy(bucket: str, prefix: str, job_id: str, groups: list[str]) -> dict:
    """The instance identity: reading the job's prefix, writing its own records there (not the budget, the stop
    request or the bundle), deleting only pruned snapshots (never the ledger the budget sums); resizing and
    tagging the reason on only the job's own groups, by name and by tag, and never raising their limits;
    describing is not scoped by AWS, so it is allowed as is."""
    job = f"arn:aws:s3:::{bucket}/{prefix}"
    group_arns = [f"arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/{group_name(job_id, g)}"
                  for g in groups]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "JobObjects", "Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{job}/*"},
            {"Sid": "JobRecords", "Effect": "Allow", "Action": "s3:PutObject",
             "Resource": [f"{job}/{key}" for key in INSTANCE_WRITES]},
            {"Sid": "SnapshotPruning", "Effect": "Allow", "Action": "s3:DeleteObject",
             "Resource": [f"{job}/{key}" for key in INSTANCE_DELETES]},
            # A GetObject of a missing key then answers 403, not 404 (no ListBucket for that request):
            # nascloud/checkpoints/s3.py lists the key's name to tell a missing record from a refusal.
            {"Sid": "JobListing", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}",
             "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}},
            # The data set lives beside the jobs (data/, shared by content): read only.
            {"Sid": "DataSets", "Effect": "Allow", "Action": "s3:GetObject",
             "Resource": f"arn:aws:s3:::{bucket}/{data_prefix(prefix)}*"},
            # UpdateAutoScalingGroup is for the on-demand switch (use_on_demand), which sends no size: a MaxSize
            # or MinSize above 0 is refused, so the instance cannot raise its group's size (only SetDesiredCapacity
            # is capped by MaxSize). Condition keys:
            # https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonec2autoscaling.html
            {"Sid": "OwnGroups", "Effect": "Allow",
             "Action": ["autoscaling:SetDesiredCapacity", "autoscaling:UpdateAutoScalingGroup",
                        "autoscaling:CreateOrUpdateTags"],
             "Resource": group_arns,
             "Condition": {"StringEquals": {f"autoscaling:ResourceTag/{JOB_TAG}": job_id},
                           "NumericLessThanEqualsIfExists": {"autoscaling:MaxSize": "0", "autoscaling:MinSize": "0"}}},
            {"Sid": "Describe", "Effect": "Allow",
             "Action": ["autoscaling:DescribeAutoScalingGroups", "ec2:DescribeInstances",
                        "ec2:DescribeAvailabilityZones"], "Resource": "*"},
        ],
    }


# The fire drill: FIS sends the instance AWS's real two-minute spot interruption notice, then reclaims it.
FIS_ACTION = "aws:ec2:send-spot-instance-interruptions"
FIS_NOTICE = "PT2M"  # the shortest notice FIS allows, the same as a real reclaim's


def fis_template(job_id: str, instance_arn: str, role_arn: str) -> dict:
    """The experiment template that interrupts one spot instance, as CreateExperimentTemplate receives it."""
    return {
        "description": f"nascloud drill {job_id}: interrupt {instance_arn.rsplit('/', 1)[-1]}",
        "roleArn": role_arn,
        "stopConditions": [{"source": "none"}],
        "targets": {"instance": {"resourceType": "aws:ec2:spot-instance", "resourceArns": [instance_arn],
                                 "selectionMode": "ALL"}},
        "actions": {"interrupt": {"actionId": FIS_ACTION, "parameters": {"durationBeforeInterruption": FIS_NOTICE},
                                  "targets": {"SpotInstances": "instance"}}},
        "tags": {JOB_TAG: job_id, "Name": _name(job_id)},
    }


def quota_codes(offer: dict, spec) -> list[tuple[str, str]]:
    """The Service Quotas preflight reads, as (market, code): the group's market's, and with
    compute.on_demand_after_preemptions on a spot group the on-demand one too, which its fallback runs on."""
    kind = offer.get("instance_type") or ""
    family = "vt" if kind.startswith("vt") else kind[:1]
    if family not in QUOTAS:
        return []  # not a GPU family nascloud knows the quota codes of
    spot = bool(offer.get("spot"))
    markets = ["spot", "on-demand"] if spot and spec.compute.on_demand_after_preemptions else \
        ["spot" if spot else "on-demand"]
    return [(market, QUOTAS[family][market == "on-demand"]) for market in markets]


def _instance_types(offer: dict) -> list[str]:
    """The offer's instance type first, then the equivalent ones it lists (same GPU, similar price)."""
    types = [offer["instance_type"], *offer.get("instance_types", ())]
    return list(dict.fromkeys(t for t in types if t))


def _zone_ids(offer: dict) -> list[str]:
    """The zones the group may use, by ID (the catalog's keys, the same in every account)."""
    ids = [z.get("zone_id") for z in offer.get("zones", ()) if z.get("zone_id")]
    return ids or ([offer["zone_id"]] if offer.get("zone_id") else [])


def _tags(group: GroupSpec) -> list[dict]:
    tags = {**group.tags, JOB_TAG: group.job_id, GROUP_TAG: group.name, "Name": group_name(group.job_id, group.name)}
    return [{"Key": k, "Value": str(v)[:256]} for k, v in tags.items()]  # 256: EC2's longest tag value


def requests(group: GroupSpec, image: str, subnets: list[str], security_group: Optional[str]) -> dict:
    """Every request create_groups makes for one group, as the APIs receive them (the dry run prints them)."""
    name = group_name(group.job_id, group.name)
    offer, tags = group.offer, _tags(group)
    template = {
        "ImageId": image, "InstanceType": offer["instance_type"],
        "UserData": base64.b64encode(bootstrap_script(group.bootstrap_env).encode()).decode(),
        "IamInstanceProfile": {"Name": _name(group.job_id)},
        "InstanceInitiatedShutdownBehavior": "terminate",  # the governor's power-off ends the billing
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
    }
    if security_group:
        template["SecurityGroupIds"] = [security_group]
    spot = bool(offer.get("spot"))
    distribution = {"OnDemandBaseCapacity": 0, "OnDemandPercentageAboveBaseCapacity": 0 if spot else 100}
    if spot:
        distribution["SpotAllocationStrategy"] = "price-capacity-optimized"
    auto_scaling = {
        "AutoScalingGroupName": name, "MinSize": 0, "MaxSize": max(group.size, 1), "DesiredCapacity": group.size,
        # Capacity Rebalancing launches the replacement first and ends the old instance only once the new one
        # passes its health checks, exceeding MaxSize if it must (docs.aws.amazon.com/autoscaling/ec2/userguide/
        # ec2-auto-scaling-capacity-rebalancing.html): for a group of one, two GPUs bill and both train. Off
        # there; the two-minute interruption notice is what the instance snapshots on.
        "VPCZoneIdentifier": ",".join(subnets), "CapacityRebalance": spot and group.size > 1,
        "MixedInstancesPolicy": {
            "LaunchTemplate": {"LaunchTemplateSpecification": {"LaunchTemplateName": name, "Version": "$Latest"},
                               "Overrides": [{"InstanceType": t} for t in _instance_types(offer)]},
            "InstancesDistribution": distribution},
        "Tags": [{**t, "PropagateAtLaunch": True, "ResourceId": name, "ResourceType": "auto-scaling-group"}
                 for t in tags if t["Key"] != "Name"],
    }
    made = {"CreateLaunchTemplate": {"LaunchTemplateName": name, "LaunchTemplateData": template,
                                     "TagSpecifications": [{"ResourceType": "launch-template", "Tags": tags}]},
            "CreateAutoScalingGroup": auto_scaling}
    if group.stop_at:
        made["PutScheduledUpdateGroupAction"] = backstop_request(group)
    return made


def backstop_request(group: GroupSpec) -> dict:
    """The launcher's backstop, made with its own credentials: a one-time scheduled action of the group's
    own engine that sets it to 0 at group.stop_at, which no instance identity can prevent. Auto Scaling runs
    a one-time action at its StartTime and then deletes it; putting it again under the same name replaces it
    (https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-scheduled-scaling.html)."""
    return {"AutoScalingGroupName": group_name(group.job_id, group.name), "ScheduledActionName": BACKSTOP_ACTION,
            "StartTime": datetime.fromtimestamp(group.stop_at, timezone.utc).isoformat(timespec="seconds"),
            "DesiredCapacity": 0, "MinSize": 0}


def job_requests(groups: list[GroupSpec], bucket: str, prefix: str, cidr: Optional[str]) -> dict:
    """The per-job requests (identity, firewall) as the APIs receive them."""
    job_id = groups[0].job_id
    name, tags = _name(job_id), [t for t in _tags(groups[0]) if t["Key"] not in (GROUP_TAG, "Name")]
    made = {
        "CreateRole": {"RoleName": name, "AssumeRolePolicyDocument": json.dumps(TRUST_POLICY), "Tags": tags},
        "PutRolePolicy": {"RoleName": name, "PolicyName": "job",
                          "PolicyDocument": json.dumps(role_policy(bucket, prefix, job_id, [g.name for g in groups]))},
    }
    if cidr:
        made["CreateSecurityGroup"] = {"GroupName": name, "Description": f"nascloud {job_id}: SSH from {cidr} only",
                                       "TagSpecifications": [{"ResourceType": "security-group", "Tags": tags}]}
        made["AuthorizeSecurityGroupIngress"] = {"IpPermissions": [
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": cidr}]}]}
    return made


def launch_request(job_id: str, offer, spec) -> dict:
    """What create_groups would send for the job's search group, with no credentials and no network:
    look-ups (image, subnets, security group) show as placeholders."""
    group = dry_run_group("aws", job_id, offer, spec)
    bucket = job_prefix(spec, job_id, "s3")
    zones = _zone_ids(group.offer) or ["<every zone of the region>"]
    security = f"<id of security group {_name(job_id)}>" if spec.compute.ssh_cidr else None
    made = requests(group, spec.compute.image or f"<resolved at launch from SSM {DLAMI_PARAMETER}>",
                    [f"<default subnet of zone {z}>" for z in zones], security)
    return {"cloud": "aws", "region": group.offer.get("region"),
            **job_requests([group], bucket.bucket, bucket.prefix, spec.compute.ssh_cidr), **made,
            "GetServiceQuota (preflight)": [{"ServiceCode": "ec2", "QuotaCode": code, "market": market}
                                            for market, code in quota_codes(group.offer, spec)]}


def _parse_time(value) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _state(described: dict) -> State:
    """An EC2 instance's state; a spot reclaim reads PREEMPTED whatever the instance's state name."""
    name = described["State"]["Name"]
    reason = (described.get("StateReason") or {}).get("Code", "")
    if reason in SPOT_REASONS:
        return State.PREEMPTED
    if name == "pending":
        return State.PENDING
    if name == "running":
        return State.RUNNING
    if reason.startswith("Server."):  # e.g. Server.InternalError, Server.InsufficientInstanceCapacity
        return State.FAILED
    return State.TERMINATED


def _ended_at(described: dict) -> Optional[float]:
    found = ENDED_AT.search(described.get("StateTransitionReason") or "")
    if not found or described["State"]["Name"] in ("pending", "running"):
        return None
    return datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


class AwsProvisioner:
    cloud = "aws"

    def __init__(self, region: Optional[str] = None, home: Optional[Path] = None, owner: Optional[str] = None,
                 poll_seconds: float = 5.0):
        """region: where the job's groups live (an observer passes the bundle's). home: where the job's SSH
        key is kept when compute.ssh_cidr asks for SSH."""
        from nascloud.aws_session import aws_session

        self._session = aws_session()
        self.region = region or self._session.region_name or "us-east-1"
        self.regions = {self.region}
        self.home = home
        self.owner = owner or default_owner()
        self._poll = poll_seconds
        self._clients: dict[tuple[str, str], object] = {}
        self._zone_names: dict[str, dict[str, str]] = {}  # region -> zone name -> zone ID
        self._job_urls: dict[tuple[str, str], str] = {}

    def _client(self, service: str, region: Optional[str] = None):
        region = region or self.region
        if (service, region) not in self._clients:
            from nascloud.aws_session import client_config

            self._clients[service, region] = self._session.client(service, region_name=region,
                                                                   config=client_config())
        return self._clients[service, region]

    def _call(self, what: str, call, **params):
        try:
            return call(**params)
        except Exception as error:
            raise _error(error, what) from None

    def _region_of(self, offer: dict) -> str:
        region = offer.get("region") or self.region
        if region not in self._session.get_available_regions("ec2"):
            raise UsageError(f"unknown AWS region {region!r}; use one like us-east-1 (compute.region)")
        self.regions.add(region)
        return region

    # --- launch ----------------------------------------------------------------------------------
    def _check_offer(self, ec2, offer: dict) -> int:
        """The instance types and zones exist (UsageError otherwise); returns the first type's vCPUs."""
        types = _instance_types(offer)
        if not types:
            raise UsageError("no AWS instance type: set compute.instance_type (e.g. g4dn.xlarge) or compute.gpu")
        try:
            found = ec2.describe_instance_types(InstanceTypes=types)["InstanceTypes"]
        except Exception as error:
            if _code(error).startswith("InvalidInstanceType"):
                raise UsageError(f"unknown AWS instance type {types[0]!r}; use one like g4dn.xlarge "
                                 "(see `nascloud prices --cloud aws`)") from None
            raise _error(error, "describing the instance type") from None
        if offer.get("zone") and not self._zones(ec2, offer["zone"]):
            raise UsageError(f"unknown availability zone {offer['zone']!r}; use one like us-east-1a (compute.zone)")
        return found[0].get("VCpuInfo", {}).get("DefaultVCpus", 1)

    @staticmethod
    def _zones(ec2, zone: str) -> list[dict]:
        selector = {"ZoneIds": [zone]} if re.match(r"^[a-z]+[0-9]+-az[0-9]+$", zone) else {"ZoneNames": [zone]}
        try:
            return ec2.describe_availability_zones(**selector)["AvailabilityZones"]
        except Exception as error:
            if _code(error) != "InvalidParameterValue":
                raise _error(error, "describing the zone") from None
            return []

    def preflight(self, groups: list[GroupSpec]) -> None:
        from nascloud.job import is_placeholder

        for group in groups:
            offer, spec = group.offer, group.spec
            region = self._region_of(offer)
            vcpus = self._check_offer(self._client("ec2", region), offer)
            if not spec.compute.image:
                self._image(region)  # a region without the Deep Learning AMI: said before anything is made
            _cidr(spec)
            if not is_placeholder(spec.checkpoint.bucket):  # no bucket to ask about: check's bucket line says so
                self._bucket_exists(region, job_prefix(spec, group.job_id, "s3").bucket)
            kind, needed = offer["instance_type"], vcpus * max(group.size, 1)
            for market, code in quota_codes(offer, spec):
                quota = self._quota(region, code)
                if quota is not None and quota < needed:
                    other = {"spot": ", or try on-demand (compute.spot: false)",
                             "on-demand": ", or unset compute.on_demand_after_preemptions" if offer.get("spot") else ""}
                    raise CloudError(f"your AWS {market} quota for {kind} in {region} is {quota:g} vCPUs and it needs "
                                     f"{needed} (new accounts start at 0); request an increase of quota {code} in the "
                                     f"Service Quotas console{other[market]}")

    def _bucket_exists(self, region: str, bucket: str) -> None:
        try:
            self._client("s3", region).head_bucket(Bucket=bucket)
        except Exception as error:
            if _code(error) in ("404", "NoSuchBucket"):
                raise UsageError(f"bucket s3://{bucket} does not exist; create it "
                                 f"(`aws s3 mb s3://{bucket}`) or fix checkpoint.bucket") from None
            raise _error(error, f"reaching bucket s3://{bucket}") from None

    def _quota(self, region: str, code: str) -> Optional[float]:
        quotas = self._client("service-quotas", region)
        for call in (quotas.get_service_quota, quotas.get_aws_default_service_quota):
            try:
                return float(call(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
            except Exception as error:
                if _code(error) != "NoSuchResourceException":
                    raise _error(error, "reading the GPU quota") from None
        return None

    def create_groups(self, groups: list[GroupSpec]) -> None:
        if not groups:
            return
        job_id, spec = groups[0].job_id, groups[0].spec
        try:
            self._create(groups, job_id, spec)
            for group in groups:  # also for a group an earlier launch made: resume moves its backstop
                if group.stop_at:
                    auto_scaling = self._client("autoscaling", self._region_of(group.offer))
                    self._call(f"scheduling the backstop of {group_name(job_id, group.name)}",
                               auto_scaling.put_scheduled_update_group_action, **backstop_request(group))
        except NascloudError:
            self.delete(job_id)  # a group that cannot be made leaves nothing behind
            raise

    def _create(self, groups: list[GroupSpec], job_id: str, spec) -> None:
        bucket = job_prefix(spec, job_id, "s3")
        cidr = _cidr(spec)
        made = job_requests(groups, bucket.bucket, bucket.prefix, cidr)
        self._ensure_role(made)
        for group in groups:
            region = self._region_of(group.offer)
            if self._auto_scaling_groups(region, [{"Name": f"tag:{JOB_TAG}", "Values": [job_id]},
                                                  {"Name": f"tag:{GROUP_TAG}", "Values": [group.name]}]):
                continue  # made by an earlier launch of the same job: left as it is
            ec2 = self._client("ec2", region)
            self._check_offer(ec2, group.offer)
            image = spec.compute.image or self._image(region)
            security_group = self._ensure_security_group(ec2, made) if cidr else None
            found = requests(group, image, self._subnets(ec2, group.offer), security_group)
            self._ensure(ec2.create_launch_template, found["CreateLaunchTemplate"],
                         "InvalidLaunchTemplateName.AlreadyExistsException", "creating the launch template")
            self._create_group(region, found["CreateAutoScalingGroup"])

    def _create_group(self, region: str, request: dict) -> None:
        """CreateAutoScalingGroup, retried while the instance profile made a moment ago is not yet usable: IAM is
        eventually consistent (AddRoleToInstanceProfile's reference: "You must then wait for the change to appear
        across all of AWS because of eventual consistency", docs.aws.amazon.com/IAM/latest/APIReference/
        API_AddRoleToInstanceProfile.html), and Auto Scaling refuses the launch template meanwhile with
        ValidationError "... parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name"
        (34 s after CreateInstanceProfile in eksctl-io/eksctl#8039; Terraform retries this exact error for its IAM
        propagation timeout of 2 minutes, hashicorp/terraform-provider-aws#5633). Waits of 1, 2, 4, 8, 8 polls:
        23 polls (115 s at the default 5 s) over 6 attempts, before create_groups gives up and cleans up."""
        name = request["AutoScalingGroupName"]
        for attempt in range(PROFILE_ATTEMPTS):
            try:
                self._client("autoscaling", region).create_auto_scaling_group(**request)
                return
            except Exception as error:
                if attempt == PROFILE_ATTEMPTS - 1 or _code(error) != "ValidationError" or \
                        "Invalid IAM Instance Profile" not in str(error):
                    raise _error(error, f"creating the Auto Scaling group {name}") from None
            time.sleep(self._poll * 2 ** min(attempt, 3))

    def _ensure(self, call, params: dict, exists: str, what: str) -> None:
        try:
            call(**params)
        except Exception as error:
            if _code(error) != exists:  # made by an earlier launch of the same job: left as it is
                raise _error(error, what) from None

    def _subnets(self, ec2, offer: dict) -> list[str]:
        """The default subnet of each zone the offer may use (every zone of the region if it lists none)."""
        filters = [{"Name": "default-for-az", "Values": ["true"]}]
        if zone_ids := _zone_ids(offer):
            filters.append({"Name": "availability-zone-id", "Values": zone_ids})
        elif offer.get("zone"):
            filters.append({"Name": "availability-zone", "Values": [offer["zone"]]})
        subnets = self._call("describing the default subnets", ec2.describe_subnets, Filters=filters)["Subnets"]
        if not subnets:
            raise CloudError(f"no default subnet in zones {', '.join(zone_ids) or offer.get('zone') or 'of the region'}; "
                             "create the default VPC (`aws ec2 create-default-vpc`) or choose another region")
        return [s["SubnetId"] for s in sorted(subnets, key=lambda s: s.get("AvailabilityZoneId", ""))]

    def _image(self, region: str) -> str:
        try:
            return self._client("ssm", region).get_parameter(Name=DLAMI_PARAMETER)["Parameter"]["Value"]
        except Exception as error:
            if _code(error) == "ParameterNotFound":
                raise CloudError(f"the Deep Learning AMI is not published in {region} ({DLAMI_PARAMETER}); "
                                 "give an AMI id as compute.image") from None
            raise _error(error, "looking up the Deep Learning AMI") from None

    def _ensure_security_group(self, ec2, made: dict) -> str:
        name = made["CreateSecurityGroup"]["GroupName"]
        found = self._call("describing security groups", ec2.describe_security_groups,
                           Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]
        if found:
            return found[0]["GroupId"]
        group = self._call("creating the security group", ec2.create_security_group,
                           **made["CreateSecurityGroup"])["GroupId"]
        self._call("opening SSH", ec2.authorize_security_group_ingress, GroupId=group,
                   **made["AuthorizeSecurityGroupIngress"])
        return group

    def _ensure_role(self, made: dict) -> None:
        iam = self._client("iam")
        name = made["CreateRole"]["RoleName"]
        for call, params, exists in (
                (iam.create_role, made["CreateRole"], "EntityAlreadyExists"),
                (iam.create_instance_profile, {"InstanceProfileName": name, "Tags": made["CreateRole"]["Tags"]},
                 "EntityAlreadyExists"),
                (iam.add_role_to_instance_profile, {"InstanceProfileName": name, "RoleName": name}, "LimitExceeded")):
            self._ensure(call, params, exists, "creating the instance identity")
        self._call("setting the instance identity's policy", iam.put_role_policy, **made["PutRolePolicy"])

    # --- observe and resize -------------------------------------------------------------------------
    def _auto_scaling_groups(self, region: str, filters: list[dict]) -> list[dict]:
        pages = self._client("autoscaling", region).get_paginator("describe_auto_scaling_groups").paginate(
            Filters=filters)
        try:
            return [g for page in pages for g in page["AutoScalingGroups"]]
        except Exception as error:
            raise _error(error, "describe_auto_scaling_groups") from None

    def _describe(self, region: str, filters: list[dict]) -> list[dict]:
        pages = self._client("ec2", region).get_paginator("describe_instances").paginate(Filters=filters)
        try:
            return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        except Exception as error:
            raise _error(error, "describe_instances") from None

    def spot_prices(self, region: str, instance_type: str, zone: Optional[str], start: float,
                    end: float) -> Optional[list[tuple[float, float]]]:
        """EC2's spot price history (kept 90 days): the changes within [start, end] and the last one before
        start, which is the price in force at start."""
        selector = {"AvailabilityZoneId": zone} if zone else {}
        pages = self._client("ec2", region).get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=[instance_type], ProductDescriptions=["Linux/UNIX"], **selector,
            StartTime=datetime.fromtimestamp(start, timezone.utc), EndTime=datetime.fromtimestamp(end, timezone.utc))
        try:
            steps = [(item["Timestamp"].timestamp(), float(item["SpotPrice"])) for page in pages
                     for item in page["SpotPriceHistory"]]
        except Exception as error:
            raise _error(error, "describe_spot_price_history") from None
        return sorted(steps) or None

    def _zone_id(self, region: str, zone: Optional[str]) -> Optional[str]:
        """The zone's ID, what the bundle's price table is keyed by (one describe per region, cached)."""
        if region not in self._zone_names:
            zones = self._call("describing zones", self._client("ec2", region).describe_availability_zones)
            self._zone_names[region] = {z["ZoneName"]: z["ZoneId"] for z in zones["AvailabilityZones"]}
        return self._zone_names[region].get(zone, zone)

    def _instance(self, described: dict, region: str, all_spot: bool) -> Instance:
        tags = {t["Key"]: t["Value"] for t in described.get("Tags", [])}
        return Instance(
            instance_id=described["InstanceId"], job_id=tags.get(JOB_TAG, ""), group=tags.get(GROUP_TAG, ""),
            cloud="aws", region=region,
            zone=self._zone_id(region, described.get("Placement", {}).get("AvailabilityZone")),
            instance_type=described["InstanceType"],
            spot=described.get("InstanceLifecycle") == "spot" or all_spot, state=_state(described),
            launched_at=_parse_time(described.get("LaunchTime")), ended_at=_ended_at(described))

    @staticmethod
    def _all_spot(described_group: dict) -> bool:
        distribution = described_group.get("MixedInstancesPolicy", {}).get("InstancesDistribution", {})
        return (int(distribution.get("OnDemandBaseCapacity", 0)) == 0
                and int(distribution.get("OnDemandPercentageAboveBaseCapacity", 100)) == 0)

    def _groups(self, region: str, job_id: Optional[str]) -> list[Group]:
        selector = ({"Name": f"tag:{JOB_TAG}", "Values": [job_id]} if job_id else {"Name": "tag-key", "Values": [JOB_TAG]})
        found = self._auto_scaling_groups(region, [selector])
        if not found:
            return []
        by_name = {g["AutoScalingGroupName"]: g for g in found}
        instances: dict[str, list[Instance]] = {}
        # Terminated instances stay listed for about an hour: that is how ended ones are seen with their end.
        for described in self._describe(region, [selector if job_id else {"Name": "tag-key", "Values": [JOB_TAG]}]):
            tags = {t["Key"]: t["Value"] for t in described.get("Tags", [])}
            if tags.get(ASG_TAG) in by_name:
                instances.setdefault(tags[ASG_TAG], []).append(
                    self._instance(described, region, self._all_spot(by_name[tags[ASG_TAG]])))
        result = []
        for name, described_group in by_name.items():
            tags = {t["Key"]: t["Value"] for t in described_group.get("Tags", [])}
            group = Group(job_id=tags.get(JOB_TAG, ""), name=tags.get(GROUP_TAG, name),
                          size=described_group["DesiredCapacity"],
                          instances=tuple(sorted(instances.get(name, []), key=lambda i: i.launched_at or 0)),
                          reason=tags.get(REASON_TAG) or None)
            if tags.get(JOB_URL_TAG):
                self._job_urls[group.job_id, group.name] = tags[JOB_URL_TAG]
            result.append(group)
        return sorted(result, key=lambda g: g.name)

    def groups(self, job_id: str) -> list[Group]:
        """One describe_auto_scaling_groups and one describe_instances per region (plus, once per
        region and provisioner, the zone names' IDs)."""
        return [g for region in sorted(self.regions) for g in self._groups(region, job_id)]

    def revive(self, job_id: str) -> list[str]:
        """The Auto Scaling group is the cloud's own engine: nothing of ours to start again."""
        return []

    def resize(self, job_id: str, group: str, size: int, reason: Optional[str] = None) -> None:
        name = group_name(job_id, group)
        for region in sorted(self.regions):
            client = self._client("autoscaling", region)
            if not self._call("describing the group", client.describe_auto_scaling_groups,
                              AutoScalingGroupNames=[name])["AutoScalingGroups"]:
                continue  # a missing group is success
            # The reason before the resize: the group may end the calling instance (and this call) at once. A
            # refused note must not stop the resize, which is what stops the bill: its error comes after it.
            noted = None
            if reason:
                try:
                    self._call(f"noting why {name} was resized", client.create_or_update_tags, Tags=[{
                        "ResourceId": name, "ResourceType": "auto-scaling-group", "Key": REASON_TAG,
                        "Value": reason[:256], "PropagateAtLaunch": False}])
                except NascloudError as error:
                    noted = error
            self._call(f"resizing {name}", client.set_desired_capacity, AutoScalingGroupName=name,
                       DesiredCapacity=size, HonorCooldown=False)
            if noted:
                raise noted

    def use_on_demand(self, job_id: str, group: str) -> None:
        """The group's later instances on-demand: only the instances distribution changes (no launch template
        in the request, so the instance identity needs no ec2:RunInstances or iam:PassRole for it)."""
        name = group_name(job_id, group)
        for region in sorted(self.regions):
            self._call(f"switching {name} to on-demand", self._client("autoscaling", region).update_auto_scaling_group,
                       AutoScalingGroupName=name, CapacityRebalance=False, MixedInstancesPolicy={
                           "InstancesDistribution": {"OnDemandBaseCapacity": 0,
                                                     "OnDemandPercentageAboveBaseCapacity": 100}})

    def delete(self, job_id: str, tries: int = 60) -> None:
        name = _name(job_id)
        for region in sorted(self.regions):
            ec2, auto_scaling = self._client("ec2", region), self._client("autoscaling", region)
            found = self._auto_scaling_groups(region, [{"Name": f"tag:{JOB_TAG}", "Values": [job_id]}])
            for described in found:
                self.resize(job_id, {t["Key"]: t["Value"] for t in described["Tags"]}.get(GROUP_TAG, ""), 0)
            self._wait_gone(region, job_id, tries)
            for described in found:
                # At 0 with no instance left, ForceDelete only skips waiting on scaling activities.
                self._quiet(auto_scaling.delete_auto_scaling_group, {
                    "AutoScalingGroupName": described["AutoScalingGroupName"], "ForceDelete": True}, "ValidationError")
            templates = self._call("describing launch templates", ec2.describe_launch_templates,
                                   Filters=[{"Name": f"tag:{JOB_TAG}", "Values": [job_id]}])["LaunchTemplates"]
            for template in templates:
                self._quiet(ec2.delete_launch_template, {"LaunchTemplateId": template["LaunchTemplateId"]},
                            "InvalidLaunchTemplateId.NotFound")
            for group in self._call("describing security groups", ec2.describe_security_groups, Filters=[
                    {"Name": "group-name", "Values": [name]}])["SecurityGroups"]:
                self._quiet(ec2.delete_security_group, {"GroupId": group["GroupId"]}, "InvalidGroup.NotFound")
        iam = self._client("iam")
        for call, params in ((iam.remove_role_from_instance_profile, {"InstanceProfileName": name, "RoleName": name}),
                             (iam.delete_instance_profile, {"InstanceProfileName": name}),
                             (iam.delete_role_policy, {"RoleName": name, "PolicyName": "job"}),
                             (iam.delete_role, {"RoleName": name}),
                             (iam.delete_role_policy, {"RoleName": _fis_role(job_id), "PolicyName": "interrupt"}),
                             (iam.delete_role, {"RoleName": _fis_role(job_id)})):
            self._quiet(call, params, "NoSuchEntity")
        remove_job_keys(self.home, job_id)

    def _quiet(self, call, params: dict, missing: str) -> None:
        try:
            call(**params)
        except Exception as error:
            if _code(error) != missing:
                raise _error(error, f"deleting {next(iter(params.values()))}") from None

    def _wait_gone(self, region: str, job_id: str, tries: int) -> None:
        """A security group can only go once the job's instances have finished terminating."""
        filters = [{"Name": f"tag:{JOB_TAG}", "Values": [job_id]},
                   {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped",
                                                             "shutting-down"]}]
        for _ in range(tries):
            left = self._describe(region, filters)
            if not left:
                return
            time.sleep(self._poll)
        raise CloudError(f"{', '.join(d['InstanceId'] for d in left)} of job {job_id} are still terminating; "
                         "run the command again in a minute")

    def list_owned(self) -> list[Group]:
        return [g for region in sorted(self.regions) for g in self._groups(region, None)]

    def job_url(self, group: Group) -> Optional[str]:
        if (group.job_id, group.name) not in self._job_urls:
            self.groups(group.job_id)
        return self._job_urls.get((group.job_id, group.name))

    # --- fire drill ------------------------------------------------------------------------------------
    def preempt(self, instance: Instance) -> None:
        """Interrupt a spot instance with AWS FIS (two minutes' notice, then the reclaim), through a per-job
        role FIS assumes; the experiment template is deleted once the experiment has started."""
        if not instance.spot:
            raise UsageError(f"{instance.instance_id} is on-demand: only spot instances can be interrupted; "
                             "drill a job that runs on spot (compute.spot: true)")
        iam, fis = self._client("iam", instance.region), self._client("fis", instance.region)
        name = _fis_role(instance.job_id)  # deleted by delete()
        try:
            # arn:PARTITION:sts::ACCOUNT:... gives the partition and account (GetCallerIdentity needs no permission).
            caller = self._client("sts", instance.region).get_caller_identity()["Arn"]
            partition, account = caller.split(":")[1], caller.split(":")[4]
            # Only this account's FIS experiments may assume it
            # (https://docs.aws.amazon.com/fis/latest/userguide/getting-started-iam-service-role.html).
            trust = _trust("fis.amazonaws.com", account,
                           f"arn:{partition}:fis:{instance.region}:{account}:experiment/*")
            try:
                role_arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust),
                                           Tags=[{"Key": JOB_TAG, "Value": instance.job_id}])["Role"]["Arn"]
            except Exception as error:
                if _code(error) != "EntityAlreadyExists":
                    raise
                role_arn = iam.get_role(RoleName=name)["Role"]["Arn"]
            instance_arn = f"arn:{partition}:ec2:{instance.region}:{account}:instance/{instance.instance_id}"
            # The action's permissions: it describes its target, then interrupts it
            # (https://docs.aws.amazon.com/fis/latest/userguide/fis-actions-reference.html,
            # "aws:ec2:send-spot-instance-interruptions").
            iam.put_role_policy(RoleName=name, PolicyName="interrupt", PolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Action": "ec2:SendSpotInstanceInterruptions", "Resource": instance_arn},
                    {"Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"}]}))
            self._delete_templates(instance.region, instance.job_id)  # left by a drill that stopped half-way
            template = self._create_template(fis, fis_template(instance.job_id, instance_arn, role_arn))
            try:
                fis.start_experiment(experimentTemplateId=template, tags={JOB_TAG: instance.job_id})
            finally:
                fis.delete_experiment_template(id=template)
        except NascloudError:
            raise
        except Exception as error:
            raise _error(error, f"interrupting {instance.instance_id} with FIS") from None

    def _create_template(self, fis, template: dict) -> str:
        # A role made a moment ago is not yet assumable by FIS (IAM is eventually consistent).
        attempt = 0
        while True:
            try:
                return fis.create_experiment_template(**template)["experimentTemplate"]["id"]
            except Exception as error:
                attempt += 1
                if _code(error) != "ValidationException" or "role" not in str(error).lower() or attempt == 12:
                    raise
                time.sleep(self._poll)

    def _delete_templates(self, region: str, job_id: str) -> None:
        fis = self._client("fis", region)
        for page in fis.get_paginator("list_experiment_templates").paginate():
            for template in page["experimentTemplates"]:
                if template.get("tags", {}).get(JOB_TAG) == job_id:
                    fis.delete_experiment_template(id=template["id"])

    # --- the instance side --------------------------------------------------------------------------------
    def whoami(self, job_id: str, group: str) -> Instance:
        """This instance from IMDSv2 (a session token first: the launch template requires it), and its
        launch time from DescribeInstances."""
        base = os.environ.get(METADATA_ENV, "http://169.254.169.254").rstrip("/")
        try:
            token_request = urllib.request.Request(f"{base}/latest/api/token", method="PUT",
                                                   headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
            with urllib.request.urlopen(token_request, timeout=5) as reply:
                token = reply.read().decode()

            def read(path: str) -> str:
                request = urllib.request.Request(f"{base}/latest/meta-data/{path}",
                                                 headers={"X-aws-ec2-metadata-token": token})
                with urllib.request.urlopen(request, timeout=5) as reply:
                    return reply.read().decode().strip()

            instance_id, kind = read("instance-id"), read("instance-type")
            zone_id, life_cycle = read("placement/availability-zone-id"), read("instance-life-cycle")
        except OSError as error:
            raise CloudError(f"cannot read this instance's metadata at {base} ({error}); is this an EC2 instance?") \
                from None
        found = self._describe(self.region, [{"Name": "instance-id", "Values": [instance_id]}])
        return Instance(instance_id=instance_id, job_id=job_id, group=group, cloud="aws", region=self.region,
                        zone=zone_id, instance_type=kind, spot=life_cycle == "spot",
                        state=_state(found[0]) if found else State.RUNNING,
                        launched_at=_parse_time(found[0]["LaunchTime"]) if found else None)

    def power_off(self) -> None:
        power_off()


def _cidr(spec) -> Optional[str]:
    """compute.ssh_cidr checked, or None: no SSH, no inbound port (nothing is looked up for the caller)."""
    return ssh_cidr(spec, lambda: "") if spec.compute.ssh_cidr else None

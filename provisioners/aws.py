"""AWS: one spot (or on-demand) GPU instance per job, through boto3.

What a job creates, all named nascloud-<job-id> and tagged nascloud:job / nascloud:owner: an EC2 key pair
(public half of a key generated here; the private key stays under NASCLOUD_HOME, 0600), a security group
admitting only 22/tcp from the caller's CIDR, an IAM role + instance profile whose only permission is the
job's prefix in the bucket, and the instance (IMDSv2 required, user-data = the bootstrap script). A fire
drill adds a role nascloud-fis-<job-id> that only AWS FIS may assume, to interrupt the job's spot instance.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from nascloud.errors import CapacityError, CloudError, NascloudError, UsageError
from nascloud.provisioners.base import Instance, Offer, SshTarget, State
from nascloud.provisioners.common import (CLOUD_PYTHON, CLOUD_ROOT, LaunchOffer, as_offer, cloud_bootstrap, default_owner, host_key_line, job_keys,
                                          job_prefix, lookup_public_cidr, remove_job_keys, ssh_cidr)

# The Deep Learning Base AMI (NVIDIA driver, Ubuntu 22.04), found through AWS's public SSM parameter.
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
SSH_USER = "ubuntu"
JOB_TAG, OWNER_TAG = "nascloud:job", "nascloud:owner"
ZONE_ID = re.compile(r"^[a-z]+[0-9]+-az[0-9]+$")  # use1-az2: the catalog's zones, the same in every account
JOB_URL_TAG = "nascloud:job-url"  # where the job's lease is: `gc` on any machine can judge the instance
SPOT_REASONS = {"Server.SpotInstanceTermination", "Server.SpotInstanceShutdown"}
# Service Quotas codes (vCPUs) per instance family: (spot, on-demand).
QUOTAS = {
    "g": ("L-3819A6DF", "L-DB2E81BA"),  # All G and VT Spot Instance Requests / Running On-Demand G and VT
    "vt": ("L-3819A6DF", "L-DB2E81BA"),
    "p": ("L-7212CCBC", "L-417A185B"),  # All P Spot Instance Requests / Running On-Demand P
}
CAPACITY_CODES = {"InsufficientInstanceCapacity", "InsufficientCapacity", "SpotMaxPriceTooLow"}
QUOTA_CODES = {"MaxSpotInstanceCountExceeded", "VcpuLimitExceeded", "InstanceLimitExceeded"}
AUTH_CODES = {"AuthFailure", "UnauthorizedOperation", "AccessDenied", "AccessDeniedException",
              "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken", "UnrecognizedClientException"}


def _name(job_id: str) -> str:
    return f"nascloud-{job_id}"


def _error(error: Exception, what: str, offer: Optional[LaunchOffer] = None) -> NascloudError:
    """A boto3 failure as one line naming the cause and what to try."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(error, NoCredentialsError):
        return CloudError("no AWS credentials found; run `aws configure` or set AWS_PROFILE / AWS_ACCESS_KEY_ID")
    if not isinstance(error, ClientError):
        return CloudError(f"AWS {what} failed: {error}")
    code = error.response["Error"].get("Code", "")
    message = error.response["Error"].get("Message", "")
    kind = f"{offer.instance_type} {'spot' if offer.spot else 'on-demand'}" if offer else "the instance"
    where = (offer.zone or offer.region) if offer else "this region"
    if code in CAPACITY_CODES:
        return CapacityError(f"AWS has no {kind} capacity in {where} right now ({code}); try another zone "
                          "(compute.zone), another region, or on-demand (compute.spot: false)")
    if code in QUOTA_CODES:
        return CloudError(f"your AWS quota does not allow another {kind} ({code}: {message}); request an increase "
                          "in the Service Quotas console, or try on-demand (compute.spot: false)")
    if code in AUTH_CODES:
        return CloudError(f"AWS refused {what} ({code}); check your credentials and the permissions listed in "
                          "the README, 'Providers and permissions'")
    return CloudError(f"AWS {what} failed: {code}: {message}")


def _code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return response.get("Error", {}).get("Code", "")


def role_policy(bucket: str, prefix: str) -> dict:
    """The instance role's only permission: objects under the job's prefix, and listing that prefix."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "JobObjects", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
             "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*"},
            {"Sid": "JobListing", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}",
             "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}},
        ],
    }


def _trust(service: str) -> dict:
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]}


TRUST_POLICY = _trust("ec2.amazonaws.com")
# The fire drill: FIS sends the instance AWS's real two-minute spot interruption notice, then reclaims it.
FIS_ACTION = "aws:ec2:send-spot-instance-interruptions"
FIS_NOTICE = "PT2M"  # the shortest notice FIS allows, the same as a real reclaim's


def _fis_role(job_id: str) -> str:
    return f"nascloud-fis-{job_id}"


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


def _requests(job_id: str, offer: LaunchOffer, spec, image: str, cidr: str, user_data: str,
              security_group: str, owner: str) -> dict:
    """Every request launch makes, as the API receives it (shared by launch and the dry run)."""
    name = _name(job_id)
    tags = [{"Key": JOB_TAG, "Value": job_id}, {"Key": OWNER_TAG, "Value": owner}, {"Key": "Name", "Value": name}]
    bucket = job_prefix(spec, job_id, "s3")
    if len(bucket.url) <= 256:  # EC2's longest tag value
        tags.append({"Key": JOB_URL_TAG, "Value": bucket.url})
    run = {
        "ImageId": image, "InstanceType": offer.instance_type, "MinCount": 1, "MaxCount": 1,
        "KeyName": name, "SecurityGroupIds": [security_group], "IamInstanceProfile": {"Name": name},
        "UserData": user_data,
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
    }
    if offer.spot:
        run["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
            "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
    if offer.zone:
        run["Placement"] = {"AvailabilityZone": offer.zone}
    return {
        "CreateSecurityGroup": {"GroupName": name, "Description": f"nascloud {job_id}: SSH from {cidr} only",
                                "TagSpecifications": [{"ResourceType": "security-group", "Tags": tags}]},
        "AuthorizeSecurityGroupIngress": {"IpPermissions": [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                                                             "IpRanges": [{"CidrIp": cidr}]}]},
        "CreateRole": {"RoleName": name, "AssumeRolePolicyDocument": json.dumps(TRUST_POLICY),
                       "Tags": [{"Key": JOB_TAG, "Value": job_id}]},
        "PutRolePolicy": {"RoleName": name, "PolicyName": "job-prefix",
                          "PolicyDocument": json.dumps(role_policy(bucket.bucket, bucket.prefix))},
        "RunInstances": run,
    }


def _zone_id(offer: LaunchOffer) -> Optional[str]:
    """The zone ID to place the instance in, unless the offer names its zone (compute.zone may be either)."""
    if offer.zone:
        return offer.zone if ZONE_ID.match(offer.zone) else None
    return offer.zone_id


def _zones(ec2, offer: LaunchOffer, **selector) -> list[dict]:
    """The zones describe_availability_zones finds for the selector; none for a name it does not know."""
    try:
        return ec2.describe_availability_zones(**selector)["AvailabilityZones"]
    except Exception as error:
        if _code(error) != "InvalidParameterValue":
            raise _error(error, "describing the zone", offer) from None
        return []


def launch_request(job_id: str, offer: Offer, spec) -> dict:
    """What launch would send, with no credentials and no network: look-ups show as placeholders."""
    offer = as_offer(offer, spec)
    if zone_id := _zone_id(offer):
        offer = replace(offer, zone=f"<your account's name for zone {zone_id}>")
    bucket = job_prefix(spec, job_id, "s3")
    image = spec.compute.image or f"<resolved at launch from SSM {DLAMI_PARAMETER}>"
    cidr = spec.compute.ssh_cidr or "<your public address>/32"
    user_data = cloud_bootstrap("aws", bucket.url, offer.gpu, None)
    requests = _requests(job_id, offer, spec, image, cidr, user_data, "<id of security group nascloud-"
                         f"{job_id}>", default_owner())
    return {"cloud": "aws", "region": offer.region, **requests}


class AwsProvisioner:
    cloud = "aws"

    def __init__(self, home: Optional[Path] = None, region: Optional[str] = None, owner: Optional[str] = None,
                 ssh_address: Optional[Callable[[Instance], tuple[str, int]]] = None,
                 cidr_lookup: Callable[[], str] = lookup_public_cidr, poll_seconds: float = 5.0,
                 ssh_user: str = SSH_USER):
        """ssh_address overrides where SSH connects (tests map an instance to a local sshd: the public
        addresses an emulator invents must never be contacted). cidr_lookup finds the caller's address
        when the job file gives no compute.ssh_cidr. ssh_user is the image's login (ubuntu on the DLAMI)."""
        from nascloud.aws_session import aws_session

        self._session = aws_session()
        self.home = home
        self.owner = owner or default_owner()
        self.regions = {region or self._session.region_name or "us-east-1"}
        self._ssh_address = ssh_address
        self._cidr_lookup = cidr_lookup
        self._poll = poll_seconds
        self.ssh_user = ssh_user
        self._clients: dict[tuple[str, str], object] = {}

    def _client(self, service: str, region: str):
        if (service, region) not in self._clients:
            self._clients[service, region] = self._session.client(service, region_name=region)
        return self._clients[service, region]

    def _region(self, offer: LaunchOffer) -> str:
        region = offer.region or next(iter(self.regions))
        if region not in self._session.get_available_regions("ec2"):
            raise UsageError(f"unknown AWS region {region!r}; use one like us-east-1 (compute.region)")
        self.regions.add(region)
        return region

    def _check_offer(self, ec2, offer: LaunchOffer) -> int:
        """Validate the instance type and zone; returns the type's vCPUs."""
        if not offer.instance_type:
            raise UsageError("no AWS instance type: set compute.instance_type (e.g. g4dn.xlarge) or compute.gpu")
        try:
            types = ec2.describe_instance_types(InstanceTypes=[offer.instance_type])["InstanceTypes"]
        except Exception as error:
            if _code(error).startswith("InvalidInstanceType"):
                raise UsageError(f"unknown AWS instance type {offer.instance_type!r}; use one like g4dn.xlarge "
                                 "(see `nascloud prices --cloud aws`)") from None
            raise _error(error, "describing the instance type", offer) from None
        if offer.zone:
            if not _zones(ec2, offer, ZoneNames=[offer.zone]):
                raise UsageError(f"unknown availability zone {offer.zone!r}; "
                                 "use one like us-east-1a (compute.zone)")
        return types[0].get("VCpuInfo", {}).get("DefaultVCpus", 1)

    def _instance(self, described: dict, region: str) -> Instance:
        tags = {t["Key"]: t["Value"] for t in described.get("Tags", [])}
        return Instance(
            instance_id=described["InstanceId"], job_id=tags.get(JOB_TAG, ""), cloud="aws", region=region,
            zone=described.get("Placement", {}).get("AvailabilityZone"), instance_type=described["InstanceType"],
            spot=described.get("InstanceLifecycle") == "spot", launched_at=described["LaunchTime"].timestamp(),
            extra={"python": CLOUD_PYTHON, "bootstrap_dir": CLOUD_ROOT, "public_ip": described.get("PublicIpAddress"),
                   "job_url": tags.get(JOB_URL_TAG)},
        )

    def _describe(self, region: str, filters: list[dict]) -> list[dict]:
        pages = self._client("ec2", region).get_paginator("describe_instances").paginate(Filters=filters)
        try:
            return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        except Exception as error:
            raise _error(error, "describe_instances") from None

    # --- protocol ------------------------------------------------------------------------------
    def preflight(self, offer: Offer, spec) -> None:
        offer = as_offer(offer, spec)
        region = self._region(offer)
        vcpus = self._check_offer(self._client("ec2", region), offer)
        bucket = job_prefix(spec, "preflight", "s3")
        try:
            self._client("s3", region).head_bucket(Bucket=bucket.bucket)
        except Exception as error:
            if _code(error) in ("404", "NoSuchBucket"):
                raise UsageError(f"bucket s3://{bucket.bucket} does not exist; create it "
                                 f"(`aws s3 mb s3://{bucket.bucket}`) or fix checkpoint.bucket") from None
            raise _error(error, f"reaching bucket s3://{bucket.bucket}") from None
        family = "vt" if offer.instance_type.startswith("vt") else offer.instance_type[:1]
        if family not in QUOTAS:
            return  # not a GPU family nascloud knows the quota code of
        code = QUOTAS[family][0 if offer.spot else 1]
        quota = self._quota(region, code)
        if quota is not None and quota < vcpus:
            market = "spot" if offer.spot else "on-demand"
            raise CloudError(f"your AWS {market} quota for {offer.instance_type} in {region} is {quota:g} vCPUs and "
                             f"it needs {vcpus} (new accounts start at 0); request an increase of quota {code} in the "
                             "Service Quotas console"
                             + (", or try on-demand (compute.spot: false)" if offer.spot else ""))

    def _quota(self, region: str, code: str) -> Optional[float]:
        quotas = self._client("service-quotas", region)
        for call in (quotas.get_service_quota, quotas.get_aws_default_service_quota):
            try:
                return float(call(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
            except Exception as error:
                if _code(error) != "NoSuchResourceException":
                    raise _error(error, "reading the GPU quota") from None
        return None

    def launch(self, job_id: str, offer: Offer, spec) -> Instance:
        offer = as_offer(offer, spec)
        region = self._region(offer)
        for existing in self.list_owned(job_id):
            if existing.region == region:
                return existing
        bucket = job_prefix(spec, job_id, "s3")
        cidr = ssh_cidr(spec, self._cidr_lookup)
        ec2 = self._client("ec2", region)
        offer = self._placed(ec2, offer, region)
        self._check_offer(ec2, offer)
        image = spec.compute.image or self._image(region)
        client_key, host_key = job_keys(self.home, job_id)
        user_data = cloud_bootstrap("aws", bucket.url, offer.gpu, host_key)
        requests = _requests(job_id, offer, spec, image, cidr, user_data, "", self.owner)
        try:
            self._ensure_key_pair(ec2, job_id, client_key.public_line)
            group = self._ensure_security_group(ec2, requests)
            self._ensure_role(region, requests)
        except Exception as error:
            raise _error(error, "preparing the job's key pair, security group and role", offer) from None
        requests["RunInstances"]["SecurityGroupIds"] = [group]
        return self._instance(self._run(ec2, requests["RunInstances"], offer), region)

    def _placed(self, ec2, offer: LaunchOffer, region: str) -> LaunchOffer:
        """The offer in the zone its catalog price is for: zone IDs are the same in every account, the
        names they map to are not."""
        zone_id = _zone_id(offer)
        if not zone_id:
            return offer
        zones = _zones(ec2, offer, ZoneIds=[zone_id])
        if not zones:
            raise CapacityError(f"availability zone {zone_id} is not offered to this account in {region}; "
                                "another zone is tried next")
        return replace(offer, zone=zones[0]["ZoneName"])

    def _run(self, ec2, params: dict, offer: LaunchOffer) -> dict:
        # A new instance profile takes a few seconds to be usable by EC2 (IAM is eventually consistent).
        attempt = 0
        while True:
            try:
                return ec2.run_instances(**params)["Instances"][0]
            except Exception as error:
                attempt += 1
                if _code(error) != "InvalidParameterValue" or "iam" not in str(error).lower() or attempt == 12:
                    raise _error(error, "run_instances", offer) from None
                time.sleep(self._poll)

    def _image(self, region: str) -> str:
        try:
            return self._client("ssm", region).get_parameter(Name=DLAMI_PARAMETER)["Parameter"]["Value"]
        except Exception as error:
            if _code(error) == "ParameterNotFound":
                raise CloudError(f"the Deep Learning AMI is not published in {region} ({DLAMI_PARAMETER}); "
                                 "give an AMI id as compute.image") from None
            raise _error(error, "looking up the Deep Learning AMI") from None

    def _ensure_key_pair(self, ec2, job_id: str, public_line: str) -> None:
        try:
            ec2.import_key_pair(KeyName=_name(job_id), PublicKeyMaterial=public_line.encode(), TagSpecifications=[
                {"ResourceType": "key-pair", "Tags": [{"Key": JOB_TAG, "Value": job_id}]}])
        except Exception as error:
            if _code(error) != "InvalidKeyPair.Duplicate":
                raise

    def _ensure_security_group(self, ec2, requests: dict) -> str:
        name = requests["CreateSecurityGroup"]["GroupName"]
        found = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]
        if found:
            return found[0]["GroupId"]
        group = ec2.create_security_group(**requests["CreateSecurityGroup"])["GroupId"]
        ec2.authorize_security_group_ingress(GroupId=group, **requests["AuthorizeSecurityGroupIngress"])
        return group

    def _ensure_role(self, region: str, requests: dict) -> None:
        iam = self._client("iam", region)
        name = requests["CreateRole"]["RoleName"]
        for call, params in ((iam.create_role, requests["CreateRole"]),
                             (iam.create_instance_profile, {"InstanceProfileName": name}),
                             (iam.add_role_to_instance_profile, {"InstanceProfileName": name, "RoleName": name})):
            try:
                call(**params)
            except Exception as error:
                if _code(error) not in ("EntityAlreadyExists", "LimitExceeded"):
                    raise
        iam.put_role_policy(**requests["PutRolePolicy"])

    def status(self, instances: list[Instance]) -> dict[str, State]:
        states = {i.instance_id: State.TERMINATED for i in instances}  # gone from AWS: terminated long ago
        by_region: dict[str, list[str]] = {}
        for instance in instances:
            by_region.setdefault(instance.region, []).append(instance.instance_id)
        for region, ids in by_region.items():
            for start in range(0, len(ids), 200):  # the API takes at most 200 values per filter
                for described in self._describe(region, [{"Name": "instance-id", "Values": ids[start:start + 200]}]):
                    states[described["InstanceId"]] = _state(described)
        return states

    def terminate(self, instances: list[Instance]) -> None:
        by_region: dict[str, list[str]] = {}
        for instance in instances:
            by_region.setdefault(instance.region, []).append(instance.instance_id)
        for region, ids in by_region.items():
            # Only those that exist and are not already going: a missing instance is success.
            live = [d["InstanceId"] for d in self._describe(region, [
                {"Name": "instance-id", "Values": ids},
                {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])]
            if live:
                try:
                    self._client("ec2", region).terminate_instances(InstanceIds=live)
                except Exception as error:
                    raise _error(error, "terminate_instances") from None

    def list_owned(self, job_id: Optional[str] = None) -> list[Instance]:
        tag = ({"Name": f"tag:{JOB_TAG}", "Values": [job_id]} if job_id else {"Name": "tag-key", "Values": [JOB_TAG]})
        live = {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}
        return [self._instance(d, region) for region in sorted(self.regions)
                for d in self._describe(region, [tag, live])]

    def ssh_target(self, instance: Instance) -> SshTarget:
        client_key, host_key = job_keys(self.home, instance.job_id)
        if self._ssh_address:
            host, port = self._ssh_address(instance)
        else:
            found = self._describe(instance.region, [{"Name": "instance-id", "Values": [instance.instance_id]}])
            host, port = (found[0].get("PublicIpAddress") if found else None), 22
            if not host:
                raise CloudError(f"{instance.instance_id} has no public address (yet); wait until it is running")
        return SshTarget(host, port, self.ssh_user, str(client_key.private_path), host_key_line(host_key))

    def release(self, job_id: str) -> None:
        name = _name(job_id)
        for region in sorted(self.regions):
            ec2 = self._client("ec2", region)
            self._wait_gone(region, job_id)
            for call, params, missing in (
                (self._delete_group, {"ec2": ec2, "name": name}, ""),
                (ec2.delete_key_pair, {"KeyName": name}, "InvalidKeyPair.NotFound"),
            ):
                try:
                    call(**params)
                except Exception as error:
                    if _code(error) != missing:
                        raise _error(error, f"deleting {name}") from None
        iam = self._client("iam", next(iter(sorted(self.regions))))
        for call, params in ((iam.remove_role_from_instance_profile, {"InstanceProfileName": name, "RoleName": name}),
                             (iam.delete_instance_profile, {"InstanceProfileName": name}),
                             (iam.delete_role_policy, {"RoleName": name, "PolicyName": "job-prefix"}),
                             (iam.delete_role, {"RoleName": name}),
                             (iam.delete_role_policy, {"RoleName": _fis_role(job_id), "PolicyName": "interrupt"}),
                             (iam.delete_role, {"RoleName": _fis_role(job_id)})):
            try:
                call(**params)
            except Exception as error:
                if _code(error) != "NoSuchEntity":
                    raise _error(error, f"deleting the role {name}") from None
        remove_job_keys(self.home, job_id)

    def preempt(self, instance: Instance) -> None:
        """Interrupt a spot instance with AWS FIS (two minutes' notice, then the reclaim), through a per-job
        role FIS assumes; the experiment template is deleted once the experiment has started."""
        if not instance.spot:
            raise UsageError(f"{instance.instance_id} is on-demand: only spot instances can be interrupted; "
                             "drill a job that runs on spot (compute.spot: true)")
        iam, fis = self._client("iam", instance.region), self._client("fis", instance.region)
        name = _fis_role(instance.job_id)  # deleted by release()
        try:
            try:
                role_arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(
                    _trust("fis.amazonaws.com")), Tags=[{"Key": JOB_TAG, "Value": instance.job_id}])["Role"]["Arn"]
            except Exception as error:
                if _code(error) != "EntityAlreadyExists":
                    raise
                role_arn = iam.get_role(RoleName=name)["Role"]["Arn"]
            # arn:PARTITION:iam::ACCOUNT:role/NAME gives the instance's partition and account.
            partition, account = role_arn.split(":")[1], role_arn.split(":")[4]
            instance_arn = f"arn:{partition}:ec2:{instance.region}:{account}:instance/{instance.instance_id}"
            iam.put_role_policy(RoleName=name, PolicyName="interrupt", PolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ec2:SendSpotInstanceInterruptions",
                                                        "Resource": instance_arn}]}))
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

    def _wait_gone(self, region: str, job_id: str, tries: int = 60) -> None:
        """The security group can only go once the job's instances have finished terminating."""
        filters = [{"Name": f"tag:{JOB_TAG}", "Values": [job_id]},
                   {"Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]}]
        for _ in range(tries):
            left = self._describe(region, filters)
            if not left:
                return
            time.sleep(self._poll)
        raise CloudError(f"{', '.join(d['InstanceId'] for d in left)} of job {job_id} still exist; terminate them "
                         "first, then release again")

    @staticmethod
    def _delete_group(ec2, name: str) -> None:
        for group in ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]:
            ec2.delete_security_group(GroupId=group["GroupId"])


def _state(described: dict) -> State:
    """An EC2 instance's state; a spot reclaim reads PREEMPTED whatever the instance's state name."""
    name = described["State"]["Name"]
    reason = described.get("StateReason", {}).get("Code", "")
    if reason in SPOT_REASONS:
        return State.PREEMPTED
    if name == "pending":
        return State.PENDING
    if name == "running":
        return State.RUNNING
    if reason.startswith("Server."):  # e.g. Server.InternalError, Server.InsufficientInstanceCapacity
        return State.FAILED
    return State.TERMINATED

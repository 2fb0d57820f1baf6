"""`nascloud check`: before any money moves, what a launch of the job needs from the cloud, one answer each:
the credentials, the offer and the GPU quota (the provider's own preflight), the permissions the launch
uses (asked of the cloud's own policy evaluation), the bucket reachable and writable. Nothing is created
but one small probe object in the bucket, removed at once."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Callable, Optional

from nascloud.errors import NascloudError
from nascloud.job import JobSpec

# What launch, status, stop and gc call on your machine's identity (provisioners/aws.py and gcp.py; the
# README's "Providers and permissions" lists them with why). The bucket's own are the bucket line's: it
# writes, reads and deletes there for real. Opt-in SSH adds its firewall's.
AWS_ACTIONS = (
    "autoscaling:CreateAutoScalingGroup", "autoscaling:DescribeAutoScalingGroups", "autoscaling:SetDesiredCapacity",
    "autoscaling:UpdateAutoScalingGroup", "autoscaling:CreateOrUpdateTags", "autoscaling:DeleteAutoScalingGroup",
    "autoscaling:PutScheduledUpdateGroupAction",
    "ec2:CreateLaunchTemplate", "ec2:DescribeLaunchTemplates", "ec2:DeleteLaunchTemplate", "ec2:CreateTags",
    "ec2:RunInstances", "ec2:DescribeInstances", "ec2:DescribeInstanceTypes", "ec2:DescribeAvailabilityZones",
    "ec2:DescribeSubnets", "servicequotas:GetServiceQuota", "servicequotas:GetAWSDefaultServiceQuota",
    "ssm:GetParameter", "iam:CreateServiceLinkedRole", "iam:PassRole", "iam:CreateRole", "iam:PutRolePolicy",
    "iam:DeleteRolePolicy", "iam:DeleteRole", "iam:CreateInstanceProfile", "iam:AddRoleToInstanceProfile",
    "iam:RemoveRoleFromInstanceProfile", "iam:DeleteInstanceProfile")
AWS_SSH_ACTIONS = ("ec2:CreateSecurityGroup", "ec2:AuthorizeSecurityGroupIngress", "ec2:DescribeSecurityGroups",
                   "ec2:DeleteSecurityGroup")
GCP_PERMISSIONS = tuple(f"compute.{p}" for p in (
    "instanceTemplates.create", "instanceTemplates.get", "instanceTemplates.list", "instanceTemplates.delete",
    "instanceTemplates.useReadOnly", "instanceGroupManagers.create", "instanceGroupManagers.get",
    "instanceGroupManagers.list", "instanceGroupManagers.update", "instanceGroupManagers.delete",
    "instances.create", "instances.get", "instances.list", "instances.delete", "instances.setMetadata",
    "instances.setLabels", "instances.setTags", "instances.setServiceAccount", "disks.create", "subnetworks.use",
    "subnetworks.useExternalIp", "regionOperations.get", "zoneOperations.get", "globalOperations.get",
    "globalOperations.list", "zones.get", "regions.get", "projects.get", "machineTypes.get", "acceleratorTypes.get",
    "images.useReadOnly"))
GCP_SSH_PERMISSIONS = ("compute.firewalls.create", "compute.firewalls.get", "compute.firewalls.delete")
GCP_PERMISSIONS_API = "https://cloudresourcemanager.googleapis.com"
DENIED_SHOWN = 4  # a FAIL line names this many of the missing ones, then counts the rest


@dataclass(frozen=True)
class Answer:
    what: str
    ok: Optional[bool]  # None: could not be checked (not a failure: the launch itself may still succeed)
    detail: str


def check(spec: JobSpec) -> list[Answer]:
    """Every check, even after one fails, so that one run says all that needs fixing."""
    from nascloud.job import is_placeholder, parseable, placeholder_problem
    from nascloud.launching import new_bundle, quote

    found = quote(spec)  # a bucket of the wrong kind or an unknown offer is a usage error, before the cloud
    bucket = spec.checkpoint.bucket
    # The examples' placeholder fails the bucket line alone: the others need only a job URL that parses.
    bundle = new_bundle(found, f"{spec.name}-check", "data/none", parseable(bucket))
    answers = [_answer("credentials", lambda: _credentials(bundle))]
    if answers[0].ok:
        answers.append(_answer("offer and GPU quota", lambda: _offer(bundle)))
        answers.append(_permissions(bundle))
    else:
        answers += [Answer(what, False, "not checked: it needs the credentials")
                    for what in ("offer and GPU quota", "permissions")]
    answers.append(Answer("bucket", False, placeholder_problem(bucket)) if is_placeholder(bucket)
                   else _answer("bucket", lambda: _probe(bucket)))
    return answers


def _credentials(bundle) -> str:
    from nascloud.provisioners import provisioner_for

    provisioner_for(bundle).groups(bundle.job_id)  # the cheapest call that needs working credentials
    return f"{bundle.offer.cloud} accepts them in {bundle.offer.region}"


def _offer(bundle) -> str:
    from nascloud.launching import group_specs
    from nascloud.provisioners import provisioner_for

    provisioner_for(bundle).preflight(group_specs(bundle))
    offer = bundle.offer
    return (f"{offer.instance_type} ({offer.gpu or 'no GPU'}, {'spot' if offer.spot else 'on-demand'}) in "
            f"{offer.region}: the type, its zones and your GPU quota allow the job's group")


def _answer(what: str, run: Callable[[], str]) -> Answer:
    try:
        return Answer(what, True, run())
    except NascloudError as error:
        return Answer(what, False, str(error))


def _probe(bucket: str) -> str:
    """Write, read back and delete one small object where the job's folders will be."""
    from nascloud.checkpoints import job_url, open_store

    name = f"nascloud-check-{secrets.token_hex(3)}"
    store = open_store(job_url(bucket, name))
    store.put_json("probe.json", {"written_by": "nascloud check"})
    read: Optional[dict] = store.get_json("probe.json")
    store.objects.delete("probe.json")
    if read != {"written_by": "nascloud check"}:
        raise NascloudError(f"{bucket}: an object written there read back differently; check the bucket's settings")
    return f"{bucket} is reachable and writable"


def _permissions(bundle) -> Answer:
    """Which of the launch's actions the caller may not call, asked of the cloud's policy evaluation. A caller
    the cloud will not evaluate (no permission to ask, an identity it cannot simulate) gets "could not
    check", with why: that is no failure of the launch."""
    ssh = bool(bundle.spec.compute.ssh_cidr)
    try:
        if bundle.offer.cloud == "aws":
            who, denied, asked = _aws_denied(bundle, AWS_ACTIONS + (AWS_SSH_ACTIONS if ssh else ()))
        else:
            who, denied, asked = _gcp_denied(bundle, GCP_PERMISSIONS + (GCP_SSH_PERMISSIONS if ssh else ()))
    except _NotChecked as why:
        return Answer("permissions", None, f"could not check: {why}; a launch refused for a permission leaves "
                                           "nothing behind (README: Providers and permissions)")
    except NascloudError as error:
        return Answer("permissions", False, str(error))
    if not denied:
        return Answer("permissions", True, f"{who} may call all {asked} the launch uses")
    more = f" and {len(denied) - DENIED_SHOWN} more" if len(denied) > DENIED_SHOWN else ""
    return Answer("permissions", False, f"{who} may not call {', '.join(denied[:DENIED_SHOWN])}{more}; grant them "
                                        "(README: Providers and permissions lists each with why)")


class _NotChecked(Exception):
    """The cloud would not say (why in words); not a failure of the launch."""


def _aws_denied(bundle, actions: tuple[str, ...]) -> tuple[str, list[str], str]:
    """iam:SimulatePrincipalPolicy for the caller's user or role, each action on the resource launch uses it on
    (the README's least-privilege scopes: the job's role and instance profile, the AMI's public parameter)."""
    from nascloud.aws_session import aws_session
    from nascloud.cloud_errors import one_line
    from nascloud.provisioners.aws import DLAMI_PARAMETER, _code

    session = aws_session()
    try:
        caller = session.client("sts", region_name=bundle.offer.region).get_caller_identity()["Arn"]
    except Exception as error:  # the credentials line already passed: a refusal here is about this call
        raise _NotChecked(f"sts:GetCallerIdentity answered {one_line(str(error))}") from None
    principal = _aws_principal(caller)
    if principal is None:
        return caller, [], f"{len(actions)} actions (the account's root user may call every action)"
    partition, account = caller.split(":")[1], caller.split(":")[4]
    iam_arn = f"arn:{partition}:iam::{account}"
    name = f"nascloud-{bundle.job_id}"
    on = {"iam:CreateServiceLinkedRole":
          f"{iam_arn}:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling",
          "ssm:GetParameter": f"arn:{partition}:ssm:{bundle.offer.region}::parameter{DLAMI_PARAMETER}"}
    on |= {a: f"{iam_arn}:role/{name}" for a in ("iam:PassRole", "iam:CreateRole", "iam:PutRolePolicy",
                                                  "iam:DeleteRolePolicy", "iam:DeleteRole")}
    on |= {a: f"{iam_arn}:instance-profile/{name}" for a in ("iam:CreateInstanceProfile", "iam:DeleteInstanceProfile",
                                                              "iam:AddRoleToInstanceProfile",
                                                              "iam:RemoveRoleFromInstanceProfile")}
    by_resource: dict[str, list[str]] = {}
    for action in actions:
        by_resource.setdefault(on.get(action, "*"), []).append(action)
    iam = session.client("iam")
    allowed = set()
    try:
        for resource, named in by_resource.items():
            pages = iam.get_paginator("simulate_principal_policy").paginate(
                PolicySourceArn=principal, ActionNames=named, ResourceArns=[resource])
            allowed |= {r["EvalActionName"] for page in pages for r in page["EvaluationResults"]
                        if r["EvalDecision"] == "allowed"}
    except Exception as error:
        if _code(error) in ("AccessDenied", "AccessDeniedException"):
            raise _NotChecked(f"{caller} may not call iam:SimulatePrincipalPolicy on itself") from None
        raise _NotChecked(f"iam:SimulatePrincipalPolicy answered {one_line(str(error))}") from None
    return principal, [a for a in actions if a not in allowed], f"{len(actions)} actions"


def _aws_principal(caller: str) -> Optional[str]:
    """The IAM user or role whose policies decide for the caller (an assumed role's session: its role);
    None for the account's root user, whom no policy limits."""
    arn = re.fullmatch(r"arn:([\w-]+):(iam|sts)::(\d+):(.+)", caller)
    if arn is None:
        raise _NotChecked(f"{caller} is not an IAM user or role")
    partition, _, account, resource = arn.groups()
    if resource == "root":
        return None
    if resource.startswith("user/"):
        return f"arn:{partition}:iam::{account}:{resource}"
    if resource.startswith("assumed-role/"):
        return f"arn:{partition}:iam::{account}:role/{resource.split('/')[1]}"
    raise _NotChecked(f"{caller} is not an IAM user or role the policy simulator evaluates")


def _gcp_denied(bundle, permissions: tuple[str, ...]) -> tuple[str, list[str], str]:
    """The project's testIamPermissions (Resource Manager): which of these the caller holds on the project."""
    import os

    from google.auth.transport.requests import AuthorizedSession

    from nascloud.cloud_errors import one_line
    from nascloud.provisioners import provisioner_for
    from nascloud.provisioners.gcp import ENDPOINT_ENV

    provisioner = provisioner_for(bundle)
    credentials = provisioner._authenticate()  # the launch's own: ADC, or anonymous at a test endpoint
    api = os.environ.get(ENDPOINT_ENV) or GCP_PERMISSIONS_API
    try:
        reply = AuthorizedSession(credentials).post(f"{api}/v1/projects/{provisioner.project}:testIamPermissions",
                                                    json={"permissions": list(permissions)}, timeout=30)
    except Exception as error:
        raise _NotChecked(f"Resource Manager's testIamPermissions is unreachable ({one_line(str(error))})") from None
    if reply.status_code != 200:
        message = reply.json().get("error", {}).get("message", reply.text) if reply.content else reply.reason
        raise _NotChecked(f"Resource Manager's testIamPermissions answered {reply.status_code}: {one_line(message)}")
    held = set(reply.json().get("permissions", []))
    denied = [p for p in permissions if p not in held]
    return f"your identity in project {provisioner.project}", denied, f"{len(permissions)} permissions"

"""The AWS provisioner through boto3 against moto in server mode (in this process, on 127.0.0.1)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional
from urllib.parse import unquote

import boto3
import pytest

from nascloud.errors import CloudError, UsageError
from nascloud.job import parse_job
from nascloud.provisioners import Instance, State, get_provisioner
from nascloud.provisioners.aws import DLAMI_PARAMETER, launch_request
from tests.fixtures.moto_ec2 import preempt_ec2, publish_ssm_parameter

JOB = "digits-t4-1a2b3c"
CIDR = "203.0.113.7/32"


@dataclass(frozen=True)
class Offer:
    cloud: str = "aws"
    region: Optional[str] = "us-east-1"
    zone: Optional[str] = None
    instance_type: str = "g4dn.xlarge"
    gpu: Optional[str] = "T4"
    spot: bool = True


def job(**compute) -> object:
    return parse_job({"name": "digits-t4", "checkpoint": {"bucket": "s3://nascloud-test/jobs"},
                      "compute": {"cloud": "aws", "region": "us-east-1", "image": "ami-03cf127a",
                                  "ssh_cidr": CIDR, **compute}})


def no_lookup() -> str:
    raise AssertionError("the caller's address must come from the job file in tests")


@pytest.fixture
def aws(moto_reset, tmp_path):
    return get_provisioner("aws", home=tmp_path / "home", cidr_lookup=no_lookup, poll_seconds=0.01)


def test_launch_twice_makes_one_locked_down_instance_and_release_removes_the_rest(aws, tmp_path):
    first = aws.launch(JOB, Offer(zone="us-east-1a"), job())
    assert aws.launch(JOB, Offer(zone="us-east-1a"), job()) == first
    assert aws.list_owned(JOB) == [first]
    assert (first.spot, first.zone, first.extra["python"]) == (True, "us-east-1a", "/opt/nascloud/venv/bin/python")
    # Where its lease is, so `gc` on a machine that does not know the job can still judge it.
    assert first.extra["job_url"] == f"s3://nascloud-test/jobs/{JOB}"

    ec2, iam = boto3.client("ec2"), boto3.client("iam")
    described = ec2.describe_instances(InstanceIds=[first.instance_id])["Reservations"][0]["Instances"][0]
    assert described["MetadataOptions"]["HttpTokens"] == "required"  # IMDSv2 only
    assert {t["Key"]: t["Value"] for t in described["Tags"]}["nascloud:job"] == JOB
    assert described["KeyName"] == f"nascloud-{JOB}"
    assert described["IamInstanceProfile"]["Arn"].endswith(f"instance-profile/nascloud-{JOB}")

    groups = [g["GroupId"] for g in described["SecurityGroups"]]
    (group,) = ec2.describe_security_groups(GroupIds=groups)["SecurityGroups"]
    assert [(p["IpProtocol"], p["FromPort"], p["ToPort"], [r["CidrIp"] for r in p["IpRanges"]])
            for p in group["IpPermissions"]] == [("tcp", 22, 22, [CIDR])]

    policy = iam.get_role_policy(RoleName=f"nascloud-{JOB}", PolicyName="job-prefix")["PolicyDocument"]
    policy = json.loads(unquote(policy)) if isinstance(policy, str) else policy
    resources = [s["Resource"] for s in policy["Statement"]]
    assert resources == [f"arn:aws:s3:::nascloud-test/jobs/{JOB}/*", "arn:aws:s3:::nascloud-test"]
    assert policy["Statement"][1]["Condition"] == {"StringLike": {"s3:prefix": [f"jobs/{JOB}/*"]}}

    user_data = ec2.describe_instance_attribute(InstanceId=first.instance_id, Attribute="userData")
    script = base64.b64decode(user_data["UserData"]["Value"]).decode()
    assert script.startswith("#!/bin/bash\nNASCLOUD_CLOUD=aws\n")
    assert f"NASCLOUD_JOB_URL=s3://nascloud-test/jobs/{JOB}" in script

    target = aws.ssh_target(first)
    assert (target.port, target.user) == (22, "ubuntu")
    assert Path(target.key_path).stat().st_mode & 0o777 == 0o600
    assert target.host_key.startswith("ssh-ed25519 ") and target.host_key in Path(target.key_path).parent.joinpath(
        "host_ed25519.pub").read_text()

    aws.terminate([first])
    aws.terminate([first])  # twice: no error
    assert aws.status([first]) == {first.instance_id: State.TERMINATED}
    aws.release(JOB)
    aws.release(JOB)
    by_name = [{"Name": "group-name", "Values": [f"nascloud-{JOB}"]}]
    assert not ec2.describe_security_groups(Filters=by_name)["SecurityGroups"]
    assert not ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [f"nascloud-{JOB}"]}])["KeyPairs"]
    assert not [r for r in iam.list_roles()["Roles"] if r["RoleName"] == f"nascloud-{JOB}"]
    assert not Path(target.key_path).exists()


def test_a_spot_reclaim_reads_preempted_and_our_own_terminate_does_not(aws):
    reclaimed = aws.launch(JOB, Offer(), job())
    preempt_ec2(reclaimed.instance_id)
    assert aws.status([reclaimed]) == {reclaimed.instance_id: State.PREEMPTED}
    assert aws.list_owned(JOB) == []
    replacement = aws.launch(JOB, Offer(spot=False), job())  # recovery: the same call
    assert replacement.instance_id != reclaimed.instance_id and not replacement.spot
    aws.terminate([replacement])
    unknown = replace(replacement, instance_id="i-0123456789abcdef0")
    assert aws.status([reclaimed, replacement, unknown]) == {
        reclaimed.instance_id: State.PREEMPTED, replacement.instance_id: State.TERMINATED,
        unknown.instance_id: State.TERMINATED}


def test_status_of_200_instances_is_one_describe_call_per_region(aws, describe_calls):
    boto3.client("ec2").run_instances(
        ImageId="ami-03cf127a", InstanceType="g4dn.xlarge", MinCount=200, MaxCount=200,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "nascloud:job", "Value": JOB}]}])
    west = boto3.client("ec2", region_name="us-west-2").run_instances(
        ImageId="ami-03cf127a", InstanceType="g4dn.xlarge", MinCount=1, MaxCount=1)["Instances"][0]
    instances = aws.list_owned(JOB)
    instances.append(Instance(west["InstanceId"], JOB, "aws", "us-west-2", None, "g4dn.xlarge", False, 0.0))
    describe_calls.clear()
    states = aws.status(instances)
    assert len(states) == 201 and set(states.values()) == {State.RUNNING}
    assert sorted(describe_calls) == ["us-east-1", "us-west-2"]


def test_the_ami_comes_from_the_deep_learning_ami_parameter(aws):
    with pytest.raises(CloudError, match="give an AMI id as compute.image"):
        aws.launch(JOB, Offer(), job(image=None))
    publish_ssm_parameter(DLAMI_PARAMETER, "ami-0dlami0000000001")
    instance = aws.launch(JOB, Offer(), job(image=None))
    described = boto3.client("ec2").describe_instances(InstanceIds=[instance.instance_id])
    assert described["Reservations"][0]["Instances"][0]["ImageId"] == "ami-0dlami0000000001"


@pytest.mark.parametrize("offer, spec, message", [
    (Offer(instance_type="g9zz.xlarge"), job(), "unknown AWS instance type 'g9zz.xlarge'"),
    (Offer(region="us-east-9"), job(), "unknown AWS region 'us-east-9'"),
    (Offer(zone="us-east-1z"), job(), "unknown availability zone 'us-east-1z'"),
    (Offer(), job(ssh_cidr="0.0.0.0/0"), "would open SSH to the whole internet"),
    (Offer(), job().with_overrides(checkpoint={"bucket": "file://./bucket"}), "cannot be reached from a aws instance"),
])
def test_bad_input_is_a_usage_error(aws, offer, spec, message):
    with pytest.raises(UsageError, match=message) as raised:
        aws.launch(JOB, offer, spec)
    assert raised.value.exit_code == 2
    assert aws.list_owned() == []


def test_no_capacity_says_what_to_try(aws, ec2_run_error):
    ec2_run_error("InsufficientInstanceCapacity", "We currently do not have sufficient g4dn.xlarge capacity")
    with pytest.raises(CloudError, match=r"no g4dn.xlarge spot capacity in us-east-1a right now "
                                         r"\(InsufficientInstanceCapacity\); try another zone") as raised:
        aws.launch(JOB, Offer(zone="us-east-1a"), job())
    assert raised.value.exit_code == 1


def test_no_credentials_is_a_cloud_error(aws, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    fresh = get_provisioner("aws", home=tmp_path / "home", cidr_lookup=no_lookup)
    with pytest.raises(CloudError, match="no AWS credentials found; run `aws configure`"):
        fresh.list_owned(JOB)


def test_preflight_reports_a_zero_gpu_quota_and_a_missing_bucket(aws, ec2_quotas):
    with pytest.raises(UsageError, match="bucket s3://nascloud-test does not exist"):
        aws.preflight(Offer(), job())
    boto3.client("s3").create_bucket(Bucket="nascloud-test")
    ec2_quotas["L-3819A6DF"] = 0.0
    with pytest.raises(CloudError, match=r"spot quota for g4dn.xlarge in us-east-1 is 0 vCPUs and it needs 4 "
                                         r"\(new accounts start at 0\); request an increase of quota L-3819A6DF"):
        aws.preflight(Offer(), job())
    ec2_quotas["L-3819A6DF"] = 8.0
    aws.preflight(Offer(), job())
    ec2_quotas["L-DB2E81BA"] = 4.0
    aws.preflight(Offer(spot=False), job())


def test_dry_run_request_needs_no_credentials_and_shows_placeholders(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    request = launch_request(JOB, Offer(zone="us-east-1b"), job(image=None, ssh_cidr=None))
    run = request["RunInstances"]
    assert run["ImageId"] == f"<resolved at launch from SSM {DLAMI_PARAMETER}>"
    assert run["InstanceMarketOptions"]["MarketType"] == "spot"
    assert run["MetadataOptions"]["HttpTokens"] == "required"
    assert run["Placement"] == {"AvailabilityZone": "us-east-1b"}
    assert "NASCLOUD_HOST_KEY_B64='<generated at launch>'" in run["UserData"]
    assert request["AuthorizeSecurityGroupIngress"]["IpPermissions"][0]["IpRanges"] == [
        {"CidrIp": "<your public address>/32"}]
    json.dumps(request)  # printable as JSON



def test_a_drill_interrupts_the_spot_instance_through_fis_and_release_removes_the_fis_role(aws):
    instance = aws.launch(JOB, Offer(), job())
    aws.preempt(instance)
    fis, iam = boto3.client("fis"), boto3.client("iam")
    (summary,) = fis.list_experiments()["experiments"]
    experiment = fis.get_experiment(id=summary["id"])["experiment"]
    assert experiment["actions"]["interrupt"]["actionId"] == "aws:ec2:send-spot-instance-interruptions"
    assert experiment["actions"]["interrupt"]["parameters"] == {"durationBeforeInterruption": "PT2M"}
    assert experiment["roleArn"].endswith(f":role/nascloud-fis-{JOB}")
    assert fis.list_experiment_templates()["experimentTemplates"] == []  # deleted once started
    trust = iam.get_role(RoleName=f"nascloud-fis-{JOB}")["Role"]["AssumeRolePolicyDocument"]
    trust = json.loads(unquote(trust)) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "fis.amazonaws.com"}
    # Play FIS's part: interrupt what the experiment resolved to (moto records experiments, runs no action).
    targets = fis.list_experiment_resolved_targets(experimentId=summary["id"])["resolvedTargets"]
    assert [t["resourceType"] for t in targets] == ["aws:ec2:spot-instance"]
    for target in targets:
        preempt_ec2(target["targetInformation"]["arn"].rsplit("/", 1)[-1])
    assert aws.status([instance]) == {instance.instance_id: State.PREEMPTED}
    aws.preempt(instance)  # a second drill reuses the role
    aws.release(JOB)
    assert not [r for r in iam.list_roles()["Roles"] if r["RoleName"].startswith("nascloud-")]


def test_a_drill_refuses_an_on_demand_instance(aws):
    instance = aws.launch(JOB, Offer(spot=False), job(spot=False))
    with pytest.raises(UsageError, match=f"{instance.instance_id} is on-demand: only spot instances can be "
                                         r"interrupted; drill a job that runs on spot \(compute.spot: true\)"):
        aws.preempt(instance)
    assert aws.status([instance]) == {instance.instance_id: State.RUNNING}

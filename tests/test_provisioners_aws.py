"""The AWS provisioner through boto3 against moto in server mode (in this process, on 127.0.0.1): a job
group is an Auto Scaling group over a launch template, and the group, not nascloud, replaces a lost
instance."""

from __future__ import annotations

import base64
import json
from urllib.parse import unquote

import boto3
import pytest

from nascloud.errors import CloudError, UsageError
from nascloud.job import parse_job
from nascloud.provisioners import GroupSpec, State, get_provisioner
from nascloud.provisioners.aws import DLAMI_PARAMETER, launch_request
from nascloud.provisioners.common import dry_run_group
from tests.fixtures.moto_ec2 import (asg_partial_updates, assert_nothing_left_aws, preempt_ec2,  # noqa: F401
                                     publish_ssm_parameter)

JOB = "digits-t4-1a2b3c"
NAME = f"nascloud-{JOB}-search"
CIDR = "203.0.113.7/32"
ZONES = [{"zone": "us-east-1b", "zone_id": "use1-az1", "price_per_hour": 0.21, "on_demand_price_per_hour": 0.53},
         {"zone": "us-east-1c", "zone_id": "use1-az2", "price_per_hour": 0.22, "on_demand_price_per_hour": 0.53}]


def job(**compute) -> object:
    return parse_job({"name": "digits-t4", "checkpoint": {"bucket": "s3://nascloud-test/jobs"},
                      "compute": {"cloud": "aws", "region": "us-east-1", "image": "ami-03cf127a", **compute}})


def group(spec=None, **offer) -> GroupSpec:
    """The search group as the bundle describes it: the offer over two zones, by zone ID."""
    offer = {"cloud": "aws", "region": "us-east-1", "instance_type": "g4dn.xlarge", "gpu": "T4", "spot": True,
             "zones": ZONES, **offer}
    return dry_run_group("aws", JOB, offer, spec or job())


def policy_of(document) -> dict:
    return json.loads(unquote(document)) if isinstance(document, str) else document


@pytest.fixture
def aws(moto_reset, tmp_path):
    return get_provisioner("aws", region="us-east-1", home=tmp_path / "home", poll_seconds=0.01)


def test_create_twice_makes_one_group_whose_instance_the_engine_replaces(aws):
    aws.create_groups([group()])
    aws.create_groups([group()])  # idempotent by name
    ec2, auto_scaling = boto3.client("ec2"), boto3.client("autoscaling")
    (described,) = auto_scaling.describe_auto_scaling_groups()["AutoScalingGroups"]
    assert described["AutoScalingGroupName"] == NAME and described["DesiredCapacity"] == 1
    policy = described["MixedInstancesPolicy"]
    assert policy["InstancesDistribution"]["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert policy["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 0
    assert described["CapacityRebalance"] is False  # a group of one: no launch-before-terminate (issue 20)
    subnets = ec2.describe_subnets(SubnetIds=described["VPCZoneIdentifier"].split(","))["Subnets"]
    assert sorted(s["AvailabilityZoneId"] for s in subnets) == ["use1-az1", "use1-az2"]  # the offer's zones
    assert all(t["PropagateAtLaunch"] for t in described["Tags"])

    (found,) = aws.groups(JOB)
    (first,) = found.live
    assert (found.name, found.size, first.group, first.job_id) == ("search", 1, "search", JOB)
    assert (first.spot, first.instance_type, first.state) == (True, "g4dn.xlarge", State.RUNNING)
    assert first.zone in ("use1-az1", "use1-az2")  # the zone ID, what the price table is keyed by
    assert first.launched_at > 0 and first.ended_at is None

    # Behind the group's back, as a reclaim would: the group launches a replacement with a new id.
    ec2.terminate_instances(InstanceIds=[first.instance_id])
    (found,) = aws.groups(JOB)
    (second,) = found.live
    assert second.instance_id != first.instance_id
    (ended,) = [i for i in found.instances if i.instance_id == first.instance_id]
    assert ended.state == State.TERMINATED and ended.ended_at >= first.launched_at - 1

    preempt_ec2(second.instance_id)  # a spot reclaim reads PREEMPTED, and is replaced too
    (found,) = aws.groups(JOB)
    assert [i.state for i in found.instances if i.instance_id == second.instance_id] == [State.PREEMPTED]
    assert len(found.live) == 1 and found.live[0].instance_id not in (first.instance_id, second.instance_id)

    aws.resize(JOB, "search", 0, reason="finished")
    (found,) = aws.groups(JOB)
    assert (found.size, found.live, found.reason) == (0, [], "finished")
    aws.delete(JOB)
    aws.delete(JOB)  # quiet about what is already gone
    aws.resize(JOB, "search", 0, reason="finished")  # a missing group is success
    assert aws.groups(JOB) == []
    assert len(assert_nothing_left_aws(JOB)) == 3


def test_the_template_read_back_carries_imdsv2_terminate_the_scoped_identity_and_no_inbound_rule(aws):
    aws.create_groups([group()])
    ec2, iam = boto3.client("ec2"), boto3.client("iam")
    (version,) = ec2.describe_launch_template_versions(LaunchTemplateName=NAME)["LaunchTemplateVersions"]
    data = version["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    assert data["IamInstanceProfile"] == {"Name": f"nascloud-{JOB}"}
    assert "InstanceMarketOptions" not in data  # spot comes from the group's instances distribution
    assert "SecurityGroupIds" not in data and "KeyName" not in data  # no ssh_cidr: no inbound port at all
    assert not [g for g in ec2.describe_security_groups()["SecurityGroups"] if JOB in g["GroupName"]]
    script = base64.b64decode(data["UserData"]).decode()
    assert script.startswith("#!/bin/bash\nNASCLOUD_CLOUD=aws\n")
    assert f"NASCLOUD_JOB_URL=s3://nascloud-test/jobs/{JOB}" in script and "NASCLOUD_GROUP=search" in script
    assert "PRIVATE KEY" not in script
    tags = {t["Key"]: t["Value"] for t in data["TagSpecifications"][0]["Tags"]}
    assert tags["nascloud-job-url"] == f"s3://nascloud-test/jobs/{JOB}" and tags["nascloud-group"] == "search"

    policy = policy_of(iam.get_role_policy(RoleName=f"nascloud-{JOB}", PolicyName="job")["PolicyDocument"])
    statements = {s["Sid"]: s for s in policy["Statement"]}
    assert statements["JobObjects"]["Resource"] == f"arn:aws:s3:::nascloud-test/jobs/{JOB}/*"
    assert statements["JobListing"]["Condition"] == {"StringLike": {"s3:prefix": [f"jobs/{JOB}/*"]}}
    # The data set beside the jobs, read only: the instance fetches its parts (they are shared by content).
    assert statements["DataSets"] == {"Sid": "DataSets", "Effect": "Allow", "Action": "s3:GetObject",
                                      "Resource": "arn:aws:s3:::nascloud-test/jobs/data/*"}
    own = statements["OwnGroups"]
    assert own["Resource"] == [f"arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/{NAME}"]
    assert own["Condition"]["StringEquals"] == {"autoscaling:ResourceTag/nascloud-job": JOB}
    assert set(own["Action"]) >= {"autoscaling:SetDesiredCapacity", "autoscaling:UpdateAutoScalingGroup"}
    assert all(s["Resource"] == "*" for s in policy["Statement"] if s["Sid"] == "Describe")
    assert {a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
            if a.startswith(("autoscaling:", "ec2:"))} == {
        "autoscaling:SetDesiredCapacity", "autoscaling:UpdateAutoScalingGroup", "autoscaling:CreateOrUpdateTags",
        "autoscaling:DescribeAutoScalingGroups", "ec2:DescribeInstances", "ec2:DescribeAvailabilityZones"}


def test_use_on_demand_makes_the_groups_replacements_on_demand_priced_at_the_on_demand_column(
        aws, asg_partial_updates):
    """What the instance does at boot after compute.on_demand_after_preemptions reclaims, with its own
    identity's one permission for it (UpdateAutoScalingGroup on its own groups)."""
    from nascloud.bundle import OfferRecord

    aws.create_groups([group()])
    (found,) = aws.groups(JOB)
    (first,) = found.live
    aws.use_on_demand(JOB, "search")
    aws.use_on_demand(JOB, "search")  # idempotent: a second boot may find the same count
    (described,) = boto3.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]
    policy = described["MixedInstancesPolicy"]
    assert policy["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 100
    assert policy["LaunchTemplate"]["LaunchTemplateSpecification"]["LaunchTemplateName"] == NAME  # kept
    assert [i.instance_id for i in aws.groups(JOB)[0].live] == [first.instance_id]  # the running one stays

    preempt_ec2(first.instance_id)
    (second,) = aws.groups(JOB)[0].live
    assert second.instance_id != first.instance_id and second.spot is False
    offer = OfferRecord.model_validate({**group().offer, "price_per_hour": 0.21, "on_demand_price_per_hour": 0.53})
    assert offer.price_for(second.zone, second.spot) == 0.53  # what its ledger entry is booked at

    policy = policy_of(boto3.client("iam").get_role_policy(RoleName=f"nascloud-{JOB}", PolicyName="job")[
        "PolicyDocument"])
    (own,) = [s for s in policy["Statement"] if "autoscaling:UpdateAutoScalingGroup" in s["Action"]]
    assert own["Resource"] == [f"arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/{NAME}"]


def test_ssh_cidr_opens_22_from_it_only_and_delete_removes_the_rule(aws):
    aws.create_groups([group(job(ssh_cidr=CIDR))])
    ec2 = boto3.client("ec2")
    (version,) = ec2.describe_launch_template_versions(LaunchTemplateName=NAME)["LaunchTemplateVersions"]
    (group_id,) = version["LaunchTemplateData"]["SecurityGroupIds"]
    (security,) = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    assert [(p["FromPort"], [r["CidrIp"] for r in p["IpRanges"]]) for p in security["IpPermissions"]] == [(22, [CIDR])]
    assert "KeyName" not in version["LaunchTemplateData"]  # the instance admits the bundle's public key itself
    aws.delete(JOB)
    assert_nothing_left_aws(JOB)


def test_groups_is_one_call_each_per_region(aws, describe_calls):
    aws.create_groups([group()])
    aws.groups(JOB)  # the zone IDs are read once per provisioner
    describe_calls.clear()
    (found,) = aws.groups(JOB)
    assert sorted(describe_calls) == ["describe_auto_scaling_groups@us-east-1", "describe_instances@us-east-1"]
    assert len(found.live) == 1


def test_a_group_aws_refuses_fails_at_launch_in_one_line_with_nothing_left(aws, asg_refused):
    asg_refused("AccessDenied", "User is not authorized to perform: autoscaling:CreateAutoScalingGroup")
    with pytest.raises(CloudError, match=r"^AWS refused creating the Auto Scaling group nascloud-digits-t4-1a2b3c-"
                                         r"search \(AccessDenied\); check your credentials and the permissions") as raised:
        aws.create_groups([group()])
    assert raised.value.exit_code == 1 and "\n" not in str(raised.value)
    assert_nothing_left_aws(JOB)  # the role and the launch template made before it are gone again


def test_list_owned_finds_every_job_group_with_its_bucket_url_for_gc(aws):
    aws.create_groups([group()])
    fresh = get_provisioner("aws", region="us-east-1")  # gc on a machine that never saw the job
    (owned,) = fresh.list_owned()
    assert (owned.job_id, owned.name, owned.size) == (JOB, "search", 1)
    assert fresh.job_url(owned) == f"s3://nascloud-test/jobs/{JOB}"


def test_the_ami_comes_from_the_deep_learning_ami_parameter_and_a_failed_create_leaves_nothing(aws):
    with pytest.raises(CloudError, match="give an AMI id as compute.image"):
        aws.create_groups([group(job(image=None))])
    assert_nothing_left_aws(JOB)  # the role made before the failure is gone again
    publish_ssm_parameter(DLAMI_PARAMETER, "ami-0dlami0000000001")
    aws.create_groups([group(job(image=None))])
    (version,) = boto3.client("ec2").describe_launch_template_versions(
        LaunchTemplateName=NAME)["LaunchTemplateVersions"]
    assert version["LaunchTemplateData"]["ImageId"] == "ami-0dlami0000000001"


@pytest.mark.parametrize("offer, spec, message", [
    ({"instance_type": "g9zz.xlarge"}, job(), "unknown AWS instance type 'g9zz.xlarge'"),
    ({"region": "us-east-9"}, job(), "unknown AWS region 'us-east-9'"),
    ({"zone": "us-east-1z", "zones": []}, job(), "unknown availability zone 'us-east-1z'"),
])
def test_bad_input_is_a_usage_error_with_nothing_made(aws, offer, spec, message):
    with pytest.raises(UsageError, match=message) as raised:
        aws.create_groups([group(spec, **offer)])
    assert raised.value.exit_code == 2
    assert aws.list_owned() == []
    assert_nothing_left_aws(JOB)


def test_a_bucket_on_another_cloud_is_a_usage_error():
    with pytest.raises(UsageError, match="cannot be reached from a aws instance"):
        group(job().with_overrides(checkpoint={"bucket": "file://./bucket"}))


def test_no_credentials_is_a_cloud_error(moto_reset, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    fresh = get_provisioner("aws", region="us-east-1")
    with pytest.raises(CloudError, match="no AWS credentials found; run `aws configure`"):
        fresh.groups(JOB)


def test_preflight_reports_a_zero_gpu_quota_and_a_missing_bucket(aws, ec2_quotas):
    with pytest.raises(UsageError, match="bucket s3://nascloud-test does not exist"):
        aws.preflight([group()])
    boto3.client("s3").create_bucket(Bucket="nascloud-test")
    ec2_quotas["L-3819A6DF"] = 0.0
    with pytest.raises(CloudError, match=r"spot quota for g4dn.xlarge in us-east-1 is 0 vCPUs and it needs 4 "
                                         r"\(new accounts start at 0\); request an increase of quota L-3819A6DF"):
        aws.preflight([group()])
    ec2_quotas["L-3819A6DF"] = 8.0
    aws.preflight([group()])
    ec2_quotas["L-DB2E81BA"] = 4.0
    aws.preflight([group(job(spot=False), spot=False)])
    assert aws.list_owned() == []  # preflight creates nothing


def test_dry_run_shows_the_template_and_the_group_without_credentials(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    request = launch_request(JOB, {"cloud": "aws", "region": "us-east-1", "instance_type": "g4dn.xlarge",
                                   "spot": True, "zones": ZONES}, job(image=None))
    template = request["CreateLaunchTemplate"]["LaunchTemplateData"]
    assert template["ImageId"] == f"<resolved at launch from SSM {DLAMI_PARAMETER}>"
    assert template["MetadataOptions"]["HttpTokens"] == "required"
    assert "NASCLOUD_JOB_ID=digits-t4-1a2b3c" in base64.b64decode(template["UserData"]).decode()
    auto_scaling = request["CreateAutoScalingGroup"]
    assert auto_scaling["VPCZoneIdentifier"] == "<default subnet of zone use1-az1>,<default subnet of zone use1-az2>"
    assert auto_scaling["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"] == [{"InstanceType": "g4dn.xlarge"}]
    assert "CreateSecurityGroup" not in request  # no ssh_cidr: no firewall at all
    json.dumps(request)  # printable as JSON


def test_a_drill_interrupts_the_spot_instance_through_fis_and_delete_removes_the_fis_role(aws):
    aws.create_groups([group()])
    (instance,) = aws.groups(JOB)[0].live
    aws.preempt(instance)
    fis, iam = boto3.client("fis"), boto3.client("iam")
    (summary,) = fis.list_experiments()["experiments"]
    experiment = fis.get_experiment(id=summary["id"])["experiment"]
    assert experiment["actions"]["interrupt"]["actionId"] == "aws:ec2:send-spot-instance-interruptions"
    assert experiment["roleArn"].endswith(f":role/nascloud-fis-{JOB}")
    assert fis.list_experiment_templates()["experimentTemplates"] == []  # deleted once started
    # Play FIS's part: interrupt what the experiment resolved to (moto records experiments, runs no action).
    for target in fis.list_experiment_resolved_targets(experimentId=summary["id"])["resolvedTargets"]:
        preempt_ec2(target["targetInformation"]["arn"].rsplit("/", 1)[-1])
    (found,) = aws.groups(JOB)
    assert [i.state for i in found.instances if i.instance_id == instance.instance_id] == [State.PREEMPTED]
    assert len(found.live) == 1  # the group's replacement
    aws.delete(JOB)
    assert not [r for r in iam.list_roles()["Roles"] if r["RoleName"].startswith("nascloud-")]
    assert_nothing_left_aws(JOB)


def test_a_drill_refuses_an_on_demand_instance(aws):
    aws.create_groups([group(job(spot=False), spot=False)])
    (instance,) = aws.groups(JOB)[0].live
    assert not instance.spot
    with pytest.raises(UsageError, match=f"{instance.instance_id} is on-demand: only spot instances can be "
                                         r"interrupted; drill a job that runs on spot \(compute.spot: true\)"):
        aws.preempt(instance)


def test_whoami_reads_imdsv2_and_power_off_runs_the_command(aws, monkeypatch, tmp_path):
    from tests.fixtures.hypervisor import MetadataServer

    aws.create_groups([group()])
    (instance,) = aws.groups(JOB)[0].live
    with MetadataServer.aws(instance.instance_id, "g4dn.xlarge", "us-east-1b", instance.zone, spot=True) as server:
        monkeypatch.setenv("NASCLOUD_AWS_METADATA_URL", server.url)
        me = aws.whoami(JOB, "search")
    assert (me.instance_id, me.zone, me.spot, me.instance_type) == (instance.instance_id, instance.zone, True,
                                                                     "g4dn.xlarge")
    assert me.launched_at == instance.launched_at
    monkeypatch.setenv("NASCLOUD_POWEROFF_COMMAND", f"touch {tmp_path / 'off'}")
    aws.power_off()
    assert (tmp_path / "off").exists()

"""Issue 20, part 4: fallbacks and rebalancing that do what the estimate assumes. A managed group repairs a
preempted VM from the template it was made from (as GCP documents), so the on-demand switch must be made to
reach the next repair; a spot group of one must not launch its replacement before the old instance ends;
and a job that may fall back to on-demand is preflighted, and shown in the dry run, against both quotas."""

from __future__ import annotations

import dataclasses
import json

import boto3
import pytest

from nascloud.errors import CloudError
from nascloud.provisioners.aws import launch_request as aws_launch_request, requests as aws_requests
from nascloud.provisioners.gcp import launch_request as gcp_launch_request
from tests.fixtures.gce import assert_nothing_left_gce
from tests.test_provisioners_aws import JOB as AWS_JOB, NAME as AWS_NAME, ZONES as AWS_ZONES, group as aws_group
from tests.test_provisioners_aws import job as aws_job
from tests.test_provisioners_gcp import JOB as GCP_JOB, NAME as GCP_NAME, _post, group as gcp_group
from tests.test_provisioners_gcp import job as gcp_job, running, until, vm

pytestmark = pytest.mark.strict_cloud

ON_DEMAND_AFTER = {"on_demand_after_preemptions": 2}


# --- GCP: a repair keeps the VM's own template unless forceUpdateOnRepair -----------------------------------
@pytest.fixture
def gcp(gce, tmp_path):
    from nascloud.provisioners import get_provisioner
    from tests.test_provisioners_gcp import ACCOUNT

    return get_provisioner("gcp", region="us-central1", project=gce.project, home=tmp_path / "home",
                           service_account=ACCOUNT, poll_seconds=0.05)


def _scheduling(gce, name: str) -> str:
    with gce.lock:
        return gce.instances[next(k for k in gce.instances if k[1] == name)]["scheduling"]["provisioningModel"]


def test_the_fake_repairs_a_preempted_vm_from_its_own_template_and_adds_new_ones_from_the_groups(gcp, gce):
    """GCE's rule, checked on the fake directly: a group made without forceUpdateOnRepair, pointed at another
    template, recreates a preempted VM as it was; only a VM it adds comes from the new template."""
    gcp.create_groups([gcp_group()])  # the Spot and STANDARD templates (and nascloud's own group)
    plain = "plain-group"
    assert _post(gce, "regions/us-central1/instanceGroupManagers", {
        "name": plain, "baseInstanceName": plain, "instanceTemplate": f"global/instanceTemplates/{GCP_NAME}",
        "targetSize": 1})[0] == 200
    first = until(lambda: gce.tick() or [n for _, n in gce.instances if n.startswith(plain)], "the plain group's VM")[0]
    assert _post(gce, f"regions/us-central1/instanceGroupManagers/{plain}/setInstanceTemplate",
                 {"instanceTemplate": f"global/instanceTemplates/{GCP_NAME}-standard"})[0] == 200
    until(lambda: gce.tick() or gce.groups["us-central1", plain]["instanceTemplate"].endswith("-standard"),
          "the switch")
    gce.preempt(first)
    repaired = until(lambda: gce.tick() or [n for _, n in gce.instances if n.startswith(plain) and n != first],
                     "the repair")[0]
    assert _scheduling(gce, repaired) == "SPOT"  # its own template, not the group's current one
    assert _post(gce, f"regions/us-central1/instanceGroupManagers/{plain}/resize?size=2", {})[0] == 200
    added = until(lambda: gce.tick() or [n for _, n in gce.instances if n.startswith(plain) and n not in
                                         (first, repaired)], "the added VM")[0]
    assert _scheduling(gce, added) == "STANDARD"


def test_after_the_on_demand_switch_the_vm_the_group_recreates_after_a_preemption_is_standard(gcp, gce):
    gcp.create_groups([gcp_group()])
    with gce.lock:
        assert gce.groups["us-central1", GCP_NAME]["instanceLifecyclePolicy"] == {
            "forceUpdateOnRepair": "YES", "defaultActionOnFailure": "REPAIR"}
    (first,) = running(gcp)
    gcp.use_on_demand(GCP_JOB, "search")
    assert [i.instance_id for i in running(gcp)] == [first.instance_id]  # no rolling update: the VM trains on
    gce.preempt(vm(gce, first)["name"])
    (second,) = until(lambda: [i for i in running(gcp) if i.instance_id != first.instance_id], "the repair")
    assert second.spot is False and vm(gce, second)["scheduling"]["provisioningModel"] == "STANDARD"
    gcp.delete(GCP_JOB)
    assert_nothing_left_gce(gce, GCP_JOB)


def test_gcp_preflight_checks_the_on_demand_gpu_quota_when_the_job_may_fall_back(gcp, gce):
    gce.quotas["us-central1"]["NVIDIA_T4_GPUS"] = 0.0
    gcp.preflight([gcp_group()])  # a Spot job that never falls back needs no on-demand GPU
    with pytest.raises(CloudError) as raised:
        gcp.preflight([gcp_group(gcp_job(**ON_DEMAND_AFTER))])
    assert str(raised.value) == ("your GCP quota NVIDIA_T4_GPUS in us-central1 is 0 with 0 in use (new projects start "
                                 "at 0); request more under IAM & Admin > Quotas, or try another region or unset "
                                 "compute.on_demand_after_preemptions")
    gce.quotas["us-central1"]["NVIDIA_T4_GPUS"] = 1.0
    gcp.preflight([gcp_group(gcp_job(**ON_DEMAND_AFTER))])
    assert gce.templates == {} and gce.groups == {}  # preflight creates nothing


def test_the_gcp_dry_run_shows_both_quotas_preflight_checks(monkeypatch):
    monkeypatch.delenv("NASCLOUD_GCE_ENDPOINT", raising=False)
    offer = {"cloud": "gcp", "region": "us-central1", "instance_type": "n1-standard-4", "gpu": "T4", "spot": True}
    assert gcp_launch_request(GCP_JOB, offer, gcp_job())["quotas (preflight)"] == [
        "GPUS_ALL_REGIONS in the project", "PREEMPTIBLE_NVIDIA_T4_GPUS in us-central1"]
    request = gcp_launch_request(GCP_JOB, offer, gcp_job(**ON_DEMAND_AFTER))
    assert request["quotas (preflight)"] == [
        "GPUS_ALL_REGIONS in the project", "PREEMPTIBLE_NVIDIA_T4_GPUS in us-central1", "NVIDIA_T4_GPUS in us-central1"]
    assert request["regionInstanceGroupManagers.insert"]["instanceLifecyclePolicy"]["forceUpdateOnRepair"] == "YES"


# --- AWS: no launch-before-terminate for a group of one; both quotas --------------------------------------
@pytest.fixture
def aws(moto_reset, tmp_path):
    from nascloud.provisioners import get_provisioner

    return get_provisioner("aws", region="us-east-1", home=tmp_path / "home", poll_seconds=0.01)


def test_capacity_rebalancing_is_off_for_a_spot_group_of_one_and_on_for_larger_ones(aws):
    one = aws_group()
    assert aws_requests(one, "ami-1", ["subnet-1"], None)["CreateAutoScalingGroup"]["CapacityRebalance"] is False
    workers = dataclasses.replace(one, name="workers", size=3)
    assert aws_requests(workers, "ami-1", ["subnet-1"], None)["CreateAutoScalingGroup"]["CapacityRebalance"] is True
    aws.create_groups([one])
    (described,) = boto3.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[AWS_NAME])["AutoScalingGroups"]
    assert described["CapacityRebalance"] is False and described["MaxSize"] == 1
    request = aws_launch_request(AWS_JOB, {"cloud": "aws", "region": "us-east-1", "instance_type": "g4dn.xlarge",
                                           "spot": True, "zones": AWS_ZONES}, aws_job())
    assert request["CreateAutoScalingGroup"]["CapacityRebalance"] is False  # what the dry run shows


def test_aws_preflight_checks_the_on_demand_quota_when_the_job_may_fall_back(aws, ec2_quotas):
    boto3.client("s3").create_bucket(Bucket="nascloud-test")
    ec2_quotas.update({"L-3819A6DF": 8.0, "L-DB2E81BA": 0.0})  # spot G: 8 vCPUs; on-demand G: none
    aws.preflight([aws_group()])  # a spot job that never falls back needs no on-demand vCPU
    with pytest.raises(CloudError) as raised:
        aws.preflight([aws_group(aws_job(**ON_DEMAND_AFTER))])
    assert str(raised.value) == ("your AWS on-demand quota for g4dn.xlarge in us-east-1 is 0 vCPUs and it needs 4 (new "
                                 "accounts start at 0); request an increase of quota L-DB2E81BA in the Service Quotas "
                                 "console, or unset compute.on_demand_after_preemptions")
    ec2_quotas["L-DB2E81BA"] = 4.0
    aws.preflight([aws_group(aws_job(**ON_DEMAND_AFTER))])
    assert aws.list_owned() == []  # preflight creates nothing


def test_the_aws_dry_run_shows_both_quotas_preflight_checks(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    offer = {"cloud": "aws", "region": "us-east-1", "instance_type": "g4dn.xlarge", "spot": True, "zones": AWS_ZONES}
    assert aws_launch_request(AWS_JOB, offer, aws_job())["GetServiceQuota (preflight)"] == [
        {"ServiceCode": "ec2", "QuotaCode": "L-3819A6DF", "market": "spot"}]
    request = aws_launch_request(AWS_JOB, offer, aws_job(**ON_DEMAND_AFTER))
    assert request["GetServiceQuota (preflight)"] == [
        {"ServiceCode": "ec2", "QuotaCode": "L-3819A6DF", "market": "spot"},
        {"ServiceCode": "ec2", "QuotaCode": "L-DB2E81BA", "market": "on-demand"}]
    json.dumps(request)

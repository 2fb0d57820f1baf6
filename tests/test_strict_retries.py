"""Issue 20, part 3: what a real account does that the fakes did not. The first calls of a launch or of the
governor's resize are throttled, as AWS and Compute Engine throttle them; a new instance profile is not usable
for seconds. Each is retried with a bounded backoff, and a throttling that outlasts the cap fails in one line."""

from __future__ import annotations

import boto3
import pytest

from nascloud.checkpoints.s3 import S3Objects
from nascloud.errors import CloudError
from nascloud.provisioners import get_provisioner
from tests.fixtures.moto_ec2 import assert_nothing_left_aws
from tests.test_provisioners_aws import JOB as AWS_JOB, NAME as AWS_NAME, group as aws_group
from tests.test_provisioners_gcp import ACCOUNT, JOB as GCP_JOB, NAME as GCP_NAME, group as gcp_group, running

pytestmark = pytest.mark.strict_cloud

# What AWS answers a throttled call: Auto Scaling's Throttling (https://docs.aws.amazon.com/autoscaling/ec2/
# APIReference/CommonErrors.html), EC2's RequestLimitExceeded with 503 (https://docs.aws.amazon.com/AWSEC2/
# latest/APIReference/errors-overview.html), S3's SlowDown with 503 (https://docs.aws.amazon.com/AmazonS3/
# latest/API/ErrorResponses.html).
THROTTLING = ("Throttling", "Rate exceeded", 400)
EC2_THROTTLING = ("RequestLimitExceeded", "Request limit exceeded.", 503)
PROFILE_NOT_READY = ("ValidationError", "You must use a valid fully-formed launch template. Value "
                     f"(nascloud-{AWS_JOB}) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance "
                     "Profile name", 400)


@pytest.fixture
def aws(aws_proxy, moto_reset, monkeypatch, tmp_path):
    """The provisioner with the launcher's keys, through the proxy (which injects the faults) to moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_proxy.url)
    boto3.client("s3").create_bucket(Bucket="nascloud-test")
    yield get_provisioner("aws", region="us-east-1", home=tmp_path / "home", poll_seconds=0.01)
    with aws_proxy.lock:
        aws_proxy.failures.clear()  # nothing armed outlives its test


def fail_next(proxy, action: str, count: int, fault: tuple) -> None:
    proxy.fail_next(action, count, *fault)


def left(proxy, action: str) -> int:
    """How many of the failures armed for `action` no call has met yet."""
    with proxy.lock:
        return proxy.failures[action.lower()][0]


# --- AWS ---------------------------------------------------------------------------------------------------
def test_an_aws_launch_succeeds_despite_throttling_on_each_service(aws, aws_proxy):
    fail_next(aws_proxy, "autoscaling:CreateAutoScalingGroup", 2, THROTTLING)
    fail_next(aws_proxy, "ec2:CreateLaunchTemplate", 2, EC2_THROTTLING)
    fail_next(aws_proxy, "iam:CreateRole", 1, THROTTLING)
    fail_next(aws_proxy, "autoscaling:DescribeAutoScalingGroups", 1, THROTTLING)
    aws.create_groups([aws_group()])
    (found,) = aws.groups(AWS_JOB)
    assert found.size == 1 and len(found.instances) == 1
    assert all(armed[0] == 0 for armed in aws_proxy.failures.values())  # each throttle met, then retried through


def test_an_aws_launch_waits_out_a_new_instance_profile_aws_does_not_know_yet(aws, aws_proxy):
    fail_next(aws_proxy, "autoscaling:CreateAutoScalingGroup", 2, PROFILE_NOT_READY)
    aws.create_groups([aws_group()])
    assert [g.size for g in aws.groups(AWS_JOB)] == [1]
    assert left(aws_proxy, "autoscaling:CreateAutoScalingGroup") == 0  # refused twice, made at the third


def test_an_aws_launch_throttled_past_the_cap_fails_in_one_line_and_leaves_nothing(aws, aws_proxy):
    fail_next(aws_proxy, "autoscaling:CreateAutoScalingGroup", 6, THROTTLING)
    with pytest.raises(CloudError) as raised:
        aws.create_groups([aws_group()])
    assert str(raised.value) == (f"AWS creating the Auto Scaling group {AWS_NAME} failed 5 times in a row (Throttling: "
                                 "Rate exceeded); AWS is throttling or unavailable: try again in a few minutes")
    assert left(aws_proxy, "autoscaling:CreateAutoScalingGroup") == 1  # 5 attempts, the cap, and no more
    assert_nothing_left_aws(AWS_JOB)  # create_groups' clean-up ran after the retries, not instead of them


def test_an_aws_governor_resize_and_its_bucket_writes_succeed_despite_throttling(aws, aws_proxy):
    aws.create_groups([aws_group()])
    fail_next(aws_proxy, "autoscaling:SetDesiredCapacity", 3, THROTTLING)
    fail_next(aws_proxy, "autoscaling:CreateOrUpdateTags", 1, THROTTLING)
    aws.resize(AWS_JOB, "search", 0, reason="finished")  # the governor's end of the job
    (found,) = aws.groups(AWS_JOB)
    assert (found.size, found.reason) == (0, "finished")
    assert left(aws_proxy, "autoscaling:SetDesiredCapacity") == left(aws_proxy, "autoscaling:CreateOrUpdateTags") == 0
    fail_next(aws_proxy, "s3:PutObject", 2, ("SlowDown", "Please reduce your request rate.", 503))
    store = S3Objects("nascloud-test", f"jobs/{AWS_JOB}")
    store.put("agent/heartbeat.json", b"{}")  # the heartbeat the governor writes
    assert store.get("agent/heartbeat.json")[0] == b"{}" and left(aws_proxy, "s3:PutObject") == 0


@pytest.fixture
def gcp(gce, tmp_path):
    return get_provisioner("gcp", region="us-central1", project=gce.project, home=tmp_path / "home",
                           service_account=ACCOUNT, poll_seconds=0.05)


# --- GCP ---------------------------------------------------------------------------------------------------
def test_a_gcp_launch_succeeds_despite_throttled_inserts_lookups_and_waits(gcp, gce):
    gce.fail_next("regionInstanceGroupManagers.insert", 2)  # 429, as Google's APIs answer
    gce.fail_next("instanceTemplates.insert", 1, status=403)  # Compute Engine's own: 403 rateLimitExceeded
    gce.fail_next("regions.get", 1)
    gce.fail_next(r"^POST .*/operations/[^/]+/wait$", 2)
    gcp.create_groups([gcp_group()])
    assert list(gce.groups) == [("us-central1", GCP_NAME)]
    assert gce.count("regionInstanceGroupManagers.insert") == 3  # two refused, the third made the group
    assert all(left == 0 for _, left, _, _ in gce.faults)  # every throttle was met and retried through
    running(gcp)


def test_a_gcp_governor_resize_succeeds_despite_throttling(gcp, gce):
    gcp.create_groups([gcp_group()])
    gce.fail_next("regionInstanceGroupManagers.patch", 1, status=403)
    gce.fail_next("regionInstanceGroupManagers.resize", 3)
    gcp.resize(GCP_JOB, "search", 0, reason="finished")  # the governor's end of the job
    with gce.lock:
        assert gce.groups["us-central1", GCP_NAME]["targetSize"] == 0
        assert gce.groups["us-central1", GCP_NAME]["description"] == "finished"
    assert gce.count("regionInstanceGroupManagers.resize") == 4

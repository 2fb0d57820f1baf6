"""The instance's AWS identity against servers that enforce it (issue 20, part 2): the IAM evaluator on AWS's
documented examples, the proxy's refusals in each service's own format, and each statement of
`role_policy` removed or narrowed, through real boto3 with the role's own credentials."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.aws_iam import ALLOW, EXPLICIT_DENY, IMPLICIT_DENY, evaluate
from tests.fixtures.moto_ec2 import asg_partial_updates  # noqa: F401

pytestmark = [pytest.mark.strict_cloud]


def policy(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


# --- the evaluator, on the documented examples ------------------------------------------------------------
# https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html
def test_an_explicit_deny_wins_over_an_allow_and_nothing_allowed_is_an_implicit_deny():
    allow = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    deny = {"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "arn:aws:s3:::b/*"}
    assert evaluate([policy(allow), policy(deny)], "s3:DeleteObject", "arn:aws:s3:::b/k", {}) == EXPLICIT_DENY
    assert evaluate([policy(allow, deny)], "s3:GetObject", "arn:aws:s3:::b/k", {}) == ALLOW
    assert evaluate([policy(deny)], "s3:GetObject", "arn:aws:s3:::b/k", {}) == IMPLICIT_DENY
    assert evaluate([], "s3:GetObject", "arn:aws:s3:::b/k", {}) == IMPLICIT_DENY


def test_action_wildcards_are_case_insensitive_and_not_action_excludes():
    # reference_policies_elements_action.html: "iam:*AccessKey*"; NotAction "iam:*" allows all but IAM.
    keys = policy({"Effect": "Allow", "Action": "iam:*AccessKey*", "Resource": "*"})
    assert evaluate([keys], "iam:CreateAccessKey", "*", {}) == ALLOW
    assert evaluate([keys], "IAM:listaccesskeys", "*", {}) == ALLOW
    assert evaluate([keys], "iam:CreateUser", "*", {}) == IMPLICIT_DENY
    not_iam = policy({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"})
    assert evaluate([not_iam], "s3:GetObject", "*", {}) == ALLOW
    assert evaluate([not_iam], "iam:CreateUser", "*", {}) == IMPLICIT_DENY


def test_resource_wildcards_span_slashes_and_are_case_sensitive():
    # reference_policies_elements_resource.html: "arn:aws:s3:::amzn-s3-demo-bucket/*" and a ? wildcard.
    objects = policy({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::demo/jobs/*"})
    assert evaluate([objects], "s3:GetObject", "arn:aws:s3:::demo/jobs/a/b.json", {}) == ALLOW
    assert evaluate([objects], "s3:GetObject", "arn:aws:s3:::demo/Jobs/a", {}) == IMPLICIT_DENY
    assert evaluate([objects], "s3:GetObject", "arn:aws:s3:::demo", {}) == IMPLICIT_DENY
    one = policy({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::demo/k?"})
    assert evaluate([one], "s3:GetObject", "arn:aws:s3:::demo/k1", {}) == ALLOW
    assert evaluate([one], "s3:GetObject", "arn:aws:s3:::demo/k12", {}) == IMPLICIT_DENY


# https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html
def test_string_equals_and_a_key_absent_from_the_context():
    # The page's example: only a principal tagged job-category=iamuser-admin; an untagged one has no key.
    doc = policy({"Effect": "Allow", "Action": "iam:*AccessKey*", "Resource": "arn:aws:iam::111122223333:user/*",
                  "Condition": {"StringEquals": {"aws:PrincipalTag/job-category": "iamuser-admin"}}})
    user = "arn:aws:iam::111122223333:user/ana"
    assert evaluate([doc], "iam:CreateAccessKey", user, {"aws:PrincipalTag/job-category": "iamuser-admin"}) == ALLOW
    assert evaluate([doc], "iam:CreateAccessKey", user, {"aws:PrincipalTag/job-category": "dev"}) == IMPLICIT_DENY
    assert evaluate([doc], "iam:CreateAccessKey", user, {}) == IMPLICIT_DENY


def test_string_like_on_s3_prefix():
    # The page's example: ListBucket only for the prefixes "", home/ and home/${aws:username}/ (resolved here).
    doc = policy({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::demo",
                  "Condition": {"StringLike": {"s3:prefix": ["", "home/", "home/ana/*"]}}})
    for prefix in ("", "home/", "home/ana/", "home/ana/photos/"):
        assert evaluate([doc], "s3:ListBucket", "arn:aws:s3:::demo", {"s3:prefix": prefix}) == ALLOW, prefix
    for prefix in ("home/bob/", "other/"):
        assert evaluate([doc], "s3:ListBucket", "arn:aws:s3:::demo", {"s3:prefix": prefix}) == IMPLICIT_DENY
    assert evaluate([doc], "s3:ListBucket", "arn:aws:s3:::demo", {}) == IMPLICIT_DENY  # no prefix in the request


def test_numeric_less_than_equals_on_max_keys():
    # The page's example: a ListBucket request must ask for 10 keys or fewer.
    doc = policy({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::demo",
                  "Condition": {"NumericLessThanEquals": {"s3:max-keys": "10"}}})
    assert evaluate([doc], "s3:ListBucket", "arn:aws:s3:::demo", {"s3:max-keys": "10"}) == ALLOW
    assert evaluate([doc], "s3:ListBucket", "arn:aws:s3:::demo", {"s3:max-keys": "11"}) == IMPLICIT_DENY
    assert evaluate([doc], "s3:ListBucket", "arn:aws:s3:::demo", {}) == IMPLICIT_DENY


def test_bool_on_secure_transport():
    # The page's example: deny every request to a bucket that does not come over TLS.
    doc = policy({"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                 {"Effect": "Deny", "Action": "s3:*", "Resource": ["arn:aws:s3:::demo", "arn:aws:s3:::demo/*"],
                  "Condition": {"Bool": {"aws:SecureTransport": "false"}}})
    assert evaluate([doc], "s3:GetObject", "arn:aws:s3:::demo/k", {"aws:SecureTransport": "false"}) == EXPLICIT_DENY
    assert evaluate([doc], "s3:GetObject", "arn:aws:s3:::demo/k", {"aws:SecureTransport": "true"}) == ALLOW


def test_arn_equals_matches_each_part_on_its_own():
    # The page's example: an SQS queue policy admitting messages from one SNS topic (aws:SourceArn).
    topic = "arn:aws:sns:us-east-1:123456789012:TOPIC-ID"
    doc = policy({"Effect": "Allow", "Principal": {"Service": "sns.amazonaws.com"}, "Action": "SQS:SendMessage",
                  "Resource": "arn:aws:sqs:us-east-1:123456789012:QUEUE-ID",
                  "Condition": {"ArnEquals": {"aws:SourceArn": topic}}})
    queue = "arn:aws:sqs:us-east-1:123456789012:QUEUE-ID"
    sns = {"aws:PrincipalServiceName": "sns.amazonaws.com"}
    assert evaluate([doc], "sqs:SendMessage", queue, {**sns, "aws:SourceArn": topic}) == ALLOW
    assert evaluate([doc], "sqs:SendMessage", queue, {**sns, "aws:SourceArn": topic + "-2"}) == IMPLICIT_DENY
    assert evaluate([doc], "sqs:SendMessage", queue, {"aws:SourceArn": topic}) == IMPLICIT_DENY  # not SNS
    like = policy({"Effect": "Allow", "Action": "s3:*", "Resource": "*",
                   "Condition": {"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/ops-*"}}})
    assert evaluate([like], "s3:GetObject", "*", {"aws:PrincipalArn": "arn:aws:iam::1:role/ops-a"}) == ALLOW
    # A wildcard stays within its part: the account's * does not swallow the colons after it.
    assert evaluate([like], "s3:GetObject", "*", {"aws:PrincipalArn": "arn:aws:iam::1:x:role/ops-a"}) == IMPLICIT_DENY


def test_if_exists_is_true_when_the_key_is_absent():
    # The page's example: StringLikeIfExists on ec2:InstanceType holds for requests without an instance type.
    doc = policy({"Effect": "Allow", "Action": "ec2:*", "Resource": "*",
                  "Condition": {"StringLikeIfExists": {"ec2:InstanceType": ["t1.*", "t2.*", "m3.*"]}}})
    assert evaluate([doc], "ec2:RunInstances", "*", {"ec2:InstanceType": "t2.micro"}) == ALLOW
    assert evaluate([doc], "ec2:RunInstances", "*", {"ec2:InstanceType": "p4d.24xlarge"}) == IMPLICIT_DENY
    assert evaluate([doc], "ec2:DescribeInstances", "*", {}) == ALLOW
    # Auto Scaling's example (control-access-using-iam.html): a size limit with NumericLessThanEqualsIfExists.
    sizes = policy({"Effect": "Allow", "Action": "autoscaling:UpdateAutoScalingGroup", "Resource": "*",
                    "Condition": {"NumericLessThanEqualsIfExists": {"autoscaling:MaxSize": "10"}}})
    assert evaluate([sizes], "autoscaling:UpdateAutoScalingGroup", "*", {"autoscaling:MaxSize": "11"}) == IMPLICIT_DENY
    assert evaluate([sizes], "autoscaling:UpdateAutoScalingGroup", "*", {}) == ALLOW


# https://docs.aws.amazon.com/IAM/latest/UserGuide/
#     reference_policies_condition-logic-multiple-context-keys-or-values.html
def test_several_keys_and_several_values_or():
    # The page's example: both principal tags (each one of its listed values) and one of the principal ARNs.
    doc = policy({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*", "Condition": {
        "StringEquals": {"aws:PrincipalTag/department": ["finance", "hr", "legal"],
                         "aws:PrincipalTag/role": ["audit", "security"]},
        "ArnLike": {"aws:PrincipalArn": ["arn:aws:iam::222222222222:user/Ana",
                                         "arn:aws:iam::222222222222:user/Mary"]}}})
    mary = {"aws:PrincipalTag/department": "hr", "aws:PrincipalTag/role": "audit",
            "aws:PrincipalArn": "arn:aws:iam::222222222222:user/Mary"}
    assert evaluate([doc], "s3:GetObject", "*", mary) == ALLOW
    assert evaluate([doc], "s3:GetObject", "*", {**mary, "aws:PrincipalTag/role": "dev"}) == IMPLICIT_DENY
    assert evaluate([doc], "s3:GetObject", "*", {k: v for k, v in mary.items() if "role" not in k}) == IMPLICIT_DENY
    bob = {**mary, "aws:PrincipalArn": "arn:aws:iam::222222222222:user/Bob"}
    assert evaluate([doc], "s3:GetObject", "*", bob) == IMPLICIT_DENY


# --- the proxy ---------------------------------------------------------------------------------------------
JOB = "digits-iam-1a2b3c"
BUCKET = "nascloud-iam"
PREFIX = f"jobs/{JOB}"
NAME = f"nascloud-{JOB}-search"
OFFER = {"cloud": "aws", "region": "us-east-1", "instance_type": "g4dn.xlarge", "gpu": None, "spot": True}


def job_spec():
    from nascloud.job import parse_job

    return parse_job({"name": "digits-iam", "checkpoint": {"bucket": f"s3://{BUCKET}/jobs"},
                      "compute": {"cloud": "aws", "region": "us-east-1", "image": "ami-03cf127a"}})


class Identity:
    """The job's instance identity as its instance uses it: real boto3 clients through the proxy with the
    role's own credentials, and the role's policy as moto's IAM holds it."""

    def __init__(self, proxy, role: str):
        self.proxy, self.role = proxy, role
        self.credentials = proxy.assume(role)
        self.s3, self.autoscaling, self.ec2 = (proxy.client(s, self.credentials) for s in ("s3", "autoscaling", "ec2"))

    def policy(self) -> dict:
        import boto3

        return boto3.client("iam").get_role_policy(RoleName=self.role, PolicyName="job")["PolicyDocument"]

    def set_policy(self, document: dict) -> None:
        import boto3

        boto3.client("iam").put_role_policy(RoleName=self.role, PolicyName="job", PolicyDocument=json.dumps(document))

    def env(self, monkeypatch) -> None:
        """This process's AWS clients as the instance's (nascloud's own code then runs as the instance)."""
        monkeypatch.setenv("AWS_ENDPOINT_URL", self.proxy.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", self.credentials["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", self.credentials["SecretAccessKey"])
        monkeypatch.setenv("AWS_SESSION_TOKEN", self.credentials["SessionToken"])


@pytest.fixture
def instance(moto_reset, aws_proxy):
    """A job's group made by the provisioner (its role, policy, launch template, group), and its identity."""
    import boto3

    from nascloud.provisioners import get_provisioner
    from nascloud.provisioners.common import dry_run_group

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    for key in (f"{PREFIX}/bundle/job.json", f"{PREFIX}/ledger/i-0.json", f"{PREFIX}/blobs/ab", "jobs/data/x.json",
                "jobs/digits-other-000000/bundle/job.json"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"{}")
    get_provisioner("aws", region="us-east-1", poll_seconds=0.01).create_groups(
        [dry_run_group("aws", JOB, OFFER, job_spec())])
    return Identity(aws_proxy, f"nascloud-{JOB}")


def refused(call, code: str = "AccessDenied") -> dict:
    """The call's AWS error, which must be `code` (EC2 says UnauthorizedOperation where others AccessDenied)."""
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as caught:
        call()
    got = caught.value.response["Error"]["Code"]
    assert got == code or (code, got) == ("AccessDenied", "UnauthorizedOperation"), caught.value.response
    return caught.value.response


def on_demand(me: Identity):
    """An UpdateAutoScalingGroup with no size, as use_on_demand sends it (its instances distribution is left out:
    moto wants a MixedInstancesPolicy whole, AWS takes the distribution alone)."""
    return me.autoscaling.update_auto_scaling_group(AutoScalingGroupName=NAME, CapacityRebalance=False)


# The calls each statement of role_policy covers, as the instance makes them.
PROBES = {
    "JobObjects": [lambda me: me.s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/bundle/job.json")],
    "JobRecords": [lambda me: me.s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/ledger/i-1.json", Body=b"{}")],
    "SnapshotPruning": [lambda me: me.s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/blobs/ab")],
    "JobListing": [lambda me: me.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/ledger/")],
    "DataSets": [lambda me: me.s3.get_object(Bucket=BUCKET, Key="jobs/data/x.json")],
    "OwnGroups": [lambda me: me.autoscaling.set_desired_capacity(AutoScalingGroupName=NAME, DesiredCapacity=0),
                  lambda me: me.autoscaling.create_or_update_tags(Tags=[{
                      "ResourceId": NAME, "ResourceType": "auto-scaling-group", "Key": "nascloud-reason",
                      "Value": "why", "PropagateAtLaunch": False}]),
                  on_demand],
    "Describe": [lambda me: me.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[NAME]),
                 lambda me: me.ec2.describe_instances(),
                 lambda me: me.ec2.describe_availability_zones()],
}
# For each condition of role_policy: a call it admits, refused once the condition is narrowed to `narrowed`.
CONDITION_PROBES = {
    ("JobListing", "StringLike", "s3:prefix"): (
        [f"{PREFIX}/none/*"], lambda me: me.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/ledger/")),
    ("OwnGroups", "StringEquals", "autoscaling:ResourceTag/nascloud-job"): (
        "digits-other-000000", lambda me: me.autoscaling.set_desired_capacity(AutoScalingGroupName=NAME,
                                                                              DesiredCapacity=0)),
    ("OwnGroups", "NumericLessThanEqualsIfExists", "autoscaling:MaxSize"): (
        "-1", lambda me: me.autoscaling.update_auto_scaling_group(AutoScalingGroupName=NAME, MaxSize=0)),
    ("OwnGroups", "NumericLessThanEqualsIfExists", "autoscaling:MinSize"): (
        "-1", lambda me: me.autoscaling.update_auto_scaling_group(AutoScalingGroupName=NAME, MinSize=0)),
}


def conditions(document: dict) -> set:
    return {(s["Sid"], operator, key) for s in document["Statement"] for operator, keys in
            s.get("Condition", {}).items() for key in keys}


def test_every_statement_and_condition_of_the_role_policy_has_a_probe():
    from nascloud.provisioners.aws import role_policy

    document = role_policy(BUCKET, PREFIX, JOB, ["search"])
    assert {s["Sid"] for s in document["Statement"]} == set(PROBES)
    assert conditions(document) == set(CONDITION_PROBES)


@pytest.mark.parametrize("sid", sorted(PROBES))
def test_removing_a_statement_refuses_the_calls_it_covers(instance, sid):
    for probe in PROBES[sid]:
        probe(instance)  # allowed as the policy is built
    document = instance.policy()
    instance.set_policy({**document, "Statement": [s for s in document["Statement"] if s["Sid"] != sid]})
    for probe in PROBES[sid]:
        refused(lambda: probe(instance))


@pytest.mark.parametrize("condition", sorted(CONDITION_PROBES), ids=lambda c: f"{c[0]}-{c[2]}")
def test_narrowing_a_condition_refuses_the_call_it_admits(instance, condition):
    sid, operator, key = condition
    narrowed, probe = CONDITION_PROBES[condition]
    probe(instance)
    document = instance.policy()
    for statement in document["Statement"]:
        if statement["Sid"] == sid:
            statement["Condition"][operator][key] = narrowed
    instance.set_policy(document)
    refused(lambda: probe(instance))


def test_a_get_of_a_missing_record_is_403_without_listing_and_nascloud_reads_it_as_missing(instance, monkeypatch,
                                                                                             tmp_path):
    """Confirmed: the listing conditioned on s3:prefix gives no s3:ListBucket to a GetObject, so S3 answers a
    missing key 403 (API_GetObject, "Permissions"); nascloud's store tells that from a refusal by listing."""
    from nascloud.checkpoints.s3 import S3Objects
    from nascloud.errors import CloudError

    answer = refused(lambda: instance.s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/stop.json"))
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 403
    instance.env(monkeypatch)
    objects = S3Objects(BUCKET, PREFIX)
    assert objects.get("stop.json") is None  # a missing record, not an error
    assert objects.download("agent/exit.json", tmp_path / "exit.json") is False
    assert objects.get("bundle/job.json")[0] == b"{}"
    with pytest.raises(CloudError, match="S3 refused a request on s3://nascloud-iam/jobs/digits-other-000000: "
                                         "AccessDenied"):
        S3Objects(BUCKET, "jobs/digits-other-000000").get("bundle/job.json")  # there, but not the job's own

    # With ListBucket on the bucket for the request (no condition), S3 says 404 NoSuchKey.
    document = instance.policy()
    for statement in document["Statement"]:
        statement.pop("Condition", None)
    instance.set_policy(document)
    assert refused(lambda: instance.s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/stop.json"),
                   "NoSuchKey")["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_the_instance_writes_its_own_records_but_not_the_launchers_nor_deletes_the_ledger(instance):
    for key in ("budget.json", "stop.json", "bundle/job.json", "bundle/nascloud-9.9-py3-none-any.whl"):
        refused(lambda: instance.s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{key}", Body=b"{}"))
    refused(lambda: instance.s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/ledger/i-0.json"))
    refused(lambda: instance.s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/agent/exit.json"))
    instance.s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/manifests/1.json")  # the snapshot store's pruning
    from nascloud.provisioners.aws import INSTANCE_WRITES

    for pattern in INSTANCE_WRITES:
        instance.s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{pattern.replace('*', 'x.json')}", Body=b"{}")


def test_the_instance_cannot_raise_its_groups_size_but_switches_it_to_on_demand(instance, monkeypatch,
                                                                               asg_partial_updates):
    import boto3

    from nascloud.provisioners import get_provisioner

    refused(lambda: instance.autoscaling.update_auto_scaling_group(AutoScalingGroupName=NAME, MaxSize=5,
                                                                   DesiredCapacity=5))
    refused(lambda: instance.autoscaling.update_auto_scaling_group(AutoScalingGroupName=NAME, MinSize=1))
    # SetDesiredCapacity is capped by the group's MaxSize, as AWS caps it (API_SetDesiredCapacity).
    refused(lambda: instance.autoscaling.set_desired_capacity(AutoScalingGroupName=NAME, DesiredCapacity=5),
            "ValidationError")
    instance.env(monkeypatch)
    get_provisioner("aws", region="us-east-1").use_on_demand(JOB, "search")
    monkeypatch.undo()
    (group,) = boto3.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[NAME])[
        "AutoScalingGroups"]
    assert (group["MaxSize"], group["DesiredCapacity"]) == (1, 1)
    assert group["MixedInstancesPolicy"]["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 100


def test_the_fis_role_may_describe_and_interrupt_its_instance_and_only_this_accounts_fis_may_assume_it(
        instance):
    """FIS's documented permissions for aws:ec2:send-spot-instance-interruptions are
    ec2:SendSpotInstanceInterruptions and ec2:DescribeInstances (fis-actions-reference.html); its trust is
    conditioned on aws:SourceAccount and aws:SourceArn (getting-started-iam-service-role.html)."""
    import boto3

    from nascloud.provisioners import get_provisioner
    from tests.fixtures.aws_iam import ACCOUNT

    aws = get_provisioner("aws", region="us-east-1", poll_seconds=0.01)
    (target,) = aws.groups(JOB)[0].live
    aws.preempt(target)
    iam = boto3.client("iam")
    role = iam.get_role(RoleName=f"nascloud-fis-{JOB}")["Role"]
    allowed = [iam.get_role_policy(RoleName=role["RoleName"], PolicyName="interrupt")["PolicyDocument"]]
    arn = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/{target.instance_id}"
    assert evaluate(allowed, "ec2:SendSpotInstanceInterruptions", arn, {}) == ALLOW
    assert evaluate(allowed, "ec2:SendSpotInstanceInterruptions", arn[:-3] + "fff", {}) == IMPLICIT_DENY
    assert evaluate(allowed, "ec2:DescribeInstances", "*", {}) == ALLOW
    trust = [role["AssumeRolePolicyDocument"]]
    fis = {"aws:PrincipalServiceName": "fis.amazonaws.com", "aws:SourceAccount": ACCOUNT,
           "aws:SourceArn": f"arn:aws:fis:us-east-1:{ACCOUNT}:experiment/EXP1"}
    assert evaluate(trust, "sts:AssumeRole", role["Arn"], fis) == ALLOW
    other = {**fis, "aws:SourceAccount": "210987654321",
             "aws:SourceArn": "arn:aws:fis:us-east-1:210987654321:experiment/EXP1"}
    assert evaluate(trust, "sts:AssumeRole", role["Arn"], other) == IMPLICIT_DENY  # the confused deputy
    assert evaluate(trust, "sts:AssumeRole", role["Arn"], {**fis, "aws:PrincipalServiceName": "ec2.amazonaws.com"}) \
        == IMPLICIT_DENY


def test_the_proxy_authenticates_the_signature_and_passes_the_launchers_keys(instance):
    import boto3

    from tests.fixtures.aws_iam import STATIC_KEY

    wrong = {**instance.credentials, "SecretAccessKey": "not-the-secret"}
    refused(lambda: instance.proxy.client("s3", wrong).get_object(Bucket=BUCKET, Key=f"{PREFIX}/bundle/job.json"),
            "SignatureDoesNotMatch")
    unknown = {**instance.credentials, "AccessKeyId": "ASIANOTREGISTERED000"}
    refused(lambda: instance.proxy.client("autoscaling", unknown).describe_auto_scaling_groups(),
            "InvalidClientTokenId")
    launcher = {"AccessKeyId": STATIC_KEY, "SecretAccessKey": "testing", "SessionToken": None}
    instance.proxy.client("s3", launcher).put_object(Bucket=BUCKET, Key=f"{PREFIX}/budget.json", Body=b"{}")
    # Each service refuses in its own format: S3's and Auto Scaling's AccessDenied (403), EC2's own code.
    instance.set_policy(policy({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::elsewhere/*"}))
    for call in (lambda: instance.s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/bundle/job.json"),
                 lambda: instance.autoscaling.set_desired_capacity(AutoScalingGroupName=NAME, DesiredCapacity=0)):
        answer = refused(call)
        assert answer["Error"]["Code"] == "AccessDenied" and answer["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert "is not authorized to perform" in answer["Error"]["Message"]
    answer = refused(lambda: instance.ec2.describe_instances(), "UnauthorizedOperation")
    assert answer["Error"]["Code"] == "UnauthorizedOperation" and answer["ResponseMetadata"]["HTTPStatusCode"] == 403
    # TerminateInstanceInAutoScalingGroup is judged on the instance's group (not granted: the breaker resizes).
    (live,) = boto3.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[NAME])[
        "AutoScalingGroups"][0]["Instances"]
    answer = refused(lambda: instance.autoscaling.terminate_instance_in_auto_scaling_group(
        InstanceId=live["InstanceId"], ShouldDecrementDesiredCapacity=True))
    assert f"autoScalingGroupName/{NAME} because" in answer["Error"]["Message"]


def test_fail_next_answers_the_first_calls_of_an_action_with_the_services_error(instance):
    from tests.fixtures.aws_iam import STATIC_KEY

    proxy = instance.proxy
    launcher = proxy.client("autoscaling", {"AccessKeyId": STATIC_KEY, "SecretAccessKey": "testing",
                                            "SessionToken": None})
    proxy.fail_next("autoscaling:DescribeAutoScalingGroups", 2, "Throttling", "Rate exceeded")
    for client in (launcher, instance.autoscaling):  # whoever signs them
        answer = refused(lambda: client.describe_auto_scaling_groups(AutoScalingGroupNames=[NAME]), "Throttling")
        assert answer["Error"]["Message"] == "Rate exceeded" and answer["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert launcher.describe_auto_scaling_groups(AutoScalingGroupNames=[NAME])["AutoScalingGroups"]
    proxy.fail_next("s3:GetObject", 1, "SlowDown", "Please reduce your request rate.", 503)
    answer = refused(lambda: instance.s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/bundle/job.json"), "SlowDown")
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 503
    instance.s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/bundle/job.json")


# --- the launching user's identity: `nascloud check` through the proxy --------------------------------------
from tests.test_cli_conventions import AWS_JOB, aws_bucket, cli  # noqa: E402,F401  (the conventions' account)


def launching_user(proxy, monkeypatch, name: str, actions, may_simulate: bool = True) -> str:
    """An IAM user in moto's IAM allowed `actions` on "*" and the bucket's own on the conventions' bucket (the
    probe writes there for real), with an access key: this process's AWS clients sign as it, through the proxy,
    which judges its calls and answers iam:SimulatePrincipalPolicy from its policies. Returns its ARN."""
    import boto3

    iam = boto3.client("iam")
    iam.create_user(UserName=name)
    allowed = [*actions, "iam:SimulatePrincipalPolicy"] if may_simulate else list(actions)
    iam.put_user_policy(UserName=name, PolicyName="launch", PolicyDocument=json.dumps(policy(
        {"Effect": "Allow", "Action": allowed, "Resource": "*"},
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"],
         "Resource": ["arn:aws:s3:::nascloud-conventions", "arn:aws:s3:::nascloud-conventions/*"]})))
    keys = proxy.register_user(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["SecretAccessKey"])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return f"arn:aws:iam::123456789012:user/{name}"


# Neither is called by check itself, so only the permissions line can fail; PassRole is asked on the job's role.
@pytest.mark.parametrize("missing", ["autoscaling:PutScheduledUpdateGroupAction", "iam:PassRole"])
def test_check_names_the_one_permission_the_launching_user_lacks(cli, aws_bucket, aws_proxy, monkeypatch, missing):
    from nascloud.checking import AWS_ACTIONS

    url, held = aws_bucket
    user = launching_user(aws_proxy, monkeypatch, "ana", [a for a in AWS_ACTIONS if a != missing])
    code, out, err = cli("check", AWS_JOB, "--bucket", url)
    lines = out.splitlines()
    assert code == 1 and [line.split()[0] for line in lines] == ["ok", "ok", "FAIL", "ok"], out + err
    assert lines[2] == (f"FAIL  permissions: {user} may not call {missing}; grant them (README: Providers and "
                        "permissions lists each with why)")
    assert held() == 0


def test_check_says_ok_for_a_user_with_every_action_until_its_group_denies_one(cli, aws_bucket, aws_proxy,
                                                                               monkeypatch):
    import boto3

    from nascloud.checking import AWS_ACTIONS

    url, _ = aws_bucket
    iam = boto3.client("iam")  # moto itself, with the session's keys (before the user's replace them)
    user = launching_user(aws_proxy, monkeypatch, "bob", AWS_ACTIONS)
    code, out, err = cli("check", AWS_JOB, "--bucket", url)
    assert code == 0, out + err
    assert out.splitlines()[2] == f"ok    permissions: {user} may call all {len(AWS_ACTIONS)} actions the launch uses"
    # An explicit Deny in a managed policy of the user's group wins over the user's inline Allow (the evaluation
    # logic; the simulator includes the user's groups' policies: API_SimulatePrincipalPolicy.html).
    denied = iam.create_policy(PolicyName="no-launch", PolicyDocument=json.dumps(policy(
        {"Effect": "Deny", "Action": "ec2:RunInstances", "Resource": "*"})))["Policy"]["Arn"]
    iam.create_group(GroupName="interns")
    iam.attach_group_policy(GroupName="interns", PolicyArn=denied)
    iam.add_user_to_group(GroupName="interns", UserName="bob")
    code, out, _ = cli("check", AWS_JOB, "--bucket", url)
    assert code == 1 and out.splitlines()[2].startswith(f"FAIL  permissions: {user} may not call ec2:RunInstances;")


def test_check_cannot_say_for_a_user_who_may_not_simulate_its_own_policy(cli, aws_bucket, aws_proxy, monkeypatch):
    from nascloud.checking import AWS_ACTIONS

    url, _ = aws_bucket
    user = launching_user(aws_proxy, monkeypatch, "eve", AWS_ACTIONS, may_simulate=False)
    code, out, err = cli("check", AWS_JOB, "--bucket", url)
    assert code == 0, out + err  # not known is no failure: a launch refused for a permission leaves nothing
    assert out.splitlines()[2].startswith(f"skip  permissions: could not check: {user} may not call "
                                          "iam:SimulatePrincipalPolicy on itself;")
    assert f"iam:SimulatePrincipalPolicy {user}" in aws_proxy.refused


def test_the_proxy_simulates_a_roles_policies_in_iams_shape_and_a_missing_principal_is_no_such_entity(instance):
    from tests.fixtures.aws_iam import STATIC_KEY

    iam = instance.proxy.client("iam", {"AccessKeyId": STATIC_KEY, "SecretAccessKey": "testing", "SessionToken": None})
    role = f"arn:aws:iam::123456789012:role/{instance.role}"
    job_object, other_object = f"arn:aws:s3:::{BUCKET}/{PREFIX}/bundle/job.json", f"arn:aws:s3:::{BUCKET}/jobs/x"
    (result,) = iam.simulate_principal_policy(PolicySourceArn=role, ActionNames=["s3:GetObject"],
                                              ResourceArns=[job_object, other_object])["EvaluationResults"]
    # The most restrictive decision over the resources, each one's own beside it (API_EvaluationResult.html).
    assert (result["EvalActionName"], result["EvalDecision"]) == ("s3:GetObject", "implicitDeny")
    assert [(r["EvalResourceName"], r["EvalResourceDecision"]) for r in result["ResourceSpecificResults"]] == [
        (job_object, "allowed"), (other_object, "implicitDeny")]
    instance.set_policy(policy({"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                               {"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "*"}))
    decided = {r["EvalActionName"]: r["EvalDecision"] for r in iam.simulate_principal_policy(
        PolicySourceArn=role, ActionNames=["s3:GetObject", "s3:DeleteObject", "ec2:RunInstances"])["EvaluationResults"]}
    assert decided == {"s3:GetObject": "allowed", "s3:DeleteObject": "explicitDeny", "ec2:RunInstances": "implicitDeny"}
    answer = refused(lambda: iam.simulate_principal_policy(PolicySourceArn="arn:aws:iam::123456789012:user/nobody",
                                                           ActionNames=["s3:GetObject"]), "NoSuchEntity")
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 404

"""The instance's AWS identity against servers that enforce it (issue 20, part 2): the IAM evaluator on AWS's
documented examples, the proxy's refusals in each service's own format, and each statement of
`role_policy` removed or narrowed, through real boto3 with the role's own credentials."""

from __future__ import annotations

import pytest

from tests.fixtures.aws_iam import ALLOW, EXPLICIT_DENY, IMPLICIT_DENY, evaluate

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


# https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-logic-multiple-context-keys-or-values.html
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

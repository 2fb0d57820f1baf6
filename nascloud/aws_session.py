"""The one place a boto3 session is made, so a missing profile or a malformed config file is a one-line
user error everywhere."""

from __future__ import annotations

from nascloud.errors import UsageError


def aws_session():
    import boto3
    from botocore.exceptions import ConfigParseError, ProfileNotFound

    try:
        return boto3.session.Session()
    except ProfileNotFound as error:
        raise UsageError(f"AWS profile {error.kwargs.get('profile')!r} is not in ~/.aws/config or ~/.aws/credentials; "
                         "fix AWS_PROFILE or add it with `aws configure --profile NAME`") from None
    except ConfigParseError as error:  # read when the session is made: the credentials file or the config
        raise UsageError(f"the AWS config file {error.kwargs.get('path')} is malformed (not [profile] sections of "
                         "`key = value` lines); fix it, or move it away and run `aws configure`") from None


# Every boto3 client nascloud makes (the provisioner's, the S3 store's) retries throttling (Throttling,
# ThrottlingException, RequestLimitExceeded, ...) and 5xx with botocore's standard mode: exponential backoff
# with full jitter, 1 s doubling for a throttle (at most 1 + 2 + 4 + 8 = 15 s of waiting over 5 attempts).
# An explicit total_max_attempts wins over AWS_MAX_ATTEMPTS and the config file (botocore/args.py,
# _compute_retry_max_attempts: "An explicitly provided max_attempts in the client config overrides everything").
RETRY_ATTEMPTS = 5


def client_config():
    """The botocore Config every nascloud client is made with."""
    from botocore.config import Config

    return Config(retries={"mode": "standard", "total_max_attempts": RETRY_ATTEMPTS})

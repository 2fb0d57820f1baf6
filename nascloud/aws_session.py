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

"""s3:// backend (boto3, imported when a store is opened). Credentials come from boto3's standard
chain; AWS_ENDPOINT_URL (read by boto3 itself) points it at another endpoint such as moto.

Create-only is put_object(IfNoneMatch="*"), compare-and-swap put_object(IfMatch=<ETag>).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import botocore.exceptions as bx
from boto3.exceptions import RetriesExceededError, S3UploadFailedError

from nascloud.aws_session import aws_session, client_config
from nascloud.checkpoints.base import ObjectInfo
from nascloud.errors import CloudError, UsageError

_CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403"}


class _Precondition(Exception):
    """A conditional write found the object in another state."""


class _Missing(Exception):
    """The object does not exist (the bucket does)."""


class S3Objects:
    def __init__(self, bucket: str, prefix: str):
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self.client = aws_session().client("s3", config=client_config())

    def _key(self, key: str) -> str:
        return self.prefix + key

    @contextmanager
    def _errors(self, read: Optional[str] = None) -> Iterator[None]:
        """botocore's failures as the error family; messages carry codes, never credentials. `read`: the key
        a GET / HEAD reads, whose 403 may mean that it is missing."""
        try:
            with self._transfer_errors():
                yield
        except bx.ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in _CONFLICT:
                raise _Precondition() from None
            if code in _MISSING or (code in _DENIED and read is not None and self._absent(read)):
                raise _Missing() from None
            if code == "NoSuchBucket":
                raise UsageError(f"S3 bucket {self.bucket!r} does not exist: create it or fix the bucket "
                                 "URL (checkpoint.bucket in the job file)") from None
            raise CloudError(f"S3 refused a request on {self.url}: {code or 'error'} "
                             f"({error.response.get('Error', {}).get('Message', '')}); check the "
                             "credentials' permissions on the bucket") from None
        except bx.NoCredentialsError:
            raise CloudError("no AWS credentials found: configure them the standard way (AWS_PROFILE, "
                             "~/.aws/credentials, environment variables or an instance role)") from None
        except (bx.EndpointConnectionError, bx.ConnectionClosedError, bx.ConnectTimeoutError,
                bx.ReadTimeoutError) as error:
            raise CloudError(f"cannot reach S3 for {self.url}: {type(error).__name__}; check the network "
                             "or AWS_ENDPOINT_URL") from None
        except bx.BotoCoreError as error:
            raise CloudError(f"S3 request on {self.url} failed: {type(error).__name__}") from None

    def _absent(self, key: str) -> bool:
        """Whether a key S3 refused to read is missing. S3 answers a GET / HEAD of a missing key with 403, not
        404, when the caller has no s3:ListBucket on the bucket for that request
        (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html, "Permissions"): the instance
        identity's case, whose listing is allowed only under the job's prefix (s3:prefix). A listing with the
        key itself as prefix tells, one request and only after a refusal; a refused listing is no answer."""
        try:
            found = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(key), MaxKeys=1)
        except bx.ClientError:
            return False
        return all(o["Key"] != self._key(key) for o in found.get("Contents", []))

    @staticmethod
    @contextmanager
    def _transfer_errors() -> Iterator[None]:
        """boto3's file transfers wrap the request's own failure: judge that one."""
        try:
            yield
        except S3UploadFailedError as error:
            raise error.__context__ or error from None
        except RetriesExceededError as error:
            raise error.last_exception from None

    def get(self, key: str) -> Optional[tuple[bytes, str]]:
        try:
            with self._errors(read=key):
                response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
                return response["Body"].read(), response["ETag"]
        except _Missing:
            return None

    def put(self, key: str, data: bytes) -> None:
        with self._errors():
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        try:
            with self._errors():
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            return True
        except _Precondition:
            return False

    def put_if_match(self, key: str, data: bytes, version: Optional[str]) -> Optional[str]:
        condition = {"IfMatch": version} if version is not None else {"IfNoneMatch": "*"}
        try:
            with self._errors():
                response = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
            return response["ETag"]
        except _Precondition:
            return None

    def upload(self, key: str, path: Path) -> None:
        with self._errors():
            self.client.upload_file(str(path), self.bucket, self._key(key))

    def download(self, key: str, path: Path) -> bool:
        try:
            with self._errors(read=key):
                self.client.download_file(self.bucket, self._key(key), str(path))
            return True
        except _Missing:
            return False

    def list(self, prefix: str) -> list[ObjectInfo]:
        infos = []
        with self._errors():
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=self._key(prefix)):
                for obj in page.get("Contents", []):
                    infos.append(ObjectInfo(obj["Key"][len(self.prefix):], obj["Size"],
                                            obj["LastModified"].timestamp()))
        return infos

    def delete(self, key: str) -> None:
        with self._errors():
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

"""gs:// backend (google-cloud-storage, imported when a store is opened). Credentials come from
nascloud.gcp_auth (google-auth's standard chain; on a test host the VM's metadata server), also with
STORAGE_EMULATOR_HOST set (a local emulator, or the tests' IAM proxy in front of one).

Create-only is a simple upload with if_generation_match=0, compare-and-swap
if_generation_match=<generation>. Small objects are simple (not resumable) uploads: emulators and
GCS both honour preconditions on those.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import google.auth.exceptions as gauth
import requests
from google.api_core import exceptions as gx
from google.cloud import storage

from nascloud.checkpoints.base import ObjectInfo
from nascloud.cloud_errors import gcp_credentials_error
from nascloud.gcp_auth import gcp_credentials
from nascloud.errors import CloudError, UsageError


class _Precondition(Exception):
    """A conditional write or read found another generation."""


class GCSObjects:
    def __init__(self, bucket: str, prefix: str):
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = f"gs://{bucket}/{prefix}".rstrip("/")
        self.bucket_name = bucket
        with self._errors():
            # As who we are under an emulator too (the tests' proxy checks IAM): on a VM its service account.
            credentials, project = gcp_credentials()
            client = storage.Client(project=project, credentials=credentials)
        self.bucket = client.bucket(bucket)
        self._bucket_seen = False

    def _blob(self, key: str) -> storage.Blob:
        return self.bucket.blob(self.prefix + key)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """google-cloud's failures as the error family; messages never carry credentials."""
        try:
            yield
        except gx.PreconditionFailed:
            raise _Precondition() from None
        except gx.NotFound:
            raise UsageError(f"GCS bucket {self.bucket_name!r} does not exist: create it or fix the bucket "
                             "URL (checkpoint.bucket in the job file)") from None
        except gx.RetryError as error:
            # The client retried a connection failure or 5xx until its deadline: the last failure says why.
            raise CloudError(f"cannot reach GCS for {self.url}: {type(error.cause).__name__} until the client "
                             "gave up; check the network or STORAGE_EMULATOR_HOST") from None
        except gx.GoogleAPICallError as error:
            raise CloudError(f"GCS refused a request on {self.url}: {error.code} {error.reason or ''}; "
                             "check the credentials' permissions on the bucket") from None
        except gauth.DefaultCredentialsError as error:
            raise gcp_credentials_error(error) from None
        except gauth.GoogleAuthError as error:
            raise CloudError(f"Google Cloud credentials failed: {type(error).__name__}") from None
        except requests.exceptions.RequestException as error:
            raise CloudError(f"cannot reach GCS for {self.url}: {type(error).__name__}; check the network "
                             "or STORAGE_EMULATOR_HOST") from None

    def get(self, key: str) -> Optional[tuple[bytes, str]]:
        while True:
            with self._errors():
                blob = self.bucket.get_blob(self.prefix + key)
            if blob is None:
                self._check_bucket()
                return None
            try:
                with self._errors():
                    # Pinned to the generation just seen, so bytes and version agree.
                    return blob.download_as_bytes(if_generation_match=blob.generation), str(blob.generation)
            except (_Precondition, UsageError):
                continue  # replaced or removed between the two calls: look again

    def put(self, key: str, data: bytes) -> None:
        with self._errors():
            self._blob(key).upload_from_string(data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.put_if_match(key, data, None) is not None

    def put_if_match(self, key: str, data: bytes, version: Optional[str]) -> Optional[str]:
        blob = self._blob(key)
        try:
            with self._errors():
                blob.upload_from_string(data, if_generation_match=int(version) if version else 0)
            return str(blob.generation)
        except _Precondition:
            return None

    def upload(self, key: str, path: Path) -> None:
        with self._errors():
            self._blob(key).upload_from_filename(str(path))

    def download(self, key: str, path: Path) -> bool:
        try:
            with self._errors():
                self._blob(key).download_to_filename(str(path))
            return True
        except UsageError:
            self._check_bucket()
            Path(path).unlink(missing_ok=True)
            return False

    def _check_bucket(self) -> None:
        """GCS answers 404 alike for a missing object and a missing bucket: tell them apart (once)."""
        if self._bucket_seen:
            return
        with self._errors():
            if not self.bucket.exists():
                raise gx.NotFound("bucket")
        self._bucket_seen = True

    def list(self, prefix: str) -> list[ObjectInfo]:
        with self._errors():
            return [ObjectInfo(b.name[len(self.prefix):], b.size or 0, b.updated.timestamp())
                    for b in self.bucket.client.list_blobs(self.bucket, prefix=self.prefix + prefix)]

    def delete(self, key: str) -> None:
        try:
            with self._errors():
                self._blob(key).delete()
        except UsageError:
            pass  # already gone

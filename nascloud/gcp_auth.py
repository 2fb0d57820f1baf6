"""The one place Google credentials are made, for the Compute Engine clients and the GCS store alike, so
both sides call as who they are, against test endpoints too."""

from __future__ import annotations

import os
from typing import Optional

from nascloud.cloud_errors import gcp_credentials_error

METADATA_ENV = "NASCLOUD_GCE_METADATA_URL"  # set where the VM's metadata server is not GCE's usual address


def gcp_credentials(scopes: Optional[list[str]] = None):
    """(credentials, project or None). On an instance whose metadata server is elsewhere (NASCLOUD_GCE_METADATA_URL:
    the tests' hosts) the VM's service account through google-auth's metadata-server credentials, which find
    that server by GCE_METADATA_HOST; everywhere else Application Default Credentials (on a VM that is the
    same metadata server's token, on a laptop the user's `gcloud auth application-default login`)."""
    if os.environ.get(METADATA_ENV):
        from google.auth import compute_engine

        return compute_engine.Credentials(scopes=scopes), None
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        return google.auth.default(scopes=scopes)
    except DefaultCredentialsError as error:
        raise gcp_credentials_error(error) from None

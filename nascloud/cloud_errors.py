"""Cloud failures as one-line messages: an error body cut to one short line, and google-auth's
credential failures told apart (missing is a setup step to do, malformed a file to fix)."""

from __future__ import annotations

import re

from nascloud.errors import CloudError, NascloudError, UsageError


def one_line(text: object, limit: int = 200) -> str:
    """A cloud's error text as one line of at most `limit` characters: an HTML error page (a proxy's,
    a load balancer's) loses its markup, styles and scripts; whitespace and newlines collapse."""
    text = re.sub(r"(?is)<(style|script)\b.*?</\1\s*>", " ", str(text))
    flat = " ".join(re.sub(r"<[^>]*>", " ", text).split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def gcp_credentials_error(error: Exception) -> NascloudError:
    """google.auth's DefaultCredentialsError: none found (CloudError, exit 1, as for AWS; also when
    GOOGLE_APPLICATION_CREDENTIALS names no file), or a file that is there but is not usable credentials
    (UsageError: the file is the user's to fix)."""
    reason = one_line(error.args[0] if error.args else error)
    if "not found" in reason:
        return CloudError("no Google Cloud credentials found: run `gcloud auth application-default login` "
                          "or set GOOGLE_APPLICATION_CREDENTIALS")
    return UsageError(f"the Google Cloud credentials file is malformed or unreadable: {reason.rstrip('.')}; fix "
                      "it (or GOOGLE_APPLICATION_CREDENTIALS), or run `gcloud auth application-default login` again")

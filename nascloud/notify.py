"""Alerts to a Slack-compatible incoming webhook, so a detached job can reach its user.

The URL is a secret (anyone holding it can post to the channel): it is never logged, printed or put in
an error message. A failed delivery is returned as a record for the job's events, never raised: an
alert that cannot be sent must not stop the watch loop that enforces the budget.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Delivery:
    ok: bool
    error: Optional[str] = None  # one line, without the URL


def send_webhook(url: str, text: str, timeout: float = TIMEOUT_SECONDS) -> Delivery:
    """POST {"text": ...} (Slack's incoming-webhook shape; Mattermost and Discord's /slack accept it)."""
    request = urllib.request.Request(url, data=json.dumps({"text": text}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    host = urlsplit(url).hostname or "the webhook"  # the host is not the secret; the path is
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
        return Delivery(ok=True)
    except urllib.error.HTTPError as error:
        return Delivery(ok=False, error=f"webhook at {host} answered HTTP {error.code}")
    except (urllib.error.URLError, OSError, ValueError) as error:
        # Only the reason's kind or errno text: a ValueError or URLError may quote the URL itself.
        reason = getattr(error, "reason", error)
        why = reason.strerror if isinstance(reason, OSError) and reason.strerror else type(reason).__name__
        return Delivery(ok=False, error=f"webhook at {host} unreachable: {why}")

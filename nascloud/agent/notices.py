"""Stop requests for the running search: SIGTERM, cloud preemption notices, stop request/budget/deadline.

Every stop arrives as one exception, `StopRequested`, raised in the main thread. It derives from
KeyboardInterrupt on purpose: KerasTuner catches `Exception` around a trial and would mark the trial
FAILED, losing its work; a BaseException passes through and leaves the trial resumable.
While the search writes its own files (epoch end, trial end, trial creation) a stop is held back
until the files agree, so the final snapshot is always a consistent one.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, Optional

AWS_METADATA_URL = "http://169.254.169.254"
GCE_METADATA_URL = "http://metadata.google.internal/computeMetadata/v1"


class StopRequested(KeyboardInterrupt):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # preempted | stopped | budget | deadline
        self.message = message


class Notices:
    """Collects the first stop reason and raises it in the main thread at a safe moment."""

    def __init__(self) -> None:
        self.reason: Optional[str] = None
        self.message = ""
        self.received_at: Optional[float] = None
        self._holds = 0
        self._pending = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGUSR1, self._on_signal)

    def request(self, reason: str, message: str) -> None:
        """From any thread: record the reason, then wake the main thread with SIGUSR1."""
        self._record(reason, message)
        os.kill(os.getpid(), signal.SIGUSR1)

    def _record(self, reason: str, message: str) -> None:
        if self.reason is None:
            self.reason, self.message, self.received_at = reason, message, time.time()

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGTERM:
            self._record("preempted", "received SIGTERM")
        if self._holds:
            self._pending = True
            return
        self._raise()

    def _raise(self) -> None:
        self._pending = False
        raise StopRequested(self.reason or "preempted", self.message)

    def hold(self) -> None:
        """Files are being written: hold back stops until release()."""
        self._holds += 1

    def release(self) -> None:
        self._holds = max(0, self._holds - 1)
        if not self._holds and self._pending:
            self._raise()


def _get(url: str, headers: dict, method: str = "GET", timeout: float = 2.0) -> Optional[str]:
    """The body of a 200 answer, None for 404 or an unreachable endpoint."""
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def aws_instance_action(base_url: str) -> Optional[str]:
    """IMDSv2: a session token first, then spot/instance-action (404 until a notice is scheduled)."""
    base = base_url.rstrip("/")
    token = _get(f"{base}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "300"}, method="PUT")
    if token is None:
        return None
    body = _get(f"{base}/latest/meta-data/spot/instance-action", {"X-aws-ec2-metadata-token": token})
    if not body:
        return None
    try:
        action = json.loads(body)
    except ValueError:
        return None
    return f"AWS spot instance-action {action.get('action', '?')} at {action.get('time', '?')}"


def gce_preempted(base_url: str) -> Optional[str]:
    body = _get(f"{base_url.rstrip('/')}/instance/preempted", {"Metadata-Flavor": "Google"})
    return "GCP instance/preempted is TRUE" if body and body.strip().upper() == "TRUE" else None


def pollers(cloud: Optional[str]) -> list[Callable[[], Optional[str]]]:
    """The metadata checks this instance should poll: the cloud's own, or any whose URL is set."""
    checks: list[Callable[[], Optional[str]]] = []
    aws = os.environ.get("NASCLOUD_AWS_METADATA_URL") or (AWS_METADATA_URL if cloud == "aws" else None)
    gce = os.environ.get("NASCLOUD_GCE_METADATA_URL") or (GCE_METADATA_URL if cloud == "gcp" else None)
    if aws:
        checks.append(lambda: aws_instance_action(aws))
    if gce:
        checks.append(lambda: gce_preempted(gce))
    return checks


def start_polling(notices: Notices, checks: list[Callable[[], Optional[str]]], interval: float,
                  stopped: threading.Event) -> Optional[threading.Thread]:
    if not checks:
        return None

    def loop() -> None:
        while not stopped.wait(interval):
            for check in checks:
                message = check()
                if message:
                    notices.request("preempted", message)
                    return

    thread = threading.Thread(target=loop, name="nascloud-notices", daemon=True)
    thread.start()
    return thread


_hits: dict[str, int] = {}


def fault_armed(name: str) -> bool:
    """Test-only fault injection: NASCLOUD_TEST_KILL_AT=<point>:<n> arms <point> the n-th time it is
    reached in this process."""
    point, _, count = os.environ.get("NASCLOUD_TEST_KILL_AT", "").partition(":")
    if point != name:
        return False
    _hits[name] = _hits.get(name, 0) + 1
    return _hits[name] == int(count or 1)


def fault_point(name: str, delay: float = 0.0) -> None:
    """SIGKILL this process when `name` is armed (after `delay` seconds, from a timer, so the kill lands
    inside the work that follows); the point `fail-trial` raises an ordinary error instead, like a trial
    that fails on its own."""
    if not fault_armed(name):
        return
    if name == "fail-trial":
        raise RuntimeError("injected trial failure (NASCLOUD_TEST_KILL_AT)")
    if delay:
        threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
    else:
        os.kill(os.getpid(), signal.SIGKILL)

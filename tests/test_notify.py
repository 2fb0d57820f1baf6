"""Webhook alerts against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nascloud import notify
from tests.fixtures.servers import free_port

SECRET_PATH = "/services/T000/B000/s3cr3t-token"


@pytest.fixture
def hook():
    """A Slack-like incoming webhook: records each POST; answers 500 when the path ends in /fail,
    and never answers when it ends in /hang."""
    received: list[dict] = []
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path.endswith("/hang"):
                release.wait(10)
                return
            received.append({"path": self.path, "type": self.headers["Content-Type"], "body": json.loads(body)})
            self.send_response(500 if self.path.endswith("/fail") else 200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    release.set()
    server.shutdown()
    server.server_close()


def test_alert_is_posted_as_slack_json(hook):
    base, received = hook
    delivery = notify.send_webhook(base + SECRET_PATH, "80% of the $10.00 budget spent ($8.00)")
    assert delivery == notify.Delivery(ok=True)
    assert received == [{"path": SECRET_PATH, "type": "application/json",
                         "body": {"text": "80% of the $10.00 budget spent ($8.00)"}}]


def test_failures_are_returned_without_the_secret(hook):
    base, _ = hook
    refused = notify.send_webhook(f"http://127.0.0.1:{free_port()}{SECRET_PATH}", "x")
    rejected = notify.send_webhook(base + SECRET_PATH + "/fail", "x")
    hung = notify.send_webhook(base + SECRET_PATH + "/hang", "x", timeout=0.3)
    assert rejected == notify.Delivery(ok=False, error="webhook at 127.0.0.1 answered HTTP 500")
    assert refused == notify.Delivery(ok=False, error="webhook at 127.0.0.1 unreachable: Connection refused")
    assert hung.ok is False and hung.error.startswith("webhook at 127.0.0.1 unreachable: ")
    for delivery in (refused, rejected, hung):
        assert "s3cr3t" not in delivery.error

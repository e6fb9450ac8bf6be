"""A webhook receiver on loopback, in the test process: a real HTTP server that checks
every request's signature with the `standardwebhooks` package, as a receiver would, and
answers what the test scripts (a status, or hanging until released)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

HANG = -1  # an answer that never comes (until `release`)


@dataclass(frozen=True)
class Received:
    webhook_id: str
    timestamp: str
    signature: str
    payload: dict[str, Any]
    # Which of the receiver's secrets verified it (None: none did).
    verified_with: str | None
    answered: int


@dataclass
class Receiver:
    """Answers each request with `script(n)` (n counts from 0, per webhook-id); records
    what came. `secrets` are those it verifies with, changed by a test as it rotates."""

    secrets: list[str] = field(default_factory=list)
    script: Callable[[int], int] = lambda n: 200
    received: list[Received] = field(default_factory=list)
    url: str = ""
    released: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        verified_with = None
        for secret in self.secrets:
            with contextlib.suppress(WebhookVerificationError):
                Webhook(secret).verify(body, headers)
                verified_with = secret
                break
        webhook_id = headers.get("webhook-id", "")
        with self.arrived:
            n = sum(1 for r in self.received if r.webhook_id == webhook_id)
            status = self.script(n) if verified_with else 400
            self.received.append(
                Received(
                    webhook_id,
                    headers.get("webhook-timestamp", ""),
                    headers.get("webhook-signature", ""),
                    json.loads(body),
                    verified_with,
                    status,
                )
            )
            self.arrived.notify_all()
        return status

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        """The first `count` requests, once they came."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.received)} requests came, wanted {count}"
                self.arrived.wait(left)
            return list(self.received)

    def of_type(self, event: str) -> list[Received]:
        return [r for r in self.received if r.payload["type"] == event]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = receiver.handle({k.lower(): v for k, v in self.headers.items()}, body)
            if status == HANG:
                receiver.released.wait(60)
                self.close_connection = True
                return
            with contextlib.suppress(OSError):
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextlib.contextmanager
def receiving(*secrets: str, script: Callable[[int], int] = lambda n: 200) -> Iterator[Receiver]:
    receiver = Receiver(list(secrets), script)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    httpd.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{httpd.server_address[1]}/hooks"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.released.set()
        httpd.shutdown()
        httpd.server_close()

"""A proxy in front of a real `chute serve` that misbehaves on chunk requests, as a server
that cuts off or holds chunks does (DESIGN §2): for the clients' retry and stall tests.

`rule(n)` gives the verdict for the n-th chunk request (POST .../upload-data, from 0):
`PASS` (forwarded), `STALL` (the request's head and a little of its body are read,
then nothing more, and no answer: a silent network drop as the client sees it), or
`Answer(status, retry_after)` (the body is read, then that status is answered).
Every connection is closed after one request, so each try of the client is a new one.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

PASS: Literal["pass"] = "pass"
STALL: Literal["stall"] = "stall"
# Small, so that the client's writes block soon after the proxy stops reading.
RECEIVE_BUFFER = 16 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    retry_after: float | None = None
    detail: str = "The proxy answered."


Verdict = Literal["pass", "stall"] | Answer


@dataclass
class Seen:
    """One chunk request as it reached the proxy."""

    at: float  # time.monotonic() when its head arrived
    index: int | None  # its chunk_index, when the proxy read that far
    verdict: Verdict
    # time.monotonic() just before the proxy's own answer left: the client cannot have it
    # sooner, so its wait for Retry-After starts after this.
    answered_at: float | None = None


@dataclass
class FaultyProxy:
    upstream: tuple[str, int]
    rule: Callable[[int], Verdict]
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def chunk_requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._held:
                sock.close()

    def __enter__(self) -> FaultyProxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            head, rest = _read_head(sock)
            request_line = head.split(b"\r\n", 1)[0].decode()
            method, target = request_line.split(" ")[:2]
            length = int(_header(head, b"content-length") or b"0")
            if not (method == "POST" and target.endswith("/upload-data")):
                self._forward(sock, head, rest, length)
                return
            with self._lock:
                verdict = self.rule(len(self.seen))
                seen = Seen(time.monotonic(), None, verdict)
                self.seen.append(seen)
            if verdict == STALL:
                seen.index = _chunk_index(rest)
                with self._lock:
                    self._held.append(sock)  # open, unread, unanswered until close()
                return
            body = rest + _read_exactly(sock, length - len(rest))
            seen.index = _chunk_index(body)
            if verdict == PASS:
                self._forward(sock, head, body, length)
                return
            extra = (
                b"" if verdict.retry_after is None else b"Retry-After: %g\r\n" % verdict.retry_after
            )
            payload = b'{"detail": "%s"}' % verdict.detail.encode()
            seen.answered_at = time.monotonic()
            sock.sendall(
                b"HTTP/1.1 %d Proxy\r\nContent-Type: application/json\r\n" % verdict.status
                + extra
                + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(payload)
                + payload
            )
            sock.close()
        except OSError:
            sock.close()

    def _forward(self, sock: socket.socket, head: bytes, body: bytes, length: int) -> None:
        """Send the request on with `Connection: close`, and its answer back."""
        body += _read_exactly(sock, length - len(body))
        lines = [
            line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")
        ]
        head = b"\r\n".join([*lines, b"Connection: close"])
        with socket.create_connection(self.upstream) as up:
            up.sendall(head + b"\r\n\r\n" + body)
            while data := up.recv(65536):
                sock.sendall(data)
        sock.close()


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        block = sock.recv(65536)
        if not block:
            raise ConnectionError("closed before the head")
        data += block
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    parts = []
    while size > 0:
        block = sock.recv(min(size, 1 << 20))
        if not block:
            raise ConnectionError("closed mid-body")
        parts.append(block)
        size -= len(block)
    return b"".join(parts)


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def _chunk_index(body: bytes) -> int | None:
    found = re.search(rb'name="chunk_index"\r\n\r\n(\d+)', body)
    return int(found.group(1)) if found else None

"""Limits on request bodies (DESIGN §2), kept as the bytes arrive, whatever the HTTP server.

A pure ASGI middleware: Starlette's BaseHTTPMiddleware, or anything that read the body to
check it, would hold a hostile body in memory before refusing it.

- upload-data (`POST /api/job/{id}/upload-data`) and tus (creation, PATCH) stream their
  bodies to the route, which counts them against their limits (`chute.upload.receive`,
  `chute.upload.tus`). Here a body is only cut off
  when no byte comes for `body_idle_timeout` seconds: a request whose client vanished
  without a FIN or RST (a laptop asleep) would otherwise hold its chunk's part forever.
- Every other route's body is read here first, before any parsing: at most
  `max_body_bytes` (413, from the Content-Length before a byte is read, else counted as
  it streams, chunked encoding included), whole within `body_idle_timeout` seconds (408,
  so a body trickled in byte by byte holds no connection for long). The route then reads
  it from memory.
"""

from __future__ import annotations

import asyncio
import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chute.errors import ChuteError, Problem

# The routes that stream their bodies to storage: upload-data, and tus creation and PATCH.
_STREAMED = {
    "POST": re.compile(r"/api/job/[^/]+/upload-data/?|/api/tus/?"),
    "PATCH": re.compile(r"/api/tus/[^/]+"),
}


def _streams_its_body(scope: Scope) -> bool:
    pattern = _STREAMED.get(scope["method"])
    return pattern is not None and pattern.fullmatch(scope["path"]) is not None


class BodyLimits:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, idle_timeout: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _streams_its_body(scope):
            await self.app(scope, idle_cut(receive, self.idle_timeout), send)
            return
        try:
            body = await self._read_body(scope, receive)
        except ChuteError as refused:
            await refused.response()(scope, receive, send)
            return
        if body is not None:
            await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None if the client went away."""
        too_large = ChuteError(Problem.BODY_TOO_LARGE, limit=self.max_body_bytes)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            raise too_large
        body = bytearray()
        try:
            async with asyncio.timeout(self.idle_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    body += message.get("body", b"")
                    if len(body) > self.max_body_bytes:
                        raise too_large
                    if not message.get("more_body", False):
                        return bytes(body)
        except TimeoutError:
            raise ChuteError(Problem.BODY_TOO_SLOW, seconds=self.idle_timeout) from None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read, then the server's own receive (a route may wait for the disconnect)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def idle_cut(receive: Receive, seconds: float) -> Receive:
    """`receive`, which raises ChuteError(BODY_IDLE) when the body sends no byte for
    `seconds`; after that it answers a disconnect at once, so code that drains the body
    before answering does not wait again. The route's cleanup runs as for any error (the
    part's lock released, its writer aborted); the answer closes the connection."""
    ended = cut = False

    async def guarded() -> Message:
        nonlocal ended, cut
        if cut:
            return {"type": "http.disconnect"}
        if ended:
            return await receive()
        try:
            async with asyncio.timeout(seconds):
                message = await receive()
        except TimeoutError:
            cut = True
            raise ChuteError(Problem.BODY_IDLE, seconds=seconds) from None
        ended = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return guarded

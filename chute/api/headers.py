"""Headers every answer carries (DESIGN §2 and §8), added by one pure ASGI middleware.

It only touches the `http.response.start` message, so streamed bodies (SSE, downloads,
the upload's answers) pass through as they are sent. It wraps the whole application,
Starlette's error middleware included, so a 500 carries them too.
"""

from __future__ import annotations

import re
import secrets

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chute.logs import request_id

# A client's X-Request-ID is kept when it is a plain token: it goes into log lines.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class AnswerHeaders:
    """`X-Content-Type-Options: nosniff` on every answer (a browser never guesses a
    script or a page from a user's CSV); `Cache-Control: no-store` on API answers and
    on every error, so no cache or proxy keeps a user's jobs, tokens or results; and
    `X-Request-ID`, the request's id, which its log lines carry too (`chute.logs`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        api = path == "/api" or path.startswith("/api/")
        sent = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = sent if _CLIENT_ID.fullmatch(sent) else secrets.token_hex(8)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Request-ID"] = rid
                if api or message["status"] >= 400:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        token = request_id.set(rid)
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            request_id.reset(token)

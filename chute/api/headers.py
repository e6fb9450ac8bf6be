"""Headers every answer carries (DESIGN §2), added by a pure ASGI middleware.

It only touches the `http.response.start` message, so streamed bodies (SSE, downloads,
the upload's answers) pass through as they are sent. It wraps the whole application,
Starlette's error middleware included, so a 500 carries them too.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class SecurityHeaders:
    """`X-Content-Type-Options: nosniff` on every answer (a browser never guesses a
    script or a page from a user's CSV); `Cache-Control: no-store` on API answers and
    on every error, so no cache or proxy keeps a user's jobs, tokens or results."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        api = path == "/api" or path.startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                if api or message["status"] >= 400:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)

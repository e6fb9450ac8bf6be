"""`GET /metrics` (DESIGN §8), and what the HTTP layer counts for it: every request, by
one pure ASGI middleware, and the refusals of the upload routes, by a dependency.

/metrics answers admins only (a bearer token or a session of an admin), or anyone with
CHUTE_METRICS_PUBLIC. It is kept out of the OpenAPI document: its answer is Prometheus'
text, for a monitor, not JSON for the API's clients; the README's "Metrics" lists its
series.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import iter_route_contexts
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chute.api.deps import RuntimeDep, admin_user, current_user
from chute.errors import ChuteError
from chute.metrics import (
    CONTENT_TYPE,
    UNMATCHED,
    DatabaseCollector,
    chunk_refused,
    exposition,
    request_answered,
)

router = APIRouter(tags=["operations"])

# Methods named as they are; any other a client makes up is one label.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def metrics_reader(request: Request, rt: RuntimeDep) -> None:
    """An admin, unless CHUTE_METRICS_PUBLIC: 401 without a sign-in, 403 for a non-admin."""
    if not rt.settings.metrics_public:
        admin_user(current_user(request, rt))


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_reader)])
def metrics(rt: RuntimeDep) -> Response:
    """Prometheus' text format: every process's figures, and the database's."""
    body = exposition(DatabaseCollector(rt.sessions, rt.kinds))
    return Response(body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})


async def count_refusals() -> AsyncIterator[None]:
    """On an upload route: count the request if it is refused, by its problem's name.

    Declared on the route itself, so it is entered before the route's other dependencies
    and sees their refusals too (401 before any byte is read)."""
    try:
        yield
    except ChuteError as refused:
        chunk_refused(refused.problem.name)
        raise
    except ClientDisconnect:
        chunk_refused("CLIENT_GONE")
        raise


RefusalsCounted = Depends(count_refusals)


class RequestMetrics:
    """Counts and times every HTTP request by route, method and status.

    The route is the path template of the route the path matches (`/api/job/{job_id}`),
    found here from the app's routes, so requests refused before routing (a body over
    its limit) have theirs too; a path no route matches is `unmatched`. Labels stay a
    bounded set whatever paths and methods clients send. Only the answer's start message
    is read: request and answer bodies pass through untouched.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.templates: list[tuple[re.Pattern[str], str]] = [
            (context.path_regex, context.path_format)
            for context in iter_route_contexts(list(routes))
            if context.path_regex is not None and context.path_format is not None
        ]

    def route_of(self, path: str) -> str:
        for pattern, template in self.templates:
            if pattern.match(path):
                return template
        return UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        except Exception:
            status = status or 500  # the server answers 500 for an app that raised
            raise
        finally:
            if status:
                method: Any = scope["method"]
                request_answered(
                    self.route_of(scope["path"]),
                    method if method in _METHODS else "other",
                    status,
                    time.perf_counter() - started,
                )

"""`create_app(settings)`: the FastAPI application, with everything it needs passed in."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from chute.api import (
    auth,
    config,
    docs,
    events,
    health,
    jobs,
    metrics,
    openapi,
    quotas,
    results,
    tokens,
    tus,
    uploads,
    users,
    web,
    webhooks,
)
from chute.api.cors import with_cors
from chute.api.headers import AnswerHeaders
from chute.api.limits import BodyLimits
from chute.config import Settings
from chute.errors import ChuteError, plain_words
from chute.jobs.runner import run_job
from chute.logs import configure
from chute.runtime import build_runtime
from chute.upload.stream import UploadSlots

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # API processes only enqueue, naming the task the workers bound to this handler.
        runtime = build_runtime(settings, handler=run_job)
        # Threads for blocking work of upload requests (hashing, disk writes, database).
        executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="chute-io")
        app.state.runtime = runtime
        app.state.executor = executor
        app.state.upload_slots = UploadSlots(settings.max_uploads_per_user)
        try:
            yield
        finally:
            checks.close()
            executor.shutdown(wait=True, cancel_futures=True)
            runtime.close()

    # No redirect_slashes: Starlette's redirect names the host of the request's Host
    # header, so `GET /api/job/` with `Host: evil.example` would send the client there.
    # A path with a stray slash is a 404 instead. The docs pages are ours (offline).
    app = _ChuteApp(
        title="Chute", lifespan=lifespan, redirect_slashes=False, docs_url=None, redoc_url=None
    )
    app.cors_origins = tuple(settings.cors_origin_list)
    if settings.trusted_proxies:
        # Only these peers' X-Forwarded-For/-Proto are believed: they set the client's
        # address and scheme in the scope for everything after (sign-in limits, cookies).
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    modules = (auth, users, quotas, tokens, jobs, uploads, tus, results, events, webhooks)
    for module in (*modules, config, metrics):
        app.include_router(module.router)
    checks = health.install(app)
    # After the API, so no page path can shadow a route under /api.
    web.mount(app)
    docs.mount(app)
    _install_error_handlers(app)
    app.add_middleware(
        BodyLimits,
        max_body_bytes=settings.max_body_bytes,
        idle_timeout=settings.body_idle_timeout,
    )
    openapi.install(app, settings)
    return app


class _ChuteApp(FastAPI):
    # Set by create_app before the first request builds the stack.
    cors_origins: tuple[str, ...] = ()

    def build_middleware_stack(self) -> ASGIApp:
        # Around Starlette's error middleware too, so a 500 carries nosniff and no-store,
        # and a foreign front end can read the `detail` of every error, a 500's included.
        stack = with_cors(super().build_middleware_stack(), list(self.cors_origins))
        # Outermost, so each request is timed whole and counted with the status it got.
        return metrics.RequestMetrics(AnswerHeaders(tus.TusResumable(stack)), self.routes)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ChuteError)
    async def chute_error(_: Request, exc: ChuteError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": plain_words(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_: Request, exc: ClientDisconnect) -> JSONResponse:
        # Nobody reads this answer; what the request had sent is already dropped.
        log.info("client disconnected mid-request")
        return JSONResponse({"detail": "The client went away mid-request."}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return JSONResponse({"detail": "Internal server error."}, status_code=500)


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory`: settings from the CHUTE_* environment."""
    settings = Settings()
    configure(settings.log_format)
    return create_app(settings)

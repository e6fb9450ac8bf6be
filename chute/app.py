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

from chute.api import auth, config, events, jobs, openapi, results, uploads, web
from chute.config import Settings
from chute.errors import ChuteError, plain_words
from chute.runtime import build_runtime
from chute.upload.receive import UploadSlots

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = build_runtime(settings)
        # Threads for blocking work of upload requests (hashing, disk writes, database).
        executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="chute-io")
        app.state.runtime = runtime
        app.state.executor = executor
        app.state.upload_slots = UploadSlots(settings.max_uploads_per_user)
        try:
            yield
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            runtime.close()

    app = FastAPI(title="Chute", lifespan=lifespan)
    for module in (auth, jobs, uploads, results, events, config):
        app.include_router(module.router)
    # After the API, so no page path can shadow a route under /api.
    web.mount(app)
    _install_error_handlers(app)
    openapi.install(app, settings)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ChuteError)
    async def chute_error(_: Request, exc: ChuteError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

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
    return create_app(Settings())

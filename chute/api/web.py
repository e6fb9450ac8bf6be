"""The web page: `/` is the app's one HTML document, `/static/` its scripts and styles.

Everything is served from the package (`chute/web/`), as written: no build step and
nothing fetched from elsewhere at run time. `nosniff` is added to every answer by
`chute.api.headers`; the API docs pages' scripts are under `/docs-assets/`.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# The page loads only its own files and talks only to its own server.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Scripts change with the package; a browser must ask again rather than run stale ones.
NO_STALE = {"Cache-Control": "no-cache"}


def mount(app: FastAPI) -> None:
    app.mount("/static", _StaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(
            WEB_DIR / "index.html",
            media_type="text/html; charset=utf-8",
            headers={
                **NO_STALE,
                "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "Referrer-Policy": "same-origin",
            },
        )


class _StaticFiles(StaticFiles):
    """StaticFiles with `no-cache` (revalidate by ETag) on every answer."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(NO_STALE)
        return response

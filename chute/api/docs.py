"""`/docs` (Swagger UI) and `/redoc`: the API's documentation pages, served offline.

FastAPI's own pages load their scripts from a public CDN, so they are blank without the
internet and trust a third party with the page. These are the same pages (FastAPI's
`get_swagger_ui_html` / `get_redoc_html`) pointed at the scripts that the pinned
`fastapi-offline` package ships (served under `/docs-assets/`), with a policy that lets
the browser load nothing from anywhere else.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"

# Both pages style themselves at run time (Swagger UI's React, ReDoc's styled-components),
# hence 'unsafe-inline' for styles; scripts are only our own files and, on /docs, the
# one inline initializer, allowed by its hash. ReDoc runs its search in a worker made
# from a blob: URL.
_POLICY = (
    "default-src 'self'; script-src 'self'{script}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def mount(app: FastAPI) -> None:
    """Add the pages; the app must be made with `docs_url=None, redoc_url=None`."""
    app.mount(
        ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets"
    )
    openapi_url = app.openapi_url or "/openapi.json"
    title = f"{app.title} API"
    swagger = _page(
        get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
            # Its default sends the document's address to a public validator.
            swagger_ui_parameters={"validatorUrl": None},
        )
    )
    redoc = _page(
        get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
    )

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(*swagger)

    @app.get("/redoc", include_in_schema=False)
    def redoc_page() -> HTMLResponse:
        return HTMLResponse(*redoc)


def _page(page: HTMLResponse) -> tuple[bytes, int, dict[str, str]]:
    """The page's HTML, status and headers: a policy allowing its inline scripts by
    their hashes, and no other."""
    html = bytes(page.body)
    hashes = [
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in re.findall(rb"<script>(.*?)</script>", html, flags=re.DOTALL)
    ]
    return (
        html,
        200,
        {
            "Content-Security-Policy": _POLICY.format(script="".join(f" {h}" for h in hashes)),
            "Referrer-Policy": "same-origin",
            "Cache-Control": "no-cache",
        },
    )

"""CORS for front ends on other origins (DESIGN §7): bearer tokens only, listed origins only.

`allow_credentials` stays off, so a browser never sends Chute's cookie on a cross-origin
call it can read the answer of; and a cookie it sends anyway (a page on another port of the
same host is the same *site*) meets the same-origin rule of `chute.api.deps`, which
refuses every cookie-authenticated write whose Origin is not Chute's own.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

# The chunk endpoint, tus and the job routes; no route answers PUT.
METHODS = ("GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS")
# What the uploader and tus clients send, beyond the headers browsers always allow.
REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "Tus-Resumable",
    "Upload-Checksum",
    "Upload-Concat",
    "Upload-Defer-Length",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Offset",
    "X-HTTP-Method-Override",
    "X-Requested-With",
)
# What they read from answers: a browser hides every other header from a foreign page.
EXPOSED_HEADERS = (
    "Chute-Job-Id",
    "Content-Disposition",
    "Location",
    "Retry-After",
    "Tus-Checksum-Algorithm",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Resumable",
    "Tus-Version",
    "Upload-Concat",
    "Upload-Expires",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Offset",
)
# Seconds a browser may reuse a preflight's answer.
PREFLIGHT_MAX_AGE = 600


def with_cors(app: ASGIApp, origins: list[str]) -> ASGIApp:
    """`app` answering CORS for `origins` (exact, as browsers send them); `app` itself
    when there are none."""
    if not origins:
        return app
    return CORSMiddleware(
        app,
        allow_origins=origins,
        allow_methods=METHODS,
        allow_headers=REQUEST_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        allow_credentials=False,
        max_age=PREFLIGHT_MAX_AGE,
    )

"""Dependencies that make routes read like sentences: `session: SessionDep, user: CurrentUser`.

They have no side effects, with two exceptions: a bearer JWT from the identity provider
(`chute.auth.oidc`) whose user Chute has not seen creates that user, and an API token's
last use is recorded (at most once a minute, `chute.auth.tokens`). Authentication runs
before any route touches the request body.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from chute.auth.oidc import looks_like_jwt
from chute.auth.service import user_for_identity, user_for_token
from chute.auth.tokens import is_api_token, user_for_api_token
from chute.db.models import TokenKind, User, utcnow
from chute.errors import ChuteError, Problem
from chute.runtime import Runtime

SESSION_COOKIE = "chute_session"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(rt: RuntimeDep) -> Iterator[Session]:
    with rt.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def credential(request: Request) -> tuple[str, TokenKind] | None:
    """The secret the request signs in with, and its kind: a bearer token wins over a cookie."""
    token = bearer_token(request)
    if token is not None:
        return token, TokenKind.BEARER
    cookie = request.cookies.get(SESSION_COOKIE)
    return (cookie, TokenKind.SESSION) if cookie else None


def client_address(request: Request) -> str | None:
    """The socket's peer, or the client a trusted proxy names in X-Forwarded-For: the
    proxy-headers middleware (`chute.app`, CHUTE_FORWARDED_ALLOW_IPS) put it in the scope."""
    return request.client.host if request.client else None


def is_https(request: Request, public_url: str) -> bool:
    """Whether browsers reach us over https: CHUTE_PUBLIC_URL says so, or the request's
    scheme does (https from a trusted proxy's X-Forwarded-Proto counts)."""
    return public_url.startswith("https://") or request.url.scheme == "https"


def _same_origin(request: Request, public_url: str) -> bool:
    """Cookie-authenticated writes must name this site in Origin (or, lacking it, Referer).

    This site is CHUTE_PUBLIC_URL when set; otherwise the request's scheme and Host.
    """
    claimed = request.headers.get("origin")
    if claimed is None or claimed == "null":
        referer = request.headers.get("referer")
        if not referer:
            return False
        parts = urlsplit(referer)
        claimed = f"{parts.scheme}://{parts.netloc}"
    if public_url:
        return claimed.lower() == public_url
    host = request.headers.get("host")
    return host is not None and claimed.lower() == f"{request.url.scheme}://{host}".lower()


@dataclass(frozen=True)
class Principal:
    """Who sent the request."""

    id: int
    username: str
    is_admin: bool = False
    # The API token the request signed in with; None for a password's token or a session.
    api_token_id: int | None = None


def current_user(request: Request, rt: RuntimeDep) -> Principal:
    signed_in = credential(request)
    if signed_in is None:
        raise ChuteError(Problem.NOT_AUTHENTICATED)
    token, kind = signed_in
    identity = None
    if kind is TokenKind.BEARER and rt.oidc is not None and looks_like_jwt(token):
        # Before any database work: a refused token costs no transaction.
        identity = rt.oidc.verify(token)
    # A session of its own, closed here: the upload route must not hold a
    # transaction open while a chunk streams in.
    with rt.sessions() as session:
        user: User | None
        api_token_id = None
        if identity is not None:
            user = user_for_identity(session, identity)
        elif kind is TokenKind.BEARER and is_api_token(token):
            # Only as a bearer token: a cookie is looked up among sessions, where no API
            # token is, so an API token is never a browser's session.
            found = user_for_api_token(session, token, utcnow())
            if found is None:
                raise ChuteError(Problem.API_TOKEN_REFUSED)
            user, api_token_id = found
        else:
            user = user_for_token(session, token, kind, utcnow())
        if user is None:
            raise ChuteError(Problem.NOT_AUTHENTICATED)
        if user.disabled_at is not None:  # only a provider's token gets here so
            raise ChuteError(Problem.USER_DISABLED)
        principal = Principal(user.id, user.username, user.is_admin, api_token_id)
    if (
        kind is TokenKind.SESSION
        and request.method not in SAFE_METHODS
        and not _same_origin(request, rt.settings.public_url)
    ):
        raise ChuteError(Problem.FOREIGN_ORIGIN)
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


def admin_user(user: CurrentUser) -> Principal:
    if not user.is_admin:
        raise ChuteError(Problem.ADMIN_ONLY)
    return user


AdminUser = Annotated[Principal, Depends(admin_user)]

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import OAuth2PasswordRequestForm

from chute.api.deps import (
    SESSION_COOKIE,
    CurrentUser,
    RuntimeDep,
    SessionDep,
    client_address,
    credential,
    is_https,
)
from chute.api.schemas import LoginBody, Me, TokenAnswer
from chute.auth.service import issue_token, revoke_token, sign_in
from chute.auth.throttle import SigninLimits
from chute.db.models import TokenKind, User, utcnow
from chute.upload.quota import usage_of

router = APIRouter(prefix="/api/auth", tags=["auth"])


def _sign_in(request: Request, session: SessionDep, rt: RuntimeDep, name: str, pw: str) -> User:
    return sign_in(
        session,
        name,
        pw,
        address=client_address(request),
        limits=SigninLimits.of(rt.settings),
        now=utcnow(),
    )


@router.post("/token")
def token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    request: Request,
    session: SessionDep,
    rt: RuntimeDep,
) -> TokenAnswer:
    user = _sign_in(request, session, rt, form.username, form.password)
    ttl = rt.settings.token_ttl
    return TokenAnswer(
        access_token=issue_token(session, user, TokenKind.BEARER, ttl), expires_in=ttl
    )


@router.post("/login")
def login(
    body: LoginBody, request: Request, response: Response, session: SessionDep, rt: RuntimeDep
) -> Me:
    user = _sign_in(request, session, rt, body.username, body.password)
    ttl = rt.settings.session_ttl
    response.set_cookie(
        SESSION_COOKIE,
        issue_token(session, user, TokenKind.SESSION, ttl),
        max_age=ttl,
        httponly=True,
        samesite="strict",
        secure=is_https(request, rt.settings.public_url),
        path="/",
    )
    return _me(session, rt, user.id, user.username, user.is_admin)


def _me(session: SessionDep, rt: RuntimeDep, user_id: int, name: str, admin: bool) -> Me:
    usage = usage_of(session, rt.settings, user_id)
    return Me(
        id=user_id,
        username=name,
        is_admin=admin,
        quota_bytes=usage.quota,
        used_bytes=usage.stored,
        reserved_bytes=usage.reserved,
    )


@router.post("/logout", status_code=204)
def logout(request: Request, user: CurrentUser, session: SessionDep, rt: RuntimeDep) -> Response:
    """End what the request signed in with, on the server: its bearer token, or its
    browser session (and then the browser is told to forget the cookie)."""
    response = Response(status_code=204)
    signed_in = credential(request)
    if signed_in is None:  # current_user let it through, so this cannot happen
        return response
    secret, kind = signed_in
    revoke_token(session, secret, kind)
    if kind is TokenKind.SESSION:
        response.delete_cookie(
            SESSION_COOKIE,
            path="/",
            httponly=True,
            samesite="strict",
            secure=is_https(request, rt.settings.public_url),
        )
    return response


@router.get("/me")
def me(user: CurrentUser, session: SessionDep, rt: RuntimeDep) -> Me:
    return _me(session, rt, user.id, user.username, user.is_admin)

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import OAuth2PasswordRequestForm

from chute.api.deps import SESSION_COOKIE, CurrentUser, RuntimeDep, SessionDep
from chute.api.schemas import LoginBody, Me, TokenAnswer
from chute.auth.service import authenticate, issue_token, revoke_token
from chute.db.models import TokenKind

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post("/token")
def token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], session: SessionDep, rt: RuntimeDep
) -> TokenAnswer:
    user = authenticate(session, form.username, form.password)
    ttl = rt.settings.token_ttl
    return TokenAnswer(
        access_token=issue_token(session, user, TokenKind.BEARER, ttl), expires_in=ttl
    )


@router.post("/login")
def login(
    body: LoginBody, request: Request, response: Response, session: SessionDep, rt: RuntimeDep
) -> Me:
    user = authenticate(session, body.username, body.password)
    ttl = rt.settings.session_ttl
    response.set_cookie(
        SESSION_COOKIE,
        issue_token(session, user, TokenKind.SESSION, ttl),
        max_age=ttl,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return Me(id=user.id, username=user.username)


@router.post("/logout", status_code=204)
def logout(request: Request, user: CurrentUser, session: SessionDep) -> Response:
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        revoke_token(session, secret)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/me")
def me(user: CurrentUser) -> Me:
    return Me(id=user.id, username=user.username)

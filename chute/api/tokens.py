"""API token routes: a user's tokens for scripts and pipelines (`chute.auth.tokens`)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from chute.api.deps import CurrentUser, SessionDep
from chute.auth import tokens
from chute.db.models import ApiToken, utcnow
from chute.errors import ChuteError, Problem

router = APIRouter(prefix="/api/tokens", tags=["tokens"])


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Documented here, checked by the service (`tokens.check_name`), in its own words.
    name: str = Field(json_schema_extra={"minLength": 1, "maxLength": tokens.NAME_MAX})
    # At most one of the two; neither: the token never expires.
    expires_in_days: StrictInt | None = Field(None, ge=1, le=tokens.MAX_LIFETIME.days)
    expires_at: datetime | None = Field(None, description="With its UTC offset, in the future.")


class TokenPublic(BaseModel):
    id: int
    name: str
    created_at: datetime
    expires_at: datetime | None
    expired: bool
    # Written at most once a minute: a token in use shows a time up to a minute old.
    last_used_at: datetime | None

    @classmethod
    def of(cls, token: ApiToken, now: datetime) -> TokenPublic:
        return cls(
            id=token.id,
            name=token.name,
            created_at=token.created_at,
            expires_at=token.expires_at,
            expired=token.expires_at is not None and token.expires_at <= now,
            last_used_at=token.last_used_at,
        )


class TokenWithSecret(TokenPublic):
    # Shown in this answer only: the server keeps its SHA-256.
    secret: str


class TokenList(BaseModel):
    items: list[TokenPublic]


@router.post("", status_code=201)
def create_token(body: TokenCreate, user: CurrentUser, session: SessionDep) -> TokenWithSecret:
    if user.api_token_id is not None:
        raise ChuteError(Problem.TOKEN_FROM_TOKEN)
    now = utcnow()
    expires_at = tokens.expiry(
        now, expires_in_days=body.expires_in_days, expires_at=body.expires_at
    )
    made = tokens.create(session, user.id, body.name, expires_at, now)
    return TokenWithSecret(**TokenPublic.of(made.token, now).model_dump(), secret=made.secret)


@router.get("")
def list_tokens(user: CurrentUser, session: SessionDep) -> TokenList:
    now = utcnow()
    return TokenList(items=[TokenPublic.of(t, now) for t in tokens.owned(session, user.id)])


@router.delete("/{token_id}", status_code=204)
def revoke_token(token_id: int, user: CurrentUser, session: SessionDep) -> Response:
    tokens.revoke(session, user.id, token_id)
    return Response(status_code=204)

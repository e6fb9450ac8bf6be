"""API tokens: named credentials a user makes for scripts and pipelines (DESIGN §8).

A token's secret is `chute_` and 43 URL-safe characters (32 random bytes). The prefix
tells the authentication path which table to look in, and lets secret scanners spot a
token pasted where it should not be. The secret is shown once, when made; the database
keeps its SHA-256 only (256 random bits: a fast hash is enough). Revoking deletes the row.

A token speaks for its user, with one exception the routes enforce: it cannot make
another token (`chute.api.tokens`), so a leaked token cannot outlive its own revocation
or expiry through a successor.

Its last use is written at most once a `LAST_USE_STEP`, by a conditional UPDATE: an
upload is many requests, and on SQLite every write takes the database's lock.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from chute.db.jobs import MAX_ID
from chute.db.models import ApiToken, User
from chute.errors import ChuteError, Problem, invalid

PREFIX = "chute_"
NAME_MAX = 100
# The longest life a token may be given, and the most live tokens a user may hold.
MAX_LIFETIME = timedelta(days=3650)
MAX_TOKENS = 100
# A token's last use is written when the one recorded is older than this.
LAST_USE_STEP = timedelta(seconds=60)
# How long an expired token stays listed (as expired) before the sweeper deletes it.
KEEP_EXPIRED = timedelta(days=30)


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def is_api_token(secret: str) -> bool:
    """Whether a bearer value is shaped as an API token (by its prefix)."""
    return secret.startswith(PREFIX)


def digest(secret: str) -> str:
    """What the database keeps of a token's, or a session's, secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def check_name(name: str) -> str:
    """The name, trimmed: 1 to `NAME_MAX` printable characters; else a 422."""
    name = name.strip()
    if not name or len(name) > NAME_MAX or not name.isprintable():
        raise invalid(
            f"name: a token's name is 1 to {NAME_MAX} printable characters (no control characters)."
        )
    return name


def expiry(
    now: datetime, *, expires_in_days: int | None = None, expires_at: datetime | None = None
) -> datetime | None:
    """When a token made `now` expires: in `expires_in_days`, at `expires_at`, or never
    (neither given). Both given, a time already past, or one beyond `MAX_LIFETIME` → 422."""
    days = MAX_LIFETIME.days
    if expires_in_days is not None and expires_at is not None:
        raise invalid("Give expires_in_days or expires_at, not both.")
    if expires_in_days is not None:
        if not 1 <= expires_in_days <= days:
            raise invalid(f"expires_in_days: a token expires in 1 to {days} days.")
        return now + timedelta(days=expires_in_days)
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise invalid("expires_at: give a time with its UTC offset (e.g. ...Z).")
        if expires_at <= now:
            raise invalid("expires_at: the time has passed; give one in the future.")
        if expires_at > now + MAX_LIFETIME:
            raise invalid(f"expires_at: a token expires within {days} days.")
        return expires_at
    return None


@dataclass(frozen=True)
class NewToken:
    """A token just made, with its secret: the only time the secret is at hand."""

    token: ApiToken
    secret: str


def create(
    session: Session, user_id: int, name: str, expires_at: datetime | None, now: datetime
) -> NewToken:
    """A new token for the user (name checked; `expiry` gives `expires_at`). Commits.
    409 when the user already holds `MAX_TOKENS` tokens that have not expired."""
    name = check_name(name)
    live = session.scalar(
        select(func.count())
        .select_from(ApiToken)
        .where(
            ApiToken.user_id == user_id,
            or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now),
        )
    )
    if (live or 0) >= MAX_TOKENS:
        raise ChuteError(Problem.TOO_MANY_TOKENS, limit=MAX_TOKENS)
    secret = new_secret()
    token = ApiToken(
        user_id=user_id,
        name=name,
        token_hash=digest(secret),
        created_at=now,
        expires_at=expires_at,
    )
    session.add(token)
    session.commit()
    return NewToken(token, secret)


def owned(session: Session, user_id: int) -> list[ApiToken]:
    """The user's tokens, oldest first, expired ones included (until revoked)."""
    return list(
        session.scalars(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id))
    )


def revoke(session: Session, user_id: int, token_id: int) -> None:
    """Delete one of the user's tokens: it stops working at once. Another user's token
    answers the same 404 as one that does not exist. Commits."""
    if not 0 < token_id <= MAX_ID:
        raise ChuteError(Problem.TOKEN_NOT_FOUND)
    gone = session.execute(
        delete(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user_id)
    )
    session.commit()
    if gone.rowcount == 0:  # type: ignore[attr-defined]
        raise ChuteError(Problem.TOKEN_NOT_FOUND)


def revoke_secret(session: Session, secret: str) -> None:
    """Delete the token with this secret, if there is one (a sign-out sent with it). Commits."""
    session.execute(delete(ApiToken).where(ApiToken.token_hash == digest(secret)))
    session.commit()


def purge_expired_api_tokens(session: Session, now: datetime) -> int:
    """Delete tokens expired more than `KEEP_EXPIRED` ago; how many went. Commits."""
    gone = session.execute(delete(ApiToken).where(ApiToken.expires_at <= now - KEEP_EXPIRED))
    session.commit()
    return int(gone.rowcount)  # type: ignore[attr-defined]


def user_for_api_token(session: Session, secret: str, now: datetime) -> tuple[User, int] | None:
    """The user a token speaks for and the token's id; None when the secret is unknown
    (or revoked), expired, or its user disabled. Records the use, at most once a
    `LAST_USE_STEP` (then commits)."""
    row = session.execute(
        select(User, ApiToken.id, ApiToken.last_used_at)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(
            ApiToken.token_hash == digest(secret),
            or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now),
            User.disabled_at.is_(None),
        )
    ).one_or_none()
    if row is None:
        return None
    user, token_id, last_used_at = row
    stale = now - LAST_USE_STEP
    if last_used_at is None or last_used_at < stale:
        # Conditional: of several requests at once, one writes; the others change nothing.
        session.execute(
            update(ApiToken)
            .where(
                ApiToken.id == token_id,
                or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < stale),
            )
            .values(last_used_at=now)
        )
        session.commit()
    return user, token_id

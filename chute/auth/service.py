"""Users, sign-in and the tokens behind bearer auth and browser sessions.

A token's secret is shown to its owner once; the database keeps its SHA-256 only
(the secret is 256 random bits, so a fast hash is enough to make a stolen table useless).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chute.auth import throttle
from chute.auth.passwords import hash_password, random_password, verify_password
from chute.auth.tokens import digest, is_api_token, purge_expired_api_tokens, revoke_secret
from chute.db.models import AuthToken, TokenKind, User, utcnow
from chute.errors import ChuteError, Problem

if TYPE_CHECKING:
    from chute.auth.oidc import Identity

USERNAME_MAX = 100
# The password hash of a user no password signs in: the identity provider's users.
NO_PASSWORD = ""
# Room kept after a name taken from a token for a suffix that makes it unique ("-12").
_SUFFIX_ROOM = 12


def check_username(name: str) -> str:
    name = name.strip()
    if not name or len(name) > USERNAME_MAX or not name.isprintable():
        raise ValueError(f"a user name is 1 to {USERNAME_MAX} printable characters")
    return name


def add_user(session: Session, username: str, password: str, *, admin: bool = False) -> User:
    if not password:
        raise ValueError("the password must not be empty")
    user = User(
        username=check_username(username), password_hash=hash_password(password), is_admin=admin
    )
    session.add(user)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise ChuteError(Problem.USER_EXISTS) from None
    return user


def user_for_identity(session: Session, identity: Identity) -> User:
    """The user an identity provider's token speaks for: (issuer, subject), created on
    first sight with no password. Its name comes from the token, made unique with a
    suffix ("alice-2") if a user of that name exists, and is kept when the claim changes.
    Commits when it creates the user."""
    known = select(User).where(
        User.oidc_issuer == identity.issuer, User.oidc_subject == identity.subject
    )
    user = session.scalar(known)
    if user is not None:
        return user
    base = _printable(identity.name) or _printable(identity.subject) or "user"
    for attempt in range(1, 21):
        name = base if attempt == 1 else f"{base}-{attempt}"
        if attempt == 20:  # a crowded name: a random suffix ends the search
            name = f"{base}-{secrets.token_hex(4)}"
        if session.scalar(select(User.id).where(User.username == name)) is not None:
            continue
        user = User(
            username=name,
            password_hash=NO_PASSWORD,
            oidc_issuer=identity.issuer,
            oidc_subject=identity.subject,
        )
        session.add(user)
        try:
            session.commit()
        except IntegrityError:  # another request took the name, or created this user
            session.rollback()
            user = session.scalar(known)
            if user is not None:
                return user
            continue
        return user
    raise ChuteError(Problem.USER_EXISTS)


def _printable(value: str) -> str:
    return "".join(c for c in value if c.isprintable()).strip()[: USERNAME_MAX - _SUFFIX_ROOM]


def ensure_admin(session: Session, keep: Callable[[str], None]) -> bool:
    """Create `admin` with a random password when there is no user; True if this call did.

    `keep` is given the password before the user is committed, to put it where the operator
    will find it. If it raises, no user is created: a password that could not be kept would
    lock everyone out. If another process creates the first user meanwhile, this call
    returns False, and what `keep` kept is not the admin's password.
    """
    if session.scalar(select(User.id).limit(1)) is not None:
        session.rollback()
        return False
    password = random_password()
    keep(password)
    try:
        add_user(session, "admin", password, admin=True)
    except ChuteError:  # another process created it first
        return False
    return True


def authenticate(session: Session, username: str, password: str) -> User:
    user = None
    # A name no user can have is not looked up (PostgreSQL refuses a NUL in a query),
    # but its password is still checked against the dummy hash, to take as long.
    if len(username) <= USERNAME_MAX and username.isprintable():
        user = session.scalar(select(User).where(User.username == username))
    # End the read before the slow hash: on SQLite every transaction holds the write lock.
    session.commit()
    if not verify_password(user.password_hash if user else None, password) or user is None:
        raise ChuteError(Problem.BAD_CREDENTIALS)
    if user.disabled_at is not None:  # said only to who knows the password
        raise ChuteError(Problem.USER_DISABLED)
    return user


def sign_in(
    session: Session,
    username: str,
    password: str,
    *,
    address: str | None,
    limits: throttle.SigninLimits,
    now: datetime,
) -> User:
    """`authenticate`, within the limits on guesses: 429 (before any hash) while the name
    or the address is blocked, 401 for a wrong name or password."""
    keys = throttle.keys_for(username, address)
    throttle.count_attempt(session, keys, limits, now)
    user = authenticate(session, username, password)
    throttle.forgive(session, keys)
    return user


def issue_token(session: Session, user: User, kind: TokenKind, ttl: int) -> str:
    secret = secrets.token_urlsafe(32)
    while is_api_token(secret):  # once in 64**6 draws: that prefix says "API token"
        secret = secrets.token_urlsafe(32)
    session.add(
        AuthToken(
            user_id=user.id,
            kind=kind,
            token_hash=digest(secret),
            expires_at=utcnow() + timedelta(seconds=ttl),
        )
    )
    session.commit()
    return secret


def user_for_token(session: Session, secret: str, kind: TokenKind, now: datetime) -> User | None:
    return session.scalar(
        select(User)
        .join(AuthToken, AuthToken.user_id == User.id)
        .where(
            AuthToken.token_hash == digest(secret),
            AuthToken.kind == kind,
            AuthToken.expires_at > now,
            User.disabled_at.is_(None),
        )
    )


def revoke_token(session: Session, secret: str, kind: TokenKind) -> None:
    """End a bearer token or a session; an API token sent as the bearer token is revoked."""
    if kind is TokenKind.BEARER and is_api_token(secret):
        revoke_secret(session, secret)
        return
    session.execute(
        delete(AuthToken).where(AuthToken.token_hash == digest(secret), AuthToken.kind == kind)
    )
    session.commit()


def purge_expired(session: Session, limits: throttle.SigninLimits, now: datetime) -> int:
    """Delete expired tokens and sessions, API tokens long expired, and sign-in failures
    that no longer count. Returns how many rows went. Commits."""
    tokens = session.execute(delete(AuthToken).where(AuthToken.expires_at <= now))
    session.commit()
    gone = int(tokens.rowcount)  # type: ignore[attr-defined]
    return gone + purge_expired_api_tokens(session, now) + throttle.purge(session, limits, now)

"""Managing users (DESIGN §8): list, create, disable, enable, delete, set a password.

The API (admins only, `chute.api.users`) and `chute user ...` on the server host both
call these. Two rules keep Chute manageable whoever asks:
- an admin cannot disable, demote or delete their own user (`actor_id`; the command line
  has no actor: whoever runs it owns the host);
- the last enabled admin is never disabled, demoted or deleted.
Both are checked with every enabled admin's row locked (`FOR UPDATE`; on SQLite every
transaction takes the write lock up front), so two admins disabling each other at once
cannot leave none.

Disabling deletes the user's sessions and bearer tokens: they stop working at once, and
enabling the user later does not bring back a session that was stolen. Everything else
refuses a disabled user by `users.disabled_at` (passwords, identity-provider tokens, API
tokens). Deleting removes the user's jobs and every byte of them in storage, then the
user's row; the database removes the rest (foreign keys cascade).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from chute.auth.passwords import hash_password
from chute.auth.service import add_user, check_username
from chute.db.jobs import Leftovers, leftovers, remove_stored
from chute.db.models import AuthToken, Job, TusPartial, Upload, User, utcnow
from chute.db.users import get_user
from chute.errors import ChuteError, Problem, invalid
from chute.storage import Storage

log = logging.getLogger(__name__)

# Longer passwords only cost hashing time.
PASSWORD_MAX = 1000


def _note(what: str, user_id: int, actor_id: int | None) -> None:
    """A log line per change (ids only: no name, never a password)."""
    by = f"admin {actor_id}" if actor_id is not None else "the command line"
    log.info("user %s %s by %s", user_id, what, by, extra={"user_id": user_id})


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id)))


def user_named(session: Session, username: str) -> User:
    """The user of that name (the command line names users), or 404."""
    user = session.scalar(select(User).where(User.username == username.strip()))
    if user is None:
        raise ChuteError(Problem.USER_NOT_FOUND)
    return user


def check_password(password: str) -> str:
    if not password:
        raise invalid("password: must not be empty.")
    if len(password) > PASSWORD_MAX:
        raise invalid(f"password: must be at most {PASSWORD_MAX} characters.")
    return password


def create_user(
    session: Session,
    username: str,
    password: str,
    *,
    admin: bool = False,
    actor_id: int | None = None,
) -> User:
    """A new user who signs in with `password`; 422 for a name or password not taken,
    409 if the name is in use. Commits."""
    try:
        username = check_username(username)
    except ValueError as exc:
        raise invalid(f"username: {exc}.") from None
    user = add_user(session, username, check_password(password), admin=admin)
    _note("created" + (" (an admin)" if admin else ""), user.id, actor_id)
    return user


def _enabled_admins(session: Session) -> list[int]:
    """Ids of the enabled admins, their rows locked until the transaction ends."""
    return list(
        session.scalars(
            select(User.id)
            .where(User.is_admin.is_(True), User.disabled_at.is_(None))
            .order_by(User.id)
            .with_for_update()
        )
    )


def _removable(session: Session, user_id: int, actor_id: int | None, action: str) -> User:
    """The user, locked, if they may be disabled, demoted or deleted: not the actor, not
    the last enabled admin (409). The enabled admins are locked first, in the order of their ids,
    then the user: two admins acting on each other take their locks in one order."""
    admins = _enabled_admins(session)
    user = get_user(session, user_id, lock=True)
    if actor_id is not None and user.id == actor_id:
        raise ChuteError(Problem.USER_IS_YOU, action=action)
    if admins == [user.id]:
        raise ChuteError(Problem.LAST_ADMIN, action=action)
    return user


def disable_user(session: Session, user_id: int, *, actor_id: int | None) -> User:
    """Disable a user: no sign-in, session or token of theirs is taken from now on; their
    sessions and bearer tokens are deleted. Disabling a disabled user changes nothing.
    Their jobs stay (a running one finishes). Commits."""
    user = _removable(session, user_id, actor_id, "disable")
    if user.disabled_at is None:
        user.disabled_at = utcnow()
    session.execute(delete(AuthToken).where(AuthToken.user_id == user.id))
    session.commit()
    _note("disabled", user.id, actor_id)
    return user


def enable_user(session: Session, user_id: int, *, actor_id: int | None = None) -> User:
    """Let a disabled user sign in again (with a new session: the old ones are gone)."""
    user = get_user(session, user_id, lock=True)
    user.disabled_at = None
    session.commit()
    _note("enabled", user.id, actor_id)
    return user


def set_admin(session: Session, user_id: int, admin: bool, *, actor_id: int | None) -> User:
    """Make a user an admin, or a plain user again: never oneself nor the last enabled
    admin (409). A user already so changes nothing. Commits."""
    if admin:
        user = get_user(session, user_id, lock=True)
    else:
        user = _removable(session, user_id, actor_id, "demote")
    user.is_admin = admin
    session.commit()
    _note("made an admin" if admin else "made a user", user.id, actor_id)
    return user


def set_password(
    session: Session, user_id: int, password: str, *, actor_id: int | None = None
) -> User:
    """Give a user a new password; their sessions and bearer tokens end (whoever knew the
    old password may hold one). Commits."""
    # Hashed before the row is locked: on SQLite a lock is the whole database's.
    hashed = hash_password(check_password(password))
    user = get_user(session, user_id, lock=True)
    user.password_hash = hashed
    session.execute(delete(AuthToken).where(AuthToken.user_id == user.id))
    session.commit()
    _note("given a new password", user.id, actor_id)
    return user


@dataclass(frozen=True)
class UserFiles:
    """What storage holds of a deleted user: their jobs' folders, and uploads and files
    no job will read (unfinished uploads, parts not yet assembled, tus partial uploads)."""

    job_ids: list[int] = field(default_factory=list)
    leftovers: Leftovers = field(default_factory=Leftovers)


def delete_user(session: Session, user_id: int, *, actor_id: int | None) -> UserFiles:
    """Delete a user and, with their row, all that is theirs in the database: jobs,
    uploads, tokens, webhooks (foreign keys cascade). Returns what storage holds of them,
    for `remove_files`. Each job is locked first, as deleting one job does, so an upload
    recording a part waits and then finds its job gone; a running job's worker finds its
    claim gone at its next heartbeat and stops. Commits."""
    user = _removable(session, user_id, actor_id, "delete")
    jobs = list(
        session.scalars(
            select(Job.id).where(Job.user_id == user.id).order_by(Job.id).with_for_update()
        )
    )
    uploads: list[str] = []
    files: list[str] = []
    for upload in session.scalars(
        select(Upload).join(Job, Job.id == Upload.job_id).where(Job.user_id == user.id)
    ):
        found = leftovers(upload)
        uploads += found.uploads
        files += found.files
    partials = session.scalars(select(TusPartial.storage_id).where(TusPartial.user_id == user.id))
    uploads += list(partials)
    session.delete(user)
    session.commit()
    _note(f"deleted with {len(jobs)} jobs", user_id, actor_id)
    return UserFiles(jobs, Leftovers(uploads, files))


def remove_files(storage: Storage, found: UserFiles) -> None:
    """Remove from storage what `delete_user` found. Idempotent: run it again after a
    failure, nothing is read from the database."""
    remove_stored(storage, found.leftovers, found.job_ids)

"""Finding a user by id, for the services that act on one (admins' user rules, quotas)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from chute.db.models import User
from chute.errors import ChuteError, Problem

# The largest id `users.id` holds (a 32-bit integer on PostgreSQL).
MAX_USER_ID = 2**31 - 1


def get_user(session: Session, user_id: int, *, lock: bool = False) -> User:
    """The user `user_id`, its row locked until the transaction ends with `lock`; 404 if
    there is none (an id out of the column's range included)."""
    if not 0 < user_id <= MAX_USER_ID:
        raise ChuteError(Problem.USER_NOT_FOUND)
    query = select(User).where(User.id == user_id)
    user = session.scalar(query.with_for_update() if lock else query)
    if user is None:
        raise ChuteError(Problem.USER_NOT_FOUND)
    return user

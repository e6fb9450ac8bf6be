"""Users, for admins (DESIGN §8): who may use this Chute."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import select

from chute.api.deps import AdminUser, SessionDep
from chute.db.models import User

router = APIRouter(prefix="/api/users", tags=["users"])


class UserPublic(BaseModel):
    id: int
    username: str
    is_admin: bool
    disabled: bool
    created_at: datetime


@router.get("")
def list_users(admin: AdminUser, session: SessionDep) -> list[UserPublic]:
    users = session.scalars(select(User).order_by(User.id))
    return [
        UserPublic(
            id=user.id,
            username=user.username,
            is_admin=user.is_admin,
            disabled=user.disabled_at is not None,
            created_at=user.created_at,
        )
        for user in users
    ]

"""Users, for admins (DESIGN §8): who may use this Chute. The rules are in
`chute.auth.users`; every route here is for admins only (403 for others)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from chute.api.deps import AdminUser, RuntimeDep, SessionDep
from chute.auth import users
from chute.auth.service import USERNAME_MAX, check_username
from chute.db.models import User

router = APIRouter(prefix="/api/users", tags=["users"])


class UserPublic(BaseModel):
    id: int
    username: str
    is_admin: bool
    disabled: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserPublic:
        return cls(
            id=user.id,
            username=user.username,
            is_admin=user.is_admin,
            disabled=user.disabled_at is not None,
            created_at=user.created_at,
        )


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Printable characters only; spaces around it are dropped.
    username: str = Field(min_length=1, max_length=USERNAME_MAX)
    password: str = Field(min_length=1, max_length=users.PASSWORD_MAX)
    is_admin: bool = Field(False, strict=True)

    @field_validator("username")
    @classmethod
    def _printable(cls, name: str) -> str:
        try:
            return check_username(name)
        except ValueError as exc:
            raise PydanticCustomError("username", str(exc)) from None


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    is_admin: bool = Field(strict=True)


@router.get("")
def list_users(admin: AdminUser, session: SessionDep) -> list[UserPublic]:
    return [UserPublic.of(user) for user in users.list_users(session)]


@router.post("", status_code=201)
def create_user(body: UserCreate, admin: AdminUser, session: SessionDep) -> UserPublic:
    user = users.create_user(
        session, body.username, body.password, admin=body.is_admin, actor_id=admin.id
    )
    return UserPublic.of(user)


@router.patch("/{user_id}")
def update_user(
    user_id: int, body: UserUpdate, admin: AdminUser, session: SessionDep
) -> UserPublic:
    return UserPublic.of(users.set_admin(session, user_id, body.is_admin, actor_id=admin.id))


@router.post("/{user_id}/disable")
def disable_user(user_id: int, admin: AdminUser, session: SessionDep) -> UserPublic:
    return UserPublic.of(users.disable_user(session, user_id, actor_id=admin.id))


@router.post("/{user_id}/enable")
def enable_user(user_id: int, admin: AdminUser, session: SessionDep) -> UserPublic:
    return UserPublic.of(users.enable_user(session, user_id, actor_id=admin.id))


@router.delete("/{user_id}", status_code=204)
def delete_user(user_id: int, admin: AdminUser, session: SessionDep, rt: RuntimeDep) -> Response:
    users.remove_files(rt.storage, users.delete_user(session, user_id, actor_id=admin.id))
    return Response(status_code=204)

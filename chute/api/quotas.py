"""Storage quotas of users, for admins (DESIGN §8): read one, or set an override."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from chute.api.deps import AdminUser, RuntimeDep, SessionDep
from chute.db.users import get_user
from chute.upload import quota

router = APIRouter(prefix="/api/users", tags=["users"])


class QuotaBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # None: CHUTE_USER_QUOTA_BYTES applies; 0: no quota for this user.
    quota_bytes: Annotated[int | None, Field(ge=0, le=quota.MAX_QUOTA)]


class QuotaPublic(BaseModel):
    user_id: int
    username: str
    # The admin's override (None: the deployment's default applies).
    override_bytes: int | None
    # What applies: the override, else the default; None: no quota.
    quota_bytes: int | None
    used_bytes: int
    reserved_bytes: int


def _public(session: SessionDep, rt: RuntimeDep, user_id: int) -> QuotaPublic:
    user = get_user(session, user_id)
    usage = quota.usage_of(session, rt.settings, user.id)
    return QuotaPublic(
        user_id=user.id,
        username=user.username,
        override_bytes=user.quota_bytes,
        quota_bytes=usage.quota,
        used_bytes=usage.stored,
        reserved_bytes=usage.reserved,
    )


@router.get("/{user_id}/quota")
def get_quota(user_id: int, admin: AdminUser, session: SessionDep, rt: RuntimeDep) -> QuotaPublic:
    return _public(session, rt, user_id)


@router.put("/{user_id}/quota")
def set_quota(
    user_id: int, body: QuotaBody, admin: AdminUser, session: SessionDep, rt: RuntimeDep
) -> QuotaPublic:
    """Set the user's own quota (`null`: back to the default). Lowering it below what the
    user holds removes nothing: their next upload that needs room is refused."""
    quota.set_override(session, user_id, body.quota_bytes)
    return _public(session, rt, user_id)

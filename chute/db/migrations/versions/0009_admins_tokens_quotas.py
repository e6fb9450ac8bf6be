"""operations: the admin role, disabled users, per-user quotas and API tokens

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 09:30:00

`users` only gains columns (ADD COLUMN runs in place on SQLite; see 0007 for why a
rebuild is avoided). An upgraded database keeps someone who can manage users: the user
named `admin` (the one the first `chute serve` creates) becomes an admin, or, when no user
has that name, the oldest user.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from chute.db.models import RowId, UTCDateTime

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("users", sa.Column("disabled_at", UTCDateTime(), nullable=True))
    op.add_column("users", sa.Column("quota_bytes", sa.BigInteger(), nullable=True))
    op.create_table(
        "api_tokens",
        sa.Column("id", RowId, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index(op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"], unique=False)
    users = sa.table(
        "users",
        sa.column("id", sa.Integer()),
        sa.column("username"),
        sa.column("is_admin", sa.Boolean()),
    )
    op.execute(users.update().where(users.c.username == "admin").values(is_admin=True))
    any_admin = sa.select(users.c.id).where(users.c.is_admin.is_(True)).limit(1)
    oldest = sa.select(sa.func.min(users.c.id)).scalar_subquery()
    op.execute(
        users.update().where(users.c.id == oldest, ~sa.exists(any_admin)).values(is_admin=True)
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_api_tokens_user_id"), table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_column("users", "quota_bytes")
    op.drop_column("users", "disabled_at")
    op.drop_column("users", "is_admin")

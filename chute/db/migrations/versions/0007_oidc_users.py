"""users of the host application's OpenID Connect provider: (issuer, subject)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 06:30:00

Only statements SQLite runs in place (ADD COLUMN, CREATE INDEX): recreating `users`
there, as a batch migration does for other changes, drops the old table, and with
foreign keys on that deletes every user's jobs and tokens (ON DELETE CASCADE). So the
provider's users get an empty password hash ("no password") rather than a nullable
column, and the pair is unique through an index rather than a table constraint.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("oidc_issuer", sa.String(length=500), nullable=True))
    op.add_column("users", sa.Column("oidc_subject", sa.String(length=255), nullable=True))
    op.create_index("uq_users_oidc", "users", ["oidc_issuer", "oidc_subject"], unique=True)


def downgrade() -> None:
    # The provider's users stay, with their jobs, and still without a password.
    op.drop_index("uq_users_oidc", table_name="users")
    op.drop_column("users", "oidc_subject")
    op.drop_column("users", "oidc_issuer")

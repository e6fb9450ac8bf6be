"""tus uploads: the protocol of an upload, its tus id and metadata, part offsets

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(
            sa.Column("protocol", sa.String(length=8), server_default="chunks", nullable=False)
        )
        batch.add_column(sa.Column("tus_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("tus_metadata", sa.Text(), nullable=True))
        batch.alter_column("total_chunks", existing_type=sa.Integer(), nullable=True)
        batch.create_unique_constraint(op.f("uq_uploads_tus_id"), ["tus_id"])
    with op.batch_alter_table("chunks") as batch:
        batch.add_column(sa.Column("offset", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("chunks") as batch:
        batch.drop_column("offset")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_constraint(op.f("uq_uploads_tus_id"), type_="unique")
        batch.alter_column("total_chunks", existing_type=sa.Integer(), nullable=False)
        batch.drop_column("tus_metadata")
        batch.drop_column("tus_id")
        batch.drop_column("protocol")

"""tus uploads: the protocol of an upload, its tus id and metadata, part offsets, and
partial uploads for concatenation

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from chute.db.models import UTCDateTime

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
        batch.add_column(sa.Column("sources", sa.JSON(), nullable=True))
        batch.alter_column("total_chunks", existing_type=sa.Integer(), nullable=True)
        batch.create_unique_constraint(op.f("uq_uploads_tus_id"), ["tus_id"])
    with op.batch_alter_table("chunks") as batch:
        batch.add_column(sa.Column("offset", sa.BigInteger(), nullable=True))
    op.create_table(
        "tus_partials",
        sa.Column("tus_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("storage_id", sa.String(length=200), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("part_size", sa.BigInteger(), nullable=False),
        sa.Column("bytes_received", sa.BigInteger(), nullable=False),
        sa.Column("parts_received", sa.Integer(), nullable=False),
        sa.Column("tus_metadata", sa.Text(), nullable=True),
        sa.Column("head", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("touched_at", UTCDateTime(), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tus_id"),
        sa.UniqueConstraint("storage_id"),
    )
    op.create_index(op.f("ix_tus_partials_user_id"), "tus_partials", ["user_id"], unique=False)
    op.create_index(
        op.f("ix_tus_partials_touched_at"), "tus_partials", ["touched_at"], unique=False
    )
    op.create_table(
        "tus_partial_parts",
        sa.Column("tus_id", sa.String(length=32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["tus_id"], ["tus_partials.tus_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tus_id", "index"),
    )


def downgrade() -> None:
    op.drop_table("tus_partial_parts")
    op.drop_index(op.f("ix_tus_partials_touched_at"), table_name="tus_partials")
    op.drop_index(op.f("ix_tus_partials_user_id"), table_name="tus_partials")
    op.drop_table("tus_partials")
    with op.batch_alter_table("chunks") as batch:
        batch.drop_column("offset")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_constraint(op.f("uq_uploads_tus_id"), type_="unique")
        batch.alter_column("total_chunks", existing_type=sa.Integer(), nullable=False)
        batch.drop_column("sources")
        batch.drop_column("tus_metadata")
        batch.drop_column("tus_id")
        batch.drop_column("protocol")

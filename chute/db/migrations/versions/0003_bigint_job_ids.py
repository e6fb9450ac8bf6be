"""64-bit job ids on PostgreSQL

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 18:20:00

SQLite's INTEGER primary key already holds 64 bits; PostgreSQL's `integer` (and the
sequence behind `jobs.id`) stops at 2**31 - 1, below the ids the API accepts.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = [("jobs", "id"), ("uploads", "job_id"), ("chunks", "job_id")]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in COLUMNS:
        op.alter_column(
            table, column, type_=sa.BigInteger(), existing_type=sa.Integer(), nullable=False
        )
    op.execute("ALTER SEQUENCE jobs_id_seq AS bigint")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER SEQUENCE jobs_id_seq AS integer")
    for table, column in reversed(COLUMNS):
        op.alter_column(
            table, column, type_=sa.Integer(), existing_type=sa.BigInteger(), nullable=False
        )

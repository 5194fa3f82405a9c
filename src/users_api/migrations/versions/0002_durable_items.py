"""Durable item processing (the row is the queue); ids never reused on SQLite.

Adds the lease and bookkeeping columns of ``items`` (see docs/background-work.md) and
makes SQLite's ``users`` and ``items`` AUTOINCREMENT tables, so that the id of a deleted
row is never handed out again. SQLite cannot add AUTOINCREMENT to a table, so both are
copied into new ones (batch mode); env.py turns foreign keys off while it migrates, or
dropping the old ``users`` would cascade into ``items``. PostgreSQL gets plain ALTERs.

Stop every instance of the previous version before upgrading: its workers do not take
leases, so the two versions must not process items side by side.

Revision ID: 0002_durable_items
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

revision: str = "0002_durable_items"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _new_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_token", sa.String(length=32), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("applications", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error", sa.String(length=200), nullable=True),
    ]


def _batch(table: str, autoincrement: bool) -> AbstractContextManager[BatchOperations]:
    if op.get_bind().dialect.name != "sqlite":
        return op.batch_alter_table(table)
    return op.batch_alter_table(
        table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    )


def upgrade() -> None:
    with _batch("users", autoincrement=True):
        pass
    with _batch("items", autoincrement=True) as batch_op:
        for column in _new_columns():
            batch_op.add_column(column)


def downgrade() -> None:
    with _batch("items", autoincrement=False) as batch_op:
        for column in reversed(_new_columns()):
            batch_op.drop_column(column.name)
    with _batch("users", autoincrement=False):
        pass

"""Serials: a count per table whose rows readers keep in memory.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04

`serials` holds one row per such table (`nodes`, `rollouts`, `workload_states`), moved by
every write of its rows in the same transaction (`gitops.store.serials`): a controller pass
that finds them where they were reads none of those rows again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TABLES = ("nodes", "rollouts", "workload_states")


def upgrade() -> None:
    serials = op.create_table(
        "serials",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("serial", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(serials, [{"name": name, "serial": 0} for name in TABLES])


def downgrade() -> None:
    op.drop_table("serials")

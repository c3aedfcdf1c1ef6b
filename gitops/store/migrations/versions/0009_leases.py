"""Leases: one leader among the control planes sharing a database.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

`leases` holds, per lease name, the holder, the epoch that fences its writes, until when
it holds (by the database's clock) and whether the leader has read its sources and
settled (`gitops.store.lease`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(512), nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.Column("sources_read", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("settled", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_table("leases")

"""The pods' serial: moved by every transaction that deletes pod rows.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

A reader keeping the pods in memory (`gitops.store.podcache`) finds rows inserted and
updated by their `written_at`, but a deleted row leaves no stamp: it counted the table
every second to find deletes, 10 ms at 150,000 pods, in each control plane's agents'
watch and controller. Now it counts only when this serial moved (and at the resync).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    serials = sa.table("serials", sa.column("name", sa.String), sa.column("serial", sa.BigInteger))
    op.bulk_insert(serials, [{"name": "pods", "serial": 0}])


def downgrade() -> None:
    op.execute("DELETE FROM serials WHERE name = 'pods'")

"""The claims' serial: moved by every transaction that writes claim rows.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08

An agent's sync that changed its node's pods is answered with the claims whose volumes
that node keeps. They were read from the store at each such call, a tenth of the process
serving the agents while a rollout went on at 5,000 nodes; now the pod cache keeps them
(`PodCache.claims`), read again when this serial moved.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    serials = sa.table("serials", sa.column("name", sa.String), sa.column("serial", sa.BigInteger))
    op.bulk_insert(serials, [{"name": "claims", "serial": 0}])


def downgrade() -> None:
    op.execute("DELETE FROM serials WHERE name = 'claims'")

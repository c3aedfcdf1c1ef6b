"""PersistentVolumeClaims hold the node of their volume.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

- `claims`: per PersistentVolumeClaim (`namespace/name`) that a pod has used, the node its
  volume is on (a local Docker volume: every later pod of the claim is scheduled there),
  when that was decided, and whether the claim has left git while its StorageClass says
  `reclaimPolicy: Retain` (the volume is kept). A claim that leaves git otherwise loses
  its row, and its node's agent deletes the volume.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "claims",
        sa.Column("id", sa.String(512), primary_key=True),
        sa.Column("node", sa.String(253), nullable=False),
        sa.Column("bound_at", sa.Float, nullable=False),
        sa.Column("released", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_claims_node", "claims", ["node"])

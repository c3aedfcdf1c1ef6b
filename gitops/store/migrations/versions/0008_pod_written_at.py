"""When each pod row was last written, by the database's writer's wall clock.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

`pods.written_at` is set on every insert and update of a pod row (whatever `now` the
writer was given), indexed, so that a reader that keeps the pods in memory reads only the
rows written since its last read (`gitops.store.podcache`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pods", sa.Column("written_at", sa.Float, nullable=False, server_default="0"))
    op.create_index("ix_pods_written_at", "pods", ["written_at"])


def downgrade() -> None:
    op.drop_index("ix_pods_written_at", "pods")
    op.drop_column("pods", "written_at")

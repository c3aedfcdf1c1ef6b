"""Nodes say why they are NotReady: their container runtime cannot be reached.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

An agent whose runtime (the Docker engine) cannot be reached keeps heartbeating and says so;
the node is then NotReady with that reason, from `runtime_error_since`, as kubelet reports
the node's runtime condition.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("runtime_error", sa.Text, nullable=False, server_default=""))
    op.add_column("nodes", sa.Column("runtime_error_since", sa.Float, nullable=True))

"""Nodes say why they are NotReady (their container runtime cannot be reached); sources
say why they cannot be read.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

An agent whose runtime (the Docker engine) cannot be reached keeps heartbeating and says so;
the node is then NotReady with that reason, from `runtime_error_since`, as kubelet reports
the node's runtime condition. `source_health` keeps, per source that cannot be read (a
folder removed, a git server unreachable), the error and since when, for the page and
`gitops status`.
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
    op.create_table(
        "source_health",
        sa.Column("source", sa.String(512), primary_key=True),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("since", sa.Float, nullable=False),
        sa.Column("checked_at", sa.Float, nullable=False),
    )

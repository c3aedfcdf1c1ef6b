"""Nodes hold a pod subnet; Services hold their node ports.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

- `nodes.pod_cidr`: the node's slice of the cluster's pod range (`--cluster-cidr`), given
  when it registers and kept while it stays registered, so that its pods' addresses and
  every other node's routes to them survive agent restarts. NULL until given (nodes of an
  older release get theirs when their agent registers again); unique, so that two control
  planes on one PostgreSQL cannot hand one subnet out twice.
- `services.node_ports`: the node port of each port of a NodePort or LoadBalancer Service
  (`{"<port>/<protocol>": node port}`), unique across Services.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("pod_cidr", sa.String(64), nullable=True))
    op.create_index("ix_nodes_pod_cidr", "nodes", ["pod_cidr"], unique=True)
    op.add_column("services", sa.Column("node_ports", sa.JSON, nullable=False, server_default="{}"))

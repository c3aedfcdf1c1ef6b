"""Workload kinds beyond Deployments, and what agents measure of their pods.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

- `workload_states`: what the controller remembers of each Job (pods counted, how it
  ended), CronJob (its runs, the last schedule time) and HorizontalPodAutoscaler (the
  replicas it set, its recent recommendations), as JSON keyed by the object.
- `pod_usage`: per pod, its containers' CPU and memory use as its agent last measured
  them (for autoscalers and `/metrics`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workload_states",
        sa.Column("kind", sa.String(64), primary_key=True),
        sa.Column("namespace", sa.String(253), primary_key=True),
        sa.Column("name", sa.String(253), primary_key=True),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "pod_usage",
        sa.Column("pod", sa.String(512), primary_key=True),
        sa.Column("node", sa.String(253), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("containers", sa.JSON, nullable=False),
    )
    op.create_index("ix_pod_usage_node", "pod_usage", ["node"])

"""Pods hold the status of each of their containers.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

- `pods.containers`: per container of a pod of several (init containers and sidecars
  included), what its agent last reported: state, readiness, restarts, exit code, reason
  (`gitops.model.ContainerStatus`, encoded). Empty for a pod of one container, whose status
  is the pod's own. Pod specs stored by release 0.1 and 0.2 (one container, its fields on
  the spec) are read as they are (`PodSpec.upgrade_encoded`): no rewrite is needed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pods", sa.Column("containers", sa.JSON, nullable=False, server_default="[]"))

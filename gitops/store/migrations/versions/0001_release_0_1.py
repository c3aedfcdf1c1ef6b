"""The schema of release 0.1, the last one without migrations.

Revision ID: 0001
Revises:
Create Date: 2026-12-01

A database made by release 0.1 has these tables already (and no `alembic_version`): each
table that exists is kept, and gains the two columns 0.1 itself added to older databases
at start (`pods.last_log`, `pods.ready_since`). An empty database gets them created.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _tables(metadata: sa.MetaData) -> list[sa.Table]:
    return [
        sa.Table(
            "revisions",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("source", sa.String(512), nullable=False, index=True),
            sa.Column("revision", sa.String(128), nullable=False),
            sa.Column("message", sa.Text, nullable=False),
            sa.Column("author", sa.String(512), nullable=False),
            sa.Column("committed_at", sa.Float, nullable=False),
            sa.Column("received_at", sa.Float, nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("errors", sa.JSON, nullable=False),
            sa.Column("warnings", sa.JSON, nullable=False),
            sa.Column("summary", sa.JSON, nullable=False),
        ),
        sa.Table(
            "objects",
            metadata,
            sa.Column("kind", sa.String(64), primary_key=True),
            sa.Column("namespace", sa.String(253), primary_key=True),
            sa.Column("name", sa.String(253), primary_key=True),
            sa.Column("api_version", sa.String(64), nullable=False),
            sa.Column("body", sa.JSON, nullable=False),
            sa.Column("hash", sa.String(64), nullable=False),
            sa.Column("file", sa.String(1024), nullable=False),
            sa.Column("line", sa.Integer, nullable=False),
            sa.Column("col", sa.Integer, nullable=False),
            sa.Column("revision", sa.String(128), nullable=False),
        ),
        sa.Table(
            "nodes",
            metadata,
            sa.Column("name", sa.String(253), primary_key=True),
            sa.Column("address", sa.String(64), nullable=False),
            sa.Column("cpu_milli", sa.Integer, nullable=False),
            sa.Column("memory_bytes", sa.Integer, nullable=False),
            sa.Column("max_pods", sa.Integer, nullable=False),
            sa.Column("labels", sa.JSON, nullable=False),
            sa.Column("taints", sa.JSON, nullable=False),
            sa.Column("token_hash", sa.String(64), nullable=False),
            sa.Column("registered_at", sa.Float, nullable=False),
            sa.Column("heartbeat_at", sa.Float, nullable=False),
        ),
        sa.Table(
            "pods",
            metadata,
            sa.Column("id", sa.String(512), primary_key=True),
            sa.Column("namespace", sa.String(253), nullable=False, index=True),
            sa.Column("name", sa.String(253), nullable=False),
            sa.Column("owner_kind", sa.String(64), nullable=False),
            sa.Column("owner_namespace", sa.String(253), nullable=False),
            sa.Column("owner_name", sa.String(253), nullable=False),
            sa.Column("template_hash", sa.String(64), nullable=False),
            sa.Column("spec", sa.JSON, nullable=False),
            sa.Column("labels", sa.JSON, nullable=False),
            sa.Column("node", sa.String(253), nullable=True, index=True),
            sa.Column("phase", sa.String(16), nullable=False),
            sa.Column("ready", sa.Boolean, nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("pod_ip", sa.String(64), nullable=False),
            sa.Column("host_ports", sa.JSON, nullable=False),
            sa.Column("restarts", sa.Integer, nullable=False),
            sa.Column("exit_code", sa.Integer, nullable=True),
            sa.Column("container_id", sa.String(128), nullable=False),
            sa.Column("last_log", sa.Text, nullable=False, server_default=""),
            sa.Column("terminating_at", sa.Float, nullable=True),
            sa.Column("ready_since", sa.Float, nullable=False, server_default="0"),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("updated_at", sa.Float, nullable=False),
        ),
        sa.Table(
            "services",
            metadata,
            sa.Column("namespace", sa.String(253), primary_key=True),
            sa.Column("name", sa.String(253), primary_key=True),
            sa.Column("vip", sa.String(64), nullable=False, unique=True),
        ),
        sa.Table(
            "rollouts",
            metadata,
            sa.Column("kind", sa.String(64), primary_key=True),
            sa.Column("namespace", sa.String(253), primary_key=True),
            sa.Column("name", sa.String(253), primary_key=True),
            sa.Column("state", sa.JSON, nullable=False),
        ),
        sa.Table(
            "events",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("time", sa.Float, nullable=False, index=True),
            sa.Column("object", sa.String(512), nullable=False),
            sa.Column("reason", sa.String(64), nullable=False),
            sa.Column("message", sa.Text, nullable=False),
        ),
        sa.Table(
            "previews",
            metadata,
            sa.Column("source", sa.String(512), primary_key=True),
            sa.Column("ref", sa.String(512), primary_key=True),
            sa.Column("base", sa.String(128), nullable=False),
            sa.Column("head", sa.String(128), nullable=False),
            sa.Column("state_version", sa.String(64), nullable=False),
            sa.Column("computed_at", sa.Float, nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("report", sa.JSON, nullable=False),
            sa.Column("markdown", sa.Text, nullable=False),
        ),
    ]


# Columns release 0.1 added to databases of its own earlier builds, with their defaults.
_LATE_COLUMNS = {
    "pods": [
        sa.Column("last_log", sa.Text, nullable=False, server_default=""),
        sa.Column("ready_since", sa.Float, nullable=False, server_default="0"),
    ]
}


def upgrade() -> None:
    bind = op.get_bind()
    present = set(sa.inspect(bind).get_table_names())
    for table in _tables(sa.MetaData()):
        if table.name not in present:
            table.create(bind)
            continue
        columns = {c["name"] for c in sa.inspect(bind).get_columns(table.name)}
        for column in _LATE_COLUMNS.get(table.name, []):
            if column.name not in columns:
                op.add_column(table.name, column)

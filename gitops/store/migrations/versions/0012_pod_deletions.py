"""Pod deletions: a row for each pod row deleted, written by a trigger.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

A reader keeping the pods in memory (`gitops.store.podcache`) finds rows inserted and
updated by their `written_at`; a deleted row left no stamp, so once the pods' serial moved
and the count differed, it read every pod's id (150,000 at the issue's size) to find the
ones gone. While a rollout replaces pods, that was at every read, ten times a second in the
process serving the agents. A trigger now records each delete (`pod_deletions`, with the
wall clock of the statement), so every delete leaves one, whatever statement or release
made it, and the reader reads those since its last read.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

SQLITE_TRIGGER = """
CREATE TRIGGER pods_deleted AFTER DELETE ON pods
BEGIN
    INSERT OR REPLACE INTO pod_deletions (id, deleted_at)
    VALUES (OLD.id, (julianday('now') - 2440587.5) * 86400.0);
END
"""

POSTGRESQL_FUNCTION = """
CREATE FUNCTION gitops_pod_deleted() RETURNS trigger AS $$
BEGIN
    INSERT INTO pod_deletions (id, deleted_at)
    VALUES (OLD.id, extract(epoch FROM clock_timestamp()))
    ON CONFLICT (id) DO UPDATE SET deleted_at = EXCLUDED.deleted_at;
    RETURN OLD;
END
$$ LANGUAGE plpgsql
"""

POSTGRESQL_TRIGGER = """
CREATE TRIGGER pods_deleted AFTER DELETE ON pods
FOR EACH ROW EXECUTE FUNCTION gitops_pod_deleted()
"""


def upgrade() -> None:
    op.create_table(
        "pod_deletions",
        sa.Column("id", sa.String(512), primary_key=True),
        sa.Column("deleted_at", sa.Float, nullable=False),
    )
    op.create_index("ix_pod_deletions_deleted_at", "pod_deletions", ["deleted_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRESQL_FUNCTION)
        op.execute(POSTGRESQL_TRIGGER)
    else:
        op.execute(SQLITE_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS pods_deleted ON pods")
        op.execute("DROP FUNCTION IF EXISTS gitops_pod_deleted()")
    else:
        op.execute("DROP TRIGGER IF EXISTS pods_deleted")
    op.drop_index("ix_pod_deletions_deleted_at", "pod_deletions")
    op.drop_table("pod_deletions")

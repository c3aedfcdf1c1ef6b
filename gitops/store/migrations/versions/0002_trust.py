"""Objects record their source; 64-bit sizes and ids; a meta table; no credentials in names.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

- `objects.source`: the source that declared each object, so that a revision of one
  source prunes only its own objects. Filled in from the newest applied revision that
  wrote each object (release 0.1 kept one desired state for all sources).
- `nodes.cpu_milli`, `nodes.memory_bytes` become BIGINT (on PostgreSQL a node with 2 GiB
  of memory overflowed INTEGER), and so do `revisions.id`, `events.id` on PostgreSQL
  (SQLite's row ids are 64-bit already, and must stay INTEGER to be row ids).
- `meta`: facts about the database, such as the check value of the key that seals its
  Secret values.
- Credentials written into git URLs (`https://user:token@host/...`) are removed from the
  source names kept in revisions, objects and previews.
- The newest revision of every source is marked to be applied again at its next sync:
  release 0.1 let one source's revision prune another's objects, and only a new apply of
  each source's revision brings them back.
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# scheme://userinfo@ -> scheme://***@ (the same rule as gitops.redact.redact_url, frozen here)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def _without_credentials(name: str) -> str:
    return _USERINFO.sub(r"\g<scheme>***@", name)


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"

    op.add_column("objects", sa.Column("source", sa.String(512), nullable=False, server_default=""))
    op.create_index("ix_objects_source", "objects", ["source"])
    bind.execute(
        sa.text(
            "UPDATE objects SET source = COALESCE(("
            " SELECT r.source FROM revisions r"
            " WHERE r.revision = objects.revision AND r.status = 'applied'"
            " ORDER BY r.id DESC LIMIT 1), '')"
        )
    )

    with op.batch_alter_table("nodes") as nodes:  # SQLite: the same storage, declared BIGINT
        nodes.alter_column("cpu_milli", type_=sa.BigInteger, existing_nullable=False)
        nodes.alter_column("memory_bytes", type_=sa.BigInteger, existing_nullable=False)
    if postgres:
        for table in ("revisions", "events"):
            op.alter_column(table, "id", type_=sa.BigInteger, existing_nullable=False)
            sequence = bind.execute(sa.text(f"SELECT pg_get_serial_sequence('{table}', 'id')")).scalar()
            if sequence:
                op.execute(f"ALTER SEQUENCE {sequence} AS BIGINT")

    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )

    revisions = sa.table("revisions", sa.column("id", sa.BigInteger), sa.column("summary", sa.JSON))
    newest = bind.execute(sa.text("SELECT MAX(id) FROM revisions GROUP BY source")).scalars().all()
    for row_id, summary in bind.execute(
        sa.select(revisions.c.id, revisions.c.summary).where(revisions.c.id.in_(newest))
    ):
        marked = {**(summary or {}), "retry": True}
        bind.execute(revisions.update().where(revisions.c.id == row_id).values(summary=marked))

    for table in ("revisions", "objects", "previews"):
        rows = bind.execute(sa.text(f"SELECT DISTINCT source FROM {table}")).scalars().all()  # noqa: S608 - our table names
        for name in rows:
            clean = _without_credentials(name)
            if clean == name:
                continue
            if table == "previews":  # keyed by source: recomputed at the next refresh anyway
                bind.execute(sa.text("DELETE FROM previews WHERE source = :name"), {"name": name})
            else:
                bind.execute(
                    sa.text(f"UPDATE {table} SET source = :clean WHERE source = :name"),  # noqa: S608 - our table names
                    {"clean": clean, "name": name},
                )

"""Alembic's entry point: runs the migrations on the connection `gitops.store.migrate` hands it.

There is no `alembic.ini` and no URL here: the store opens the connection (holding the
migration lock) and passes it in `config.attributes["connection"]`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from gitops.store.tables import Base


def run() -> None:
    connection: Connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()

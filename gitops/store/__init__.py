"""The store: cluster state in SQL (SQLAlchemy; SQLite by default, PostgreSQL by URL).

Desired objects with the revision they came from, revisions (applied or rejected, with
errors), nodes, pods, service addresses and events. Everything else reads and writes state
through `Store`, which hands out frozen `gitops.model` values, never ORM rows.
"""

from gitops.store.store import EventRecord, NodeRecord, PreviewRecord, RevisionRecord, Store, token_digest

__all__ = ["EventRecord", "NodeRecord", "PreviewRecord", "RevisionRecord", "Store", "token_digest"]

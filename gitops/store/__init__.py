"""The store: cluster state in SQL (SQLAlchemy; SQLite by default, PostgreSQL by URL).

Desired objects with the source and revision they came from, revisions (applied or
rejected, with errors), nodes, pods, service addresses and events. Everything else reads
and writes state through `Store`, which hands out frozen `gitops.model` values, never ORM
rows. Secret values are sealed at rest with the cluster's key (`SecretKeys`).
"""

from gitops.store.keys import SecretKeyError, SecretKeys
from gitops.store.store import (
    EventRecord,
    NodeNameTaken,
    NodeRecord,
    PodRangeExhausted,
    PreviewRecord,
    Refused,
    Report,
    RevisionRecord,
    Store,
    token_digest,
)

__all__ = [
    "EventRecord",
    "NodeNameTaken",
    "NodeRecord",
    "PodRangeExhausted",
    "PreviewRecord",
    "Refused",
    "Report",
    "RevisionRecord",
    "SecretKeyError",
    "SecretKeys",
    "Store",
    "token_digest",
]

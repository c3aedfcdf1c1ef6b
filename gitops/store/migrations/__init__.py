"""Alembic migrations of the store's schema; `gitops.store.migrate` runs them at start."""

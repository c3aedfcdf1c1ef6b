"""Sync: manifest sources (git, local folders) into validated revisions in the store.

`sources` reads files from a git branch or a folder; `service` validates each new revision
and applies it atomically, or records it as rejected with its errors.
"""

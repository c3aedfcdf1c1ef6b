"""Digests of Secret values that may leave the server are keyed, never plain hashes.

A plain sha256 of a Secret (or of a pod spec holding its values) lets anyone who sees the
hash test guesses offline: a weak password falls in seconds. So every digest derived from
a Secret value is an HMAC-SHA256 under the cluster's key (`SecretKeys.digest_key`, held by
the server alone). `seal` gives a Secret manifest its keyed `hash` and a keyed digest per
data key (`Manifest.digests`); pod template hashes take Secret values only through those
digests (`gitops.planner.podspec`). Everything here is pure.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any

from gitops.model import Manifest, canonical_json


def digest(key: bytes, value: bytes) -> str:
    """The keyed digest of one Secret value."""
    return hmac.new(key, b"gitops value\0" + value, hashlib.sha256).hexdigest()


def body_digest(key: bytes, body: Mapping[str, Any]) -> str:
    """The keyed hash of a whole Secret manifest (its `Manifest.hash`)."""
    return hmac.new(key, b"gitops secret\0" + canonical_json(body).encode(), hashlib.sha256).hexdigest()


def secret_data(body: Mapping[str, Any]) -> dict[str, bytes]:
    """A Secret body's values by key, decoded (`stringData` wins over `data`, as in Kubernetes)."""
    values: dict[str, bytes] = {}
    data = body.get("data")
    if isinstance(data, Mapping):
        for key, value in data.items():
            values[str(key)] = base64.b64decode(str(value or ""))
    string_data = body.get("stringData")
    if isinstance(string_data, Mapping):
        for key, value in string_data.items():
            values[str(key)] = str("" if value is None else value).encode()
    return values


def seal(manifest: Manifest, key: bytes) -> Manifest:
    """`manifest` with a keyed hash and keyed value digests when it is a Secret; else as is."""
    if manifest.key.kind != "Secret":
        return manifest
    digests = {name: digest(key, value) for name, value in sorted(secret_data(manifest.body).items())}
    return dataclasses.replace(manifest, hash=body_digest(key, manifest.body), digests=digests)


def seal_all(manifests: Sequence[Manifest], key: bytes) -> list[Manifest]:
    return [seal(m, key) for m in manifests]

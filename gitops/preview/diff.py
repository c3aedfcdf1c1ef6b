"""Object-level diff between two sets of manifests, field by field.

Each object is created, changed or deleted; a change lists the leaf fields that differ
(`spec.replicas: 3 -> 5`, `spec.template.spec.containers[0].image: web:1 -> web:2`).
Secret values are never shown: a Secret's `data` / `stringData` entries say only that a
key was added, removed or changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gitops.model import Manifest, ObjectKey, SourceLocation
from gitops.schemas.loader import format_path

Change = Literal["created", "changed", "deleted"]
HIDDEN = "(hidden)"
_SECRET_SECTIONS = ("data", "stringData")


@dataclass(frozen=True)
class FieldChange:
    path: str
    before: str | None  # None: the field is new
    after: str | None  # None: the field was removed


@dataclass(frozen=True)
class ObjectChange:
    key: ObjectKey
    change: Change
    location: SourceLocation
    fields: tuple[FieldChange, ...]


def _leaves(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    if isinstance(value, Mapping) and value:
        for k in sorted(value, key=str):
            yield from _leaves(value[k], (*path, str(k)))
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    else:
        yield path, value


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 200 else text[:197] + "..."


def _hidden(kind: str, path: tuple[str | int, ...]) -> bool:
    return kind == "Secret" and bool(path) and path[0] in _SECRET_SECTIONS


def field_changes(
    kind: str, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> tuple[FieldChange, ...]:
    old = dict(_leaves(before)) if before is not None else {}
    new = dict(_leaves(after)) if after is not None else {}
    changes = []
    for path in sorted(set(old) | set(new), key=lambda p: [str(x) for x in p]):
        if path in old and path in new and old[path] == new[path]:
            continue
        hide = _hidden(kind, path)
        b = (HIDDEN if hide else _show(old[path])) if path in old else None
        a = (HIDDEN if hide else _show(new[path])) if path in new else None
        changes.append(FieldChange(format_path(path), b, a))
    return tuple(changes)


def diff_objects(base: Sequence[Manifest], head: Sequence[Manifest]) -> list[ObjectChange]:
    """What turning `base` into `head` does to each object, in key order."""
    old = {m.key: m for m in base}
    new = {m.key: m for m in head}
    result = []
    for key in sorted(set(old) | set(new)):
        b, a = old.get(key), new.get(key)
        if a is not None and b is not None:
            if a.hash == b.hash and a.hash:
                continue
            fields = field_changes(key.kind, b.body, a.body)
            if fields:
                result.append(ObjectChange(key, "changed", a.location, fields))
        elif a is not None:
            result.append(ObjectChange(key, "created", a.location, field_changes(key.kind, None, a.body)))
        elif b is not None:
            result.append(ObjectChange(key, "deleted", b.location, field_changes(key.kind, b.body, None)))
    return result

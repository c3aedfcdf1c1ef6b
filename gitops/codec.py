"""JSON encoding of the frozen values in `gitops.model`.

The store keeps pod specs as JSON and the agent API sends them over HTTP; both go through
`encode` / `decode` here so the two can never drift. Encoding follows the dataclass fields
and their type hints: tuples become lists, bytes become ``{"b64": ...}``, nested
dataclasses become objects. Decoding rebuilds the exact frozen value; a class whose shape
changed since a release says how to read the older shape (`upgrade_encoded`).
"""

from __future__ import annotations

import base64
import collections.abc
import dataclasses
import functools
import hashlib
import types
import typing
from typing import Any, TypeVar, Union, get_args, get_origin

from gitops.model import ClusterState, canonical_json

T = TypeVar("T")


_SCALARS = frozenset({str, int, float, bool, type(None)})
_FIELDS: dict[type, tuple[str, ...] | None] = {}  # a class -> its dataclass fields' names, or None


def _field_names(cls: type) -> tuple[str, ...] | None:
    names = _FIELDS[cls] = (
        tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None
    )
    return names


def encode(value: Any) -> Any:
    cls = type(value)
    if cls in _SCALARS:  # most values: one set lookup, where the generic checks cost ten
        return value
    names = _FIELDS[cls] if cls in _FIELDS else _field_names(cls)
    if names is not None:
        return {name: encode(getattr(value, name)) for name in names}
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, tuple | list):
        return [encode(v) for v in value]
    if isinstance(value, dict | types.MappingProxyType):
        return {str(k): encode(v) for k, v in value.items()}
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    from gitops import model  # noqa: PLC0415 - resolves the string annotations

    return typing.get_type_hints(cls, vars(model))


def decode(tp: Any, data: Any) -> Any:
    """Rebuild a value of type `tp` from `encode`'s output."""
    origin = get_origin(tp)
    if tp is Any:
        return data
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        upgrade = getattr(tp, "upgrade_encoded", None)
        if upgrade is not None:  # a value encoded by an older release
            data = upgrade(data)
        kwargs = {
            f.name: decode(hints[f.name], data[f.name]) for f in dataclasses.fields(tp) if f.name in data
        }
        return tp(**kwargs)
    if origin in (Union, types.UnionType):
        if data is None:
            return None
        options = [a for a in get_args(tp) if a is not type(None)]
        return decode(options[0], data)
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], v) for v in data)
        return tuple(decode(a, v) for a, v in zip(args, data, strict=True))
    if origin is typing.Literal:
        return data
    if tp is bytes:
        return base64.b64decode(data["b64"])
    supertype = getattr(tp, "__supertype__", None)  # NewType
    if supertype is not None:
        return decode(supertype, data)
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        return dict(data)
    return data


def decode_as(cls: type[T], data: Any) -> T:
    result: T = decode(cls, data)
    return result


def state_version(state: ClusterState) -> str:
    """A short content hash of what a control-loop pass decides from (not log tails,
    restart counts or heartbeat times, which change nothing a pass does)."""
    h = hashlib.sha256()
    for m in sorted(state.desired, key=lambda m: m.key):
        h.update(f"d {m.key} {m.hash}\n".encode())
    for p in sorted(state.pods, key=lambda p: p.id):
        fields = (p.id, p.template_hash, p.node, p.phase, p.ready, p.ready_since, p.terminating_at)
        h.update(f"p {fields} {p.created_at}\n".encode())
    for n in sorted(state.nodes, key=lambda n: n.name):
        h.update(f"n {canonical_json(encode(n))} {state.not_ready_since.get(n.name)}\n".encode())
    for key in sorted(state.rollouts):
        h.update(f"r {key} {canonical_json(encode(state.rollouts[key]))}\n".encode())
    for kind, states in (("j", state.jobs), ("c", state.crons), ("s", state.scales)):
        for key in sorted(states):
            h.update(f"{kind} {key} {canonical_json(encode(states[key]))}\n".encode())
    return h.hexdigest()[:16]

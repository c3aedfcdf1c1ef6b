"""A list sent as edits of one the receiver holds already.

An agent holds every Service's endpoints. When one pod of a Service of 1,000 moves, sending
the Service whole sends 999 endpoints the agent has (230 KB to every node); Kubernetes
bounds the same cost by cutting a Service's endpoints into EndpointSlices of 100. Here the
control plane sends the new list as an edit script of the one the agent holds:

- `[a, b]`: the held list's items `a` to `b` (`held[a:b]`), in order;
- anything else (a JSON object): a new item, as it is.

The new list is the script's parts joined in order. A held item is referred to by where it
is, so the script needs no key and no order of the items: whatever order the sender keeps,
the receiver rebuilds it exactly. `script(old, new)` makes one (runs of consecutive held
items, each found by value), `edited(held, script)` applies one, checking each run against
the held list's length (`EditMismatch`: the receiver then asks for the list whole).

A Service goes as edits (`service_edits`) when its ports are those of the one held: its
namespace and name, those of its other fields that changed, and `"edits"` in place of
`endpoints` (a script per port) and `addresses`; `edited_service` makes the Service of it
(the fields not sent as held), equal to the whole one's JSON.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypeVar

from gitops.model import ServiceEndpoints

T = TypeVar("T", bound=Hashable)


class EditMismatch(ValueError):
    """An edit script that does not fit the list held (another one than it was made for)."""


def script(old: Sequence[T], new: Sequence[T], sent: Sequence[Any]) -> list[Any]:
    """`new` as edits of `old`: runs `[a, b]` of `old`'s items where `new` has them in the
    same order, and each item `old` lacks as `sent` has it (`new`'s items as sent, in the
    same order: JSON objects, never a list, which is a run)."""
    where = {item: i for i, item in enumerate(old)}  # (an item twice: either place is the same item)
    edits: list[Any] = []
    run: list[int] | None = None
    for i, item in enumerate(new):
        at = where.get(item)
        if at is None:
            run = None
            edits.append(sent[i])
        elif run is not None and run[1] == at:
            run[1] = at + 1
        else:
            run = [at, at + 1]
            edits.append(run)
    return edits


def edited(held: Sequence[Any], edits: Sequence[Any]) -> list[Any]:
    """The list `edits` (`script`) makes of `held`."""
    new: list[Any] = []
    if not isinstance(edits, list):
        raise EditMismatch(f"an edit script is a list, not {type(edits).__name__}")
    for part in edits:
        if isinstance(part, list):
            if (
                len(part) != 2
                or not all(type(i) is int for i in part)
                or not 0 <= part[0] < part[1] <= len(held)
            ):
                raise EditMismatch(f"run {part!r} of a held list of {len(held)} items")
            new.extend(held[part[0] : part[1]])
        else:
            new.append(part)
    return new


_EDITED = ("endpoints", "addresses")  # a Service's fields sent as edits
_KEY = ("namespace", "name")  # a Service's fields always sent: which Service it is


def service_edits(
    old: ServiceEndpoints, new: ServiceEndpoints, value: Mapping[str, Any], whole: bytes
) -> bytes:
    """`new` (`value`: its JSON, `whole`: as text) as edits of `old` for an agent holding
    `old`, as JSON text: its key and the fields that changed (its VIP, ports and type were
    two thirds of a pod's leaving), and the edits; `whole` when its ports are not those of
    `old`. (Never longer than `whole`: a run stands for at least one item's object, and the
    `"edits"` wrapper for the port objects and the unchanged `ports` left out.)"""
    if len(old.endpoints) != len(new.endpoints) or any(
        o[0] != n[0] for o, n in zip(old.endpoints, new.endpoints, strict=True)
    ):
        return whole
    entry = {
        key: v
        for key, v in value.items()
        if key not in _EDITED and (key in _KEY or getattr(old, key) != getattr(new, key))
    }
    entry["edits"] = {
        "endpoints": [
            script(o[1], n[1], sent[1])
            for o, n, sent in zip(old.endpoints, new.endpoints, value["endpoints"], strict=True)
        ],
        "addresses": script(old.addresses, new.addresses, value["addresses"]),
    }
    return json.dumps(entry, separators=(",", ":")).encode()


def edited_service(held: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """The Service (JSON) that `entry` (`service_edits`, with `"edits"`) makes of the one
    `held`: its fields in `held`'s order."""
    edits = entry["edits"]
    ports = held.get("endpoints") or []
    if (
        not isinstance(edits, dict)
        or not isinstance(edits.get("endpoints"), list)
        or len(edits["endpoints"]) != len(ports)
        or not isinstance(edits.get("addresses"), list)
    ):
        raise EditMismatch(f"edits of {len(ports)} ports' endpoints and of the addresses expected")
    service = dict(held)
    service.update((key, v) for key, v in entry.items() if key != "edits")
    service["endpoints"] = [
        [port, edited(endpoints, e)] for (port, endpoints), e in zip(ports, edits["endpoints"], strict=True)
    ]
    service["addresses"] = edited(held.get("addresses") or [], edits["addresses"])
    return service

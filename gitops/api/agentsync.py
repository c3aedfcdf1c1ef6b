"""What an agent's sync call costs when nothing changed: next to nothing.

Every agent calls `POST /agent/v1/nodes/{name}/sync` every second. Most calls report what
the last one reported, and should get back what the last reply held; at thousands of nodes
neither side may cost a write, a full read or a re-encoding per call.

- `AgentReports` remembers, per node, the digest of the last report written and the
  version of the node's pods just after writing it (`PodCache.node_view`, from memory).
  A report with the same digest, against pods nobody wrote since, would change no row
  (a report is applied idempotently): only its heartbeat time is kept, in memory, and
  written for all nodes in one statement at most every `flush_seconds` (the call that
  finds the batch due has it written in a worker thread, and does not wait; a timer on the
  event loop does when no call comes, `AgentReports.overdue`). So is what
  the agent measured of its pods' CPU and memory (`AgentReports.keep_usage`), but only
  for the pods autoscalers scale, the one use a controller pass has for it: agents report
  it every 15 s, and at 150,000 pods writing every pod's was 10,000 rows a second, 40% of
  a quiet server. Every pod's last measurement stays in memory for `/metrics/resource`
  (`AgentReports.measured`), as kubelet serves its own pods', kept as bytes the cyclic
  collector does not track (`Kept`): objects it tracks, replaced every 15 s, were most of
  what its collections walked at 5,000 nodes. Anything
  else (a changed status, a stopped pod, a runtime error, an adoption) is written before
  the call returns; such reports arriving together are written in one transaction
  (`AgentReports.write`).
- An agent that names its report by a digest of its own (`SyncRequest.report_digest`)
  has reports compared by it, and is told when the server holds its report
  (`SyncReply.report_held`): its heartbeats then leave the report out
  (`report_omitted`), as a kubelet sends a pod's status only when it changed. At 30 pods
  a node, parsing the statuses of every heartbeat was a fifth of a quiet server's time.
- `SharedEndpoints` computes every Service's endpoints (and the nodes' pod routes) once per
  change of what they depend on, with a version; all agents share it. Of the Services,
  only those the change moved under are computed and encoded again (`KeptEndpoints`): at
  150,000 pods and 1,500 Services, one pod's move costs 11 ms where all of them cost
  1.9 s (`bench/endpoints.py`). It keeps each
  Service as JSON text, encoded once, and the last `HISTORY` versions: an agent that holds
  one of them gets only the Services that changed since and the names of those removed
  (`SyncRequest.service_deltas`), text encoded once for all the agents holding that
  version, spliced into the reply (`json_object`). Re-encoding 300 Services of 100
  endpoints (6.9 MB) for every agent cost 130 ms a call; 3,000 agents fetching them after
  every move of the endpoints kept the server saturated and its nodes' heartbeats late.
  An agent that also takes edits (`SyncRequest.endpoint_edits`) gets a changed Service
  as edits of the one it holds (`gitops.edits`: the endpoints it has as runs of them, the
  new ones whole; its other fields only if they changed): one pod's move in a Service of 100 endpoints is
  0.3 kB to each agent instead of 21 kB (`bench/endpoints.py`). An agent holding a
  version older than those kept gets the Services changed since whole, as long as the
  moves since are remembered by the keys they changed (`MOVED_KEYS`), and only then every
  Service.
- Every move of the Services sends each agent what changed: at n nodes, n times those
  bytes (as edits, as this release's agents take them). The next move waits until that
  fan-out would have gone at `FANOUT_BYTES_PER_S`
  (at most `MAX_PACE` seconds): a change of one Service's endpoints reaches 3,000 nodes
  within a second or so, while 30,000 pods coming up at once move them less often instead
  of saturating the server (kube-proxy's `minSyncPeriod` bounds the same cost per node).
- A reply carries the version of the node's pods and of the Services; a request names the
  versions it holds, and gets null for what has not moved since.
- To an agent that takes deltas, a long-poll answered for a move of the Services carries
  the same changes (`WatchReply.services_changed`): it applies them with no sync call, so a
  move costs each agent one answer, not an answer and a call.
- A heartbeat of an agent that long-polls, saying what its last report said and holding the
  versions of the last reply, is answered on the event loop from memory (the app's
  `_unchanged`): the token remembered, the digest of the report compared, the versions as
  `NodeWatch` last read them. At 5,000 nodes these are nearly all the calls.
- `NodeWatch` answers agents' long-polls: an agent that holds those versions waits on
  `POST /agent/v1/nodes/{name}/watch` until one moves (or a `gitops logs` request comes
  for it), and then syncs; between changes it syncs only to report a change of its own or
  a heartbeat (`AgentConfig.heartbeat_seconds`), not every second.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import hashlib
import itertools
import json
import marshal
import operator
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from gitops.api.models import MeasuredRow, SyncRequest
from gitops.codec import encode
from gitops.edits import service_edits
from gitops.handover import background, quick_handover
from gitops.loop import Precedence
from gitops.model import (
    ContainerUsage,
    Node,
    NodeName,
    ObjectKey,
    Pod,
    PodId,
    PodUsage,
    ServiceEndpoints,
    pod_changes,
)
from gitops.planner.autoscale import autoscaled
from gitops.planner.services import KeptEndpoints
from gitops.store import Report, Store

log = structlog.get_logger(__name__)

HISTORY = 8  # versions of the Services kept to answer an agent with what changed since its own
# Keys of the Services the moves before those changed, kept (`_Move`) so that an agent whose
# version fell out of `HISTORY` gets the Services changed since whole, not every Service: at
# most this many keys over every move kept. With edits, moves of a few endpoints come every
# second or so, and at 5,000 nodes hollow agents minutes behind fetched every Service (33 MB
# each) again and again (docs/scale.md).
MOVED_KEYS = 100_000
FANOUT_BYTES_PER_S = 100e6  # what the Services' fan-out to every agent may cost the server, in reply bytes
MAX_PACE = 30.0  # seconds: the longest a move of the Services waits for the fan-out of the last one
FULL_EVERY = 300.0  # seconds between computations of every Service's endpoints, moved or not

ServiceKey = tuple[str, str]  # (namespace, name)
# The context the callbacks of agents' watches run in (they read no context variable).
NO_CONTEXT = contextvars.Context()

# A node's measurements as `AgentReports` keeps them: bytes, `marshal`'s of the rows as the
# agent sent them (`SyncRequest.measured`: a tuple per container, `(pod, at, window,
# container, CPU in millicores, memory bytes)`). The cyclic collector does not track bytes.
# It tracks a new tuple until it first walks it: `PodUsage`s and their containers were two
# thirds of what its young collections walked at 5,000 nodes, and then a flat tuple per
# node, made at 333 nodes a second and replacing as many (so counting as nothing towards a
# young collection), waited for the keeper's settle every 2 s, which walked them all: 7 ms
# with every agent's call waiting. marshal's text is made in a few microseconds for 30
# rows, in C; it is kept in this process only (its format is the interpreter's own). The
# rows are grouped per pod only when read back (`_flat`: a scrape of `/metrics/resource`,
# the flush for autoscaled pods): grouped at each call, they were an eighth of the
# replica's event loop at 5,000 nodes (py-spy, docs/scale.md).
Kept = bytes
# What `_flat` reads back: one flat tuple of strings and numbers, each pod's (pod, at,
# window, number of containers) followed by each of its containers' (container, CPU in
# millicores, memory bytes).
Flat = tuple[Any, ...]


class ContainerMeasured(Protocol):
    @property
    def container(self) -> str: ...
    @property
    def cpu_milli(self) -> float: ...
    @property
    def memory_bytes(self) -> int: ...


class PodMeasured(Protocol):
    """One pod's measurement as `keep` reads it: a `PodUsage`, or the agent's request model
    of it as validated (`gitops.api.models.PodUsageModel`), kept without being made into a
    `PodUsage` first (at 30 pods a report, making them was a third of a measuring call's
    time in the server's app)."""

    @property
    def pod(self) -> str: ...
    @property
    def at(self) -> float: ...
    @property
    def window(self) -> float: ...
    @property
    def containers(self) -> Sequence[ContainerMeasured]: ...


def keep(samples: Sequence[PodMeasured]) -> Kept:
    """Measurements sent per pod (an older agent's `SyncRequest.usage`) kept as the same
    figures sent as rows would be. A pod with no containers measured is kept as none, as
    rows say it."""
    rows = [
        (s.pod, s.at, s.window, c.container, c.cpu_milli, c.memory_bytes)
        for s in samples
        for c in s.containers
    ]
    return marshal.dumps(rows)


def keep_rows(rows: list[MeasuredRow]) -> Kept:
    """Measurement rows (`SyncRequest.measured`, one per container, validated: tuples of
    strings and numbers) kept as they came."""
    return marshal.dumps(rows)


def _flat(kept: Kept) -> Flat:
    """The kept rows read back, each pod's containers together, in the order the pods came,
    with the latest of its rows' times and the shortest of their windows."""
    # Text this process made (`keep`, `keep_rows`) from validated figures: never an agent's.
    rows: Sequence[MeasuredRow] = marshal.loads(kept)  # noqa: S302
    pods: dict[str, list[Any]] = {}
    for pod, at, window, container, cpu_milli, memory_bytes in rows:
        flat = pods.get(pod)
        if flat is None:
            pods[pod] = [pod, at, window, 1, container, cpu_milli, memory_bytes]
        else:
            flat[1], flat[2] = max(flat[1], at), min(flat[2], window)
            flat[3] += 1
            flat += (container, cpu_milli, memory_bytes)
    return tuple(itertools.chain.from_iterable(pods.values()))


def kept_measurements(request: SyncRequest) -> Kept | None:
    """What a sync call measured, as kept; None when it carries no measurements."""
    if request.measured is not None:
        return keep_rows(request.measured)
    return None if request.usage is None else keep(request.usage)


def kept_samples(kept: Kept) -> Iterator[PodUsage]:
    flat = _flat(kept)
    return (_kept_sample(flat, i) for i in _kept_starts(flat))


def _kept_starts(flat: Flat) -> Iterator[int]:
    """Where each pod's measurement begins in `flat`."""
    i = 0
    while i < len(flat):
        yield i
        i += 4 + 3 * flat[i + 3]


def _kept_sample(flat: Flat, i: int) -> PodUsage:
    """The pod's measurement that begins at `flat[i]`."""
    pod, at, window, count = flat[i : i + 4]
    i += 4
    containers = tuple(ContainerUsage(*flat[j : j + 3]) for j in range(i, i + 3 * count, 3))
    return PodUsage(pod, at, containers, window=window)


class Measured(Collection[PodUsage]):
    """Every pod's last measurement in the kept texts, by pod (`AgentReports.measured`),
    each `PodUsage` made as it is read: a sorted list of them all was about 60 MiB at
    150,000 pods, made for each scrape of `/metrics/resource`, and the server's peak memory
    was that scrape's. Only the order is made here (a pod's name and where it is, in its
    node's flat tuple read back). Read as often as wanted, it gives the same measurements."""

    def __init__(self, kept: Iterable[Kept]) -> None:
        order = [(flat[i], i, flat) for text in kept for flat in (_flat(text),) for i in _kept_starts(flat)]
        order.sort(key=_first)
        self._order = order

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[PodUsage]:
        for _, i, flat in self._order:
            yield _kept_sample(flat, i)

    def __contains__(self, sample: object) -> bool:
        return any(s == sample for s in self)


_first = operator.itemgetter(0)


@dataclass(frozen=True)
class _Version:
    """One version of the Services as published: each Service's JSON text by key, and the
    routes (the very list: another list is a move of the routes)."""

    services: dict[ServiceKey, bytes]
    routes: list[tuple[str, str, str]]
    values: dict[ServiceKey, ServiceEndpoints]  # each Service's endpoints, as `services` has them


@dataclass(frozen=True)
class _Move:
    """A move of the Services: the version it led to, the keys of the Services it changed,
    added or removed, and whether the routes moved."""

    version: str
    keys: frozenset[ServiceKey]
    routes: bool


@dataclass(frozen=True)
class _Reply:
    """The Services' part of the replies to agents holding one version: every Service
    (`removed` None), or those changed since and the keys removed, as JSON text."""

    services: bytes
    removed: bytes | None
    routes_moved: bool


# JSON text sent as it is: bytes, or a slice of text many replies share (a memoryview).
Part = bytes | memoryview
# A value given as JSON text already (`json_object`): in one part, or in several.
Raw = bytes | list[Part]


def json_object(fields: dict[str, Any], raw: dict[str, Raw]) -> list[Part]:
    """`fields` as a JSON object, with the values of `raw`'s keys given as JSON text already
    (encoded once and shared by many replies), in parts to be sent one after the other
    (`gitops.api.noderoute`): the shared texts go out as they are. Joined into one reply per
    agent, a move of the Services answered to 1,000 agents at once held 1,000 copies of 4 MB
    in the server's write buffers (2.3 GB)."""
    plain = [
        json.dumps(key).encode() + b":" + json.dumps(value, separators=(",", ":")).encode()
        for key, value in fields.items()
        if key not in raw
    ]
    parts: list[Part] = [b"{" + b",".join(plain)]
    comma = b"," if plain else b""
    for key, value in raw.items():
        parts.append(comma + json.dumps(key).encode() + b":")
        parts += value if isinstance(value, list) else (value,)
        comma = b","
    parts.append(b"}")
    return parts


def _array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


class SharedEndpoints:
    """Every Service's endpoints, encoded for agents: computed once per change of what they
    depend on (desired objects, pods, nodes' readiness and addresses) and shared by all
    agents' syncs, with a version that moves when they do. The store is asked whether
    anything moved at most every `ttl` seconds; pods are read through the store's
    `PodCache` (only the rows written since)."""

    def __init__(self, store: Store, clock: Callable[[], float], ttl: float = 0.5) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self._lock = threading.Lock()
        self._checked = float("-inf")
        self._marker: Any = None  # the store's change marker at the last look (`get`)
        self._nodes: tuple[Any, list[Node]] = ((), [])  # the nodes of a `node_places` read
        self._places_at = float("-inf")  # monotonic time of the last `node_places` read
        self._value: list[Any] = []
        self._routes: list[tuple[str, str, str]] = []
        self._wanted_routes = self._routes  # the routes as the store has them now (this list while the same)
        self._routes_at = float("-inf")  # monotonic time the routes given last moved
        # `_routes` as replies carry them (`_routes_json`): a JSON array of [subnet, address],
        # and where each pair begins in it, by the pair's place in `_routes`
        self._pairs = b"[]"
        self._starts: list[int] = []
        self._index: dict[str, int] = {}  # node -> its place in `_routes`
        self._version = ""
        self._texts: dict[ServiceKey, bytes] = {}  # each Service of `_value`, as JSON text
        self._kept = KeptEndpoints()
        self._pods: Sequence[Pod] = ()  # the pods the Services were last computed from
        self._full_at = float("-inf")  # monotonic time every Service was last computed
        # Service -> (its endpoints as last computed, `encode`d, as JSON text, the text's digest)
        self._encoded: dict[ServiceKey, tuple[ServiceEndpoints, Any, bytes, bytes]] = {}
        self._history: dict[str, _Version] = {}  # the last `HISTORY` versions, oldest first
        self._moves: collections.deque[_Move] = collections.deque()  # oldest first (`MOVED_KEYS`)
        self._moves_keys = 0  # keys over `_moves`
        self._moves_made = 0  # moves so far: the newest in `_moves` is this one (counted from 1)
        self._moved: dict[str, int] = {}  # a version in `_moves` -> the last move that led to it
        # (a version held ("": none), as edits) -> what an agent holding it gets
        self._replies: dict[tuple[str, bool], _Reply] = {}
        self._moved_at = float("-inf")  # monotonic time the Services last moved
        self.pace = 0.0  # seconds the next move waits after the last one (its fan-out's cost)

    def routes(self) -> list[tuple[str, str, str]]:
        """(node, pod subnet, node address) of every node holding a subnet: where each
        node's pods are reached from the others (NotReady nodes too: their routes go only
        when they are deleted)."""
        self.get()
        return self._routes

    def version(self) -> str:
        """Moves whenever `get()` or `routes()` would give something else."""
        self.get()
        return self._version

    def cached_version(self, max_age: float) -> str | None:
        """The version as the store was last asked, if that was less than `max_age` seconds
        ago (else None); no read, so the event loop may ask. `NodeWatch` keeps it fresh
        while agents wait."""
        if time.monotonic() - self._checked < max_age:
            return self._version
        return None

    def _routes_json(self, node: str) -> Raw:
        """[pod subnet, node address] of every node holding a subnet but `node` (a node does
        not route its own subnet), as JSON text: encoded once per move of the routes, and
        given to each agent as the slices of it before and after its own pair. Joined for
        each agent, at 5,000 nodes that was 170 KB and 0.23 ms a reply: when the routes
        moved, the watch answered the 5,000 waiting agents at once, and the server held
        500 MiB more for a moment (docs/scale.md)."""
        pairs, starts, at = self._pairs, self._starts, self._index.get(node)
        if at is None:
            return pairs
        if len(starts) == 1:
            return b"[]"
        text = memoryview(pairs)
        if at + 1 < len(starts):  # "[...,p(at-1)," and "p(at+1),...]"
            return [text[: starts[at]], text[starts[at + 1] :]]
        return [text[: starts[at] - 1], b"]"]  # the last: "[...,p(n-2)" and "]"

    def reply_parts(
        self, have: str, node: str, *, deltas: bool, edits: bool = False
    ) -> tuple[str, dict[str, Raw]]:
        """The Services' version now, and the Services' fields of a reply to an agent of `node`
        holding version `have`, as JSON text: nulls when it holds this version; with
        `deltas`, from a version still kept, the Services changed since (`services_changed`,
        each whole, or with `edits` as edits of the one held unless its ports changed:
        `gitops.edits`), the keys of those removed (`services_removed`) and the routes only
        if they moved; else every Service and the routes."""
        self.get()
        with self._lock:
            version = self._version
            if have == version:
                return version, {"services": b"null", "routes": b"null"}
            since = have if deltas and (have in self._history or have in self._moved) else ""
            asked = (since, edits and since in self._history)
            reply = self._replies.get(asked) or self._reply(*asked)
            routes = self._routes_json(node) if reply.routes_moved else b"null"
        if reply.removed is None:
            return version, {"services": reply.services, "routes": routes}
        return version, {
            "services": b"null",
            "services_from": json.dumps(have).encode(),
            "services_changed": reply.services,
            "services_removed": reply.removed,
            "routes": routes,
        }

    def _reply(self, since: str, edits: bool) -> _Reply:
        """What `reply_parts` sends an agent holding version `since` ("": every Service), with
        `edits` or not, kept for the others asking the same until the next move (under
        `_lock`)."""
        old = self._history.get(since) if since else None
        if old is None and since in self._moved:
            keys, routes_moved = self._changed_since(since)
            changed = [text for key, text in self._texts.items() if key in keys]
            removed = [json.dumps(key).encode() for key in sorted(keys) if key not in self._texts]
            reply = _Reply(_array(changed), _array(removed), routes_moved=routes_moved)
        elif old is None:
            reply = _Reply(_array(list(self._texts.values())), None, routes_moved=True)
        else:
            changed = [
                service_edits(old.values[key], *self._encoded[key][:2], text)
                if edits and key in old.values
                else text
                for key, text in self._texts.items()
                if old.services.get(key) is not text
            ]
            removed = [json.dumps(key).encode() for key in old.services if key not in self._texts]
            reply = _Reply(_array(changed), _array(removed), routes_moved=old.routes is not self._routes)
        self._replies[since, edits] = reply
        return reply

    def _changed_since(self, version: str) -> tuple[set[ServiceKey], bool]:
        """The keys of the Services the moves since `version` (one in `_moved`) changed, added
        or removed, and whether the routes moved (under `_lock`)."""
        first = self._moves_made - len(self._moves) + 1  # the oldest move kept
        keys: set[ServiceKey] = set()
        routes = False
        for i in range(self._moved[version] - first + 1, len(self._moves)):
            move = self._moves[i]
            keys |= move.keys
            routes = routes or move.routes
        return keys, routes

    def _remember(self, move: _Move) -> None:
        """Keep `move` as the newest, forgetting the oldest beyond `MOVED_KEYS` (under `_lock`)."""
        self._moves.append(move)
        self._moves_keys += len(move.keys)
        self._moves_made += 1
        self._moved[move.version] = self._moves_made
        while len(self._moves) > 1 and self._moves_keys > MOVED_KEYS:
            oldest = self._moves.popleft()
            self._moves_keys -= len(oldest.keys)
            if self._moved.get(oldest.version) == self._moves_made - len(self._moves):
                del self._moved[oldest.version]

    def routes_every(self) -> float:
        """Seconds at least between two moves of the routes alone: every agent fetches all
        of them when they move, so while nodes join, n nodes would cost n^2 routes a move.
        1 s up to 500 nodes, then a second per 500 more, 10 s at most (Kubernetes'
        route reconciliation period)."""
        return min(10.0, max(1.0, len(self._wanted_routes) / 500))

    def places_every(self) -> float:
        """Seconds at least between two reads of the nodes' places (`node_places`): every
        `ttl` up to 1,250 nodes, then longer with the nodes, 2 s at most. At 5,000 nodes a
        read is 5,000 rows made into tuples, 5% of the server's interpreter twice a second
        while pods come up. A node's readiness moves after a 40-s grace; a new node's route
        is sent at most every `routes_every()` seconds anyway."""
        nodes = len(self._nodes[1])
        return min(2.0, max(self.ttl, nodes / 2500 if nodes > 1250 else 0.0))

    def get(self) -> list[Any]:
        with self._lock:
            if time.monotonic() - self._checked < self.ttl:
                return self._value
            if time.monotonic() - self._moved_at < self.pace:
                # The last move's fan-out to every agent is still to be paid for: the version
                # as published stays current a while longer.
                self._checked = time.monotonic()
                return self._value
            places = self._nodes[0]
            if time.monotonic() - self._places_at >= self.places_every():
                places = self.store.node_places(self.clock())  # (name, address, pod subnet, ready)
                self._places_at = time.monotonic()
            marker = self.store.change_marker()
            texts = self._texts
            moved = marker != self._marker
            # A read that gave a new tuple is compared with the places kept once, and kept
            # whether equal or not, so that the next calls compare it by identity. The nodes'
            # rows read again (at least every minute, `gitops.store.serials.RESYNC`) give the
            # same places in new objects: compared as part of one key with the places of the
            # calls between reads, the two were compared in full at every call until a write
            # moved the marker (5,000 nodes' strings, in C, the interpreter held: 2.4-3.8 ms
            # every second from the agents' watch, the API's event loop waiting).
            if places is not self._nodes[0]:
                # Endpoints read of a node only its address and readiness: the light read has
                # them (decoding every node's row cost 0.45 s at 3,000 nodes, every 0.5 s), and
                # they are made again only when it gives something else (5,000 nodes at each
                # report written were 8% of the server's core while 150,000 pods came up).
                if self._nodes[0] == places:
                    self._nodes = (places, self._nodes[1])
                else:
                    moved = True
                    self._nodes = (
                        places,
                        [
                            Node(NodeName(name), address, ready=ready, pod_cidr=subnet)
                            for name, address, subnet, ready in places
                        ],
                    )
                    wanted = [(name, subnet, address) for name, address, subnet, _ in places if subnet]
                    # The very list given (or wanted already) when the same: `is not` below.
                    for same in (self._routes, self._wanted_routes):
                        if wanted == same:
                            wanted = same
                            break
                    self._wanted_routes = wanted
            if moved:
                texts = self._endpoints(self._nodes[1])
            self._marker = marker
            routes = self._routes
            # Routes alone (a node joined or left) move at most every `routes_every()` seconds;
            # with the endpoints, at once.
            if self._wanted_routes is not routes and (
                texts is not self._texts or time.monotonic() - self._routes_at >= self.routes_every()
            ):
                routes, self._routes_at = self._wanted_routes, time.monotonic()
            if texts is not self._texts or routes is not self._routes or not self._version:
                self._publish(texts, routes, nodes=len(places))
            self._checked = time.monotonic()
            return self._value

    def _endpoints(self, nodes: list[Node]) -> dict[ServiceKey, bytes]:
        """Every Service's JSON text (under `_lock`): `_texts` itself when none moved, else a
        new dict holding the very text kept of each Service that did not. Only the Services
        that pods, nodes or their own objects moved under are computed again
        (`KeptEndpoints`), from the pods that changed since the last call; every Service
        every `FULL_EVERY` seconds, and after an error."""
        pods = self.store.pod_cache.pods()
        whole = time.monotonic() - self._full_at >= FULL_EVERY
        # Without a Service kept, no pod's change matters (a Service that comes finds its
        # pods among all of them): no walk of 150,000 pods, no old pods held.
        changed, _, swapped = pod_changes(self._pods, pods) if self._kept.keeps else ([], None, [])
        try:
            services = self._kept.update(
                self.store.desired(),
                self.store.vips(),
                pods,
                nodes,
                self.store.node_ports(),
                changed=None if whole else changed + swapped,
            )
        except BaseException:
            self._kept, self._pods = KeptEndpoints(), ()  # what it kept may be half updated
            raise
        self._pods = pods if self._kept.keeps else ()
        if whole:
            self._full_at = time.monotonic()
        encoded, texts = {}, {}
        for service in services:
            at = (service.namespace, service.name)
            known = self._encoded.get(at)
            if known is None or known[0] is not service:
                value = encode(service)
                text = json.dumps(value, separators=(",", ":")).encode()
                if known is not None and known[2] == text:  # computed again, the same: kept as it was
                    known = (service, value, known[2], known[3])
                else:
                    known = (service, value, text, hashlib.blake2b(text, digest_size=16).digest())
            encoded[at] = known
            texts[at] = known[2]
        self._encoded = encoded
        self._value = [value for _, value, _, _ in encoded.values()]
        if texts.keys() == self._texts.keys() and all(texts[k] is self._texts[k] for k in texts):
            return self._texts
        return texts

    def _publish(
        self, texts: dict[ServiceKey, bytes], routes: list[tuple[str, str, str]], *, nodes: int
    ) -> None:
        """Make `texts` and `routes` the version agents get (under `_lock`), and pace the next
        move by what this one costs to send every agent: the changes as edits of the last
        version (`gitops.edits`), as this release's agents holding it get them."""
        last, before = self._version, self._texts
        keys = frozenset(
            [k for k, t in texts.items() if before.get(k) is not t] + [k for k in before if k not in texts]
        )
        moved_routes = routes is not self._routes
        if routes is not self._routes:
            pairs = [json.dumps([subnet, address]).encode() for _, subnet, address in routes]
            self._pairs = _array(pairs)
            self._starts = list(itertools.accumulate((len(p) + 1 for p in pairs), initial=1))[:-1]
            self._index = {name: i for i, (name, _, _) in enumerate(routes)}
        self._texts, self._routes = texts, routes
        digest = hashlib.blake2b(digest_size=12)
        for at in texts:  # each Service's text hashed once (`_endpoints`), not at every move of any
            digest.update(self._encoded[at][3])
        digest.update(b"|" + self._pairs)
        # The version names the content: a pod write that moves no endpoint moves nothing.
        self._version = digest.hexdigest()
        self._history.pop(self._version, None)  # content seen before: now the newest again
        self._history[self._version] = _Version(texts, routes, {at: self._encoded[at][0] for at in texts})
        while len(self._history) > HISTORY:
            del self._history[next(iter(self._history))]
        self._remember(_Move(self._version, keys, moved_routes))
        self._replies = {}
        if last == self._version:
            fanout = 0
        elif last in self._history:
            reply = self._reply(last, True)  # (kept: most agents hold the last version)
            fanout = (
                len(reply.services)
                + len(reply.removed or b"")
                + (len(self._pairs) if reply.routes_moved else 0)
            )
        else:
            fanout = sum(map(len, texts.values())) + len(self._pairs)
        self._moved_at = time.monotonic()
        self.pace = min(MAX_PACE, fanout * nodes / FANOUT_BYTES_PER_S)


def report_digest(request: SyncRequest) -> str:
    """What a report says (its statuses and runtime error), digested: equal for equal
    reports, from the request as parsed (nothing is built for it)."""
    said = request.model_dump_json(include={"statuses", "runtime_error"}).encode()
    return hashlib.blake2b(said, digest_size=16).hexdigest()


@dataclass
class _Ticket:
    report: Report
    done: bool = False
    result: bool | Exception = False
    written_at: float = 0.0  # monotonic time its batch was written


class AgentReports:
    """Agents' reports: written when they change something, else only their heartbeat
    time, batched (see the module's docstring). Reports to write that arrive while another
    batch is being written are written together, in one transaction, by whichever of their
    calls gets the turn next (group commit); each call still returns once its own report
    is written."""

    def __init__(self, store: Store, *, flush_seconds: float = 1.0, max_batch: int = 200) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._turn = threading.Lock()  # one batch of reports written at a time
        self._queue: list[_Ticket] = []
        self.batches = 0  # transactions that wrote reports (for figures)
        self._last: dict[str, tuple[str, str]] = {}  # node -> (report digest, pods version after it)
        self._beats: dict[str, float] = {}
        self._usage: dict[str, Kept] = {}  # node -> what its agent measured, to write
        self._emptied: set[str] = set()  # nodes whose measurements this process wrote as none
        # node -> what its agent measured last, every pod's (`measured`), and when (monotonic)
        self._measured: dict[str, Kept] = {}
        self._measured_at: dict[str, float] = {}
        self._owners: tuple[object, frozenset[ObjectKey], dict[PodId, ObjectKey]] = ((), frozenset(), {})
        self._due = float("inf")  # monotonic time the buffered heartbeats are to be written by
        self.skipped = 0  # reports found unchanged (for tests and figures)

    def write(self, report: Report) -> tuple[bool, float]:
        """Write `report` (with the others waiting); whether it changed a pod
        (`Store.heartbeat`), and the monotonic time its batch was written (a read that
        begins after it sees it: one read serves the whole batch)."""
        ticket = _Ticket(report)
        with self._lock:
            self._queue.append(ticket)
        while not ticket.done:
            with self._turn:
                if ticket.done:
                    break
                with self._lock:
                    # At most `max_batch` a transaction: the store's write lock turns over,
                    # and the leader's lease, renewed as a write commits, is renewed between
                    # them (6-s batches at 3,000 nodes let it lapse).
                    batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                self.batches += 1
                try:
                    results: list[bool | Exception] = self.store.heartbeats([t.report for t in batch])
                except Exception as exc:  # every caller of the batch hears of it
                    results = [exc] * len(batch)
                written_at = time.monotonic()
                for waiting, result in zip(batch, results, strict=True):
                    waiting.result, waiting.done, waiting.written_at = result, True, written_at
        if isinstance(ticket.result, Exception):
            raise ticket.result
        return ticket.result, ticket.written_at

    def unchanged(self, node: str, digest: str, pods_version: str) -> bool:
        """Whether the report `digest` is the node's last written one, and its pods were
        not written since (at `pods_version`)."""
        with self._lock:
            return self._last.get(node) == (digest, pods_version)

    def written(self, node: str, digest: str, pods_version: str) -> None:
        """The report `digest` was written; the node's pods are at `pods_version` after it."""
        with self._lock:
            self._last[node] = (digest, pods_version)

    def forget(self, node: str) -> None:
        with self._lock:
            self._last.pop(node, None)

    def keep_usage(self, node: str, kept: Kept) -> None:
        """Keep what the node's agent measured (`keep`, `keep_rows`; no write): written with
        the heartbeats (`flush`); the caller then keeps its heartbeat (`beat`), which says when."""
        with self._lock:
            self._usage[node] = kept
            self._measured[node], self._measured_at[node] = kept, time.monotonic()

    def measured(self, max_age: float = 120.0) -> Measured:
        """Every pod's last measurement its agent reported to this control plane within
        `max_age` seconds (a node gone quiet, or deleted, drops out), by pod."""
        now = time.monotonic()
        with self._lock:
            gone = [node for node, at in self._measured_at.items() if now - at > max_age]
            for node in gone:
                del self._measured[node], self._measured_at[node]
            kept = list(self._measured.values())
        return Measured(kept)

    def _autoscaled(self, usage: dict[str, Kept]) -> dict[str, Sequence[PodUsage]]:
        """Of each node's measurements, those of pods autoscalers scale (none without one:
        the nodes' rows are then only dropped)."""
        targets = autoscaled(self.store.desired())
        if not targets:
            return {node: () for node in usage}
        pods = self.store.pod_cache.pods()
        if self._owners[0] is not pods or self._owners[1] != targets:  # the same tuple: unchanged
            self._owners = (pods, targets, {p.id: p.owner for p in pods if p.owner in targets})
        owners = self._owners[2]
        return {node: [s for s in kept_samples(kept) if s.pod in owners] for node, kept in usage.items()}

    def _write_usage(self, usage: dict[str, Kept]) -> None:
        """Write each node's measurements of autoscaled pods (under `_flushing`). A node
        with none, whose rows this process already wrote as none, costs no statement: with
        no autoscaler, the 333 nodes a second that report at 5,000 nodes were a transaction
        a second deleting nothing. Its rows are deleted the first time (they may be from an
        autoscaler removed since, or from before a restart)."""
        measured = {
            node: kept for node, kept in self._autoscaled(usage).items() if kept or node not in self._emptied
        }
        if not measured:
            return
        self.store.record_usage(measured)
        for node, kept in measured.items():
            if kept:
                self._emptied.discard(node)
            else:
                self._emptied.add(node)

    def beat(self, node: str, now: float) -> bool:
        """Keep the node's heartbeat time (no write); True for the one call that finds the
        buffered times due to be written: it has them written (`flush`), and the calls after
        it keep theirs for the next time due."""
        with self._lock:
            self.skipped += 1
            self._beats[node] = max(now, self._beats.get(node, now))
            if self._due == float("inf"):
                self._due = time.monotonic() + self.flush_seconds
            return self._take_due() == 0.0

    def overdue(self) -> float:
        """Seconds until the kept heartbeats are due to be written (inf: none kept); 0.0 when
        they are due now, and then, as for the call `beat` answers True, the caller has them
        written (`flush`). For a timer, so that they are written when no call comes after
        them: a lone agent's heartbeat waited for its next one, 10 s later."""
        with self._lock:
            return self._take_due()

    def _take_due(self) -> float:
        """`overdue`, under the lock."""
        left = self._due - time.monotonic()  # inf when none are kept
        if left > 0:
            return left
        self._due = float("inf")
        return 0.0

    def flush(self) -> None:
        """Write the buffered heartbeat times (one statement) and measurements (one
        transaction); kept for the next try if it fails."""
        if not self._flushing.acquire(blocking=False):
            return  # another call is writing them
        # In a worker thread, every second at thousands of nodes: the event loop gets the
        # interpreter within 0.5 ms while the statement's rows are made (`gitops.handover`).
        try:
            with quick_handover():
                with self._lock:
                    beats, self._beats, self._due = self._beats, {}, float("inf")
                    usage, self._usage = self._usage, {}
                try:
                    self.store.record_heartbeats(beats)
                    if usage:
                        self._write_usage(usage)
                except Exception as exc:  # kept: written with the next batch
                    log.warning("agent.heartbeats_not_written", nodes=len(beats), error=str(exc))
                    with self._lock:
                        for node, at in beats.items():
                            self._beats[node] = max(at, self._beats.get(node, at))
                        self._usage = {**usage, **self._usage}  # a newer measurement wins
                        self._due = time.monotonic() + self.flush_seconds
        finally:
            self._flushing.release()


# A watch's answer: the `WatchReply` fields as a dict, or, to an agent taking deltas when
# the Services moved, JSON text in parts with the Services changed (`json_object`).
WatchAnswer = dict[str, Any] | list[Part]


@dataclass(eq=False)  # one wait: the same waiter only (`in` and `remove` compared every field)
class _Waiter:
    node: str
    have_pods: str
    have_services: str
    deltas: bool  # the agent takes the Services changed since the version it holds
    edits: bool  # and those changed as edits of the ones it holds (`gitops.edits`)
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[WatchAnswer]
    on_end: Callable[[_Waiter], None]  # called once it is answered or cancelled
    expiry: asyncio.TimerHandle | None = None
    checked: bool = False  # compared once with the state (a new waiter may be behind already)

    def __call__(self, done: object = None) -> None:
        """Its timeout (no argument): answered that nothing changed; or, as the future's done
        callback, its end (answered or cancelled). One callable for both: at 5,000 waiting
        agents a bound method each was two more objects a wait for the collector to walk."""
        if done is None:
            _settle(self.future, _unchanged(self.have_pods, self.have_services))
            return
        if self.expiry is not None:
            self.expiry.cancel()
        self.on_end(self)


class NodeWatch:
    """Long-polls of agents (`POST /agent/v1/nodes/{name}/watch`): each waits until its
    node's pods, the Services (with the routes) or a `gitops logs` request for it differ
    from what it holds, and is answered within `interval` of the change.

    One thread does the watching for every waiting agent. It looks when this process has
    written to the store (`Store.after_write`), at most every `interval` seconds, and every
    `poll` seconds for the writes of other control planes on the database: it reads the
    pods written since its last look (`PodCache`, one indexed query when nothing moved) and
    compares only the waiting nodes whose pods changed (`PodCache.changed_nodes`), or every
    waiting node when the Services' version moved. An agent that begins to wait is compared
    with the state as last read, without reading the store: its versions came from a reply
    of this process, made from that same state (at 5,000 nodes, about 90 watches begin a
    second, and reading at each look put the thread's reads 20 times a second, each holding
    the interpreter the event loop's calls wait for). A waiting agent costs a future, not a
    thread or a database read. While `precedence` is held (the controller deciding or
    writing thousands of pods) it does not look, for `yield_seconds` at most."""

    def __init__(
        self,
        store: Store,
        endpoints: SharedEndpoints,
        logs_pending: Callable[[], set[str]],
        *,
        interval: float = 0.05,
        poll: float = 1.0,
        precedence: Precedence | None = None,
        yield_seconds: float = 60.0,
    ) -> None:
        self.store = store
        self.precedence = precedence or Precedence()
        self.yield_seconds = yield_seconds
        self.endpoints = endpoints
        self.logs_pending = logs_pending
        self.interval = interval
        self.poll = poll
        store.after_write.append(self.poke)
        self._lock = threading.Lock()
        self._waiting: dict[str, list[_Waiter]] = {}
        self._new: list[_Waiter] = []  # waiters since the last look (not compared with the state yet)
        self._arrived = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation = -1
        self._services = ""
        self._poked = False  # this process wrote since the last read
        self._read_at = float("-inf")  # monotonic time the store was last read
        self._watched: dict[str, float] = {}  # node -> monotonic time it last began or ended a wait
        self._closed = False
        self._end = self._ended  # one bound method for every waiter

    def close(self) -> None:
        """The server is stopping: every waiting agent is answered now (nothing changed), and
        so is every later wait, so that no long-poll holds the server's shutdown."""
        with self._lock:
            self._closed = True
            waiters = [w for waiting in self._waiting.values() for w in waiting]
        for waiter in waiters:
            answer = _unchanged(waiter.have_pods, waiter.have_services)
            waiter.loop.call_soon_threadsafe(_settle, waiter.future, answer)
        self._arrived.set()  # the watching thread ends

    def watched(self, node: str, within: float) -> bool:
        """Whether `node`'s agent long-polls: it waits here now or did in the last `within`
        seconds (a change of its pods or the Services then reaches it through its watch)."""
        return node in self._waiting or time.monotonic() - self._watched.get(node, float("-inf")) < within

    async def wait(
        self, node: str, have_pods: str, have_services: str, timeout: float, *, deltas: bool = False
    ) -> WatchAnswer:
        """What moved for `node`, once something has, or after `timeout` seconds (`begin`)."""
        return await self.begin(node, have_pods, have_services, timeout, deltas=deltas)

    def begin(
        self,
        node: str,
        have_pods: str,
        have_services: str,
        timeout: float,
        *,
        deltas: bool = False,
        edits: bool = False,
    ) -> asyncio.Future[WatchAnswer]:
        """A future of what moved for `node` (`changed`, the versions, `logs`), set once
        something has, or after `timeout` seconds with `changed` false; on the running event
        loop. To an agent taking `deltas`, a move of the Services is answered with those
        changed since the version it holds (`json_object`: `WatchAnswer`; with `edits`, as
        `SharedEndpoints.reply_parts` gives them), read in the watching thread. Cancelling
        the future ends the wait (the agent went away).

        A waiting agent is this future, its timer and a callback: no coroutine (the server's
        protocol answers a watch from the future, `gitops.api.onewrite`). The timeout answers
        the waiter itself: `asyncio.wait_for` and `shield` made a future, two callbacks and,
        on the timeout (the answer of a quiet cluster), an exception and its traceback per
        wait, kept for as long as it waited by 5,000 agents: objects every young collection
        walks."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[WatchAnswer] = loop.create_future()
        if self._closed:
            future.set_result(_unchanged(have_pods, have_services))
            return future
        waiter = _Waiter(node, have_pods, have_services, deltas, edits, loop, future, self._end)
        with self._lock:
            self._watched[node] = time.monotonic()
            self._waiting.setdefault(node, []).append(waiter)
            self._new.append(waiter)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="agent-watch", daemon=True)
                self._thread.start()
        self._arrived.set()
        # In one empty context: a copy of the caller's for each callback was another object each.
        waiter.expiry = loop.call_later(timeout, waiter, context=NO_CONTEXT)
        future.add_done_callback(waiter, context=NO_CONTEXT)
        return future

    def _ended(self, waiter: _Waiter) -> None:
        """The waiter was answered or cancelled: it waits no more."""
        with self._lock:
            self._watched[waiter.node] = time.monotonic()
            waiters = self._waiting.get(waiter.node, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiting.pop(waiter.node, None)

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._waiting.values())

    def poke(self) -> None:
        """Something may have moved (this process wrote to the store): read and look soon."""
        self._poked = True
        self._arrived.set()

    def _run(self) -> None:
        background()  # started by the event loop's thread: its short slice is not for this work
        while True:
            # Woken by this process's writes and by new waiters; other processes' writes
            # (control planes sharing the database) are read for every `poll` seconds.
            self._arrived.wait(max(0.0, self._read_at + self.poll - time.monotonic()))
            self._arrived.clear()
            if self._closed:  # the server stopped: a thread looking for no one, forever, is gone too
                return
            # While the controller decides or writes thousands of pods, wait (at most
            # `yield_seconds`): the agents it would wake are to wait for it too, and reading
            # its rows as each batch commits competed with it for the one core
            # (`gitops.loop.Precedence`). Waiting agents' long-polls time out meanwhile.
            self.precedence.wait(self.yield_seconds)
            started = time.monotonic()
            poked, self._poked = self._poked, False  # (a poke from here on wakes the next look)
            read = poked or started - self._read_at >= self.poll
            if read:
                self._read_at = started  # (after a failed read, the next one comes at the next poke or poll)
            try:
                # The API's event loop gets the interpreter within 0.5 ms while a look computes
                # (`gitops.handover`): at the 5-ms default, each of its callbacks waited that long.
                with quick_handover():
                    self.look(read=read)
            except Exception as exc:  # the next look tries again; waiters time out meanwhile
                log.warning("agent.watch_failed", error=str(exc))
            time.sleep(max(0.0, self.interval - (time.monotonic() - started)))  # one look per interval

    def look(self, *, read: bool = True) -> None:
        """Answer the waiters whose node's state moved (one look; the thread repeats it).
        Without `read`, only the waiters new since the last look are compared, with the
        state as last read (and the Services' version as this process last published it)."""
        with self._lock:
            if not self._waiting:
                self._new = []  # (they ended before a look: a watch with no timeout)
                return
        cache = self.store.pod_cache
        # The Services moved since the last read (a sync published them): read, and compare every waiter.
        read = read or self.endpoints.cached_version(float("inf")) != self._services
        changed: set[str] | None = set()
        if read:
            cache.refresh()  # only the rows written since the last read
            generation = cache.generation
            changed = cache.changed_nodes(self._generation) if generation != self._generation else set()
            self._generation = generation
            services = self.endpoints.version()
            every = changed is None or services != self._services
            self._services = services
        else:
            services, every = self._services, False
        logs = self.logs_pending()
        # Only the waiters of nodes whose state moved, and those new since the last look
        # (unless every node's moved): walking all 5,000 waiting agents 20 times a second was
        # a tenth of a quiet server's interpreter.
        with self._lock:
            new, self._new = self._new, []
            if every or changed is None:
                due = [w for waiters in self._waiting.values() for w in waiters]
            else:
                moved = changed | logs
                due = [w for node in moved for w in self._waiting.get(node, ())]
                still = [w for w in new if w.node not in moved and not w.checked]
                due += [w for w in still if w in self._waiting.get(w.node, ())]
        for waiter in due:
            waiter.checked = True
            pods = cache.node_version(waiter.node)
            has_logs = waiter.node in logs
            if pods != waiter.have_pods or services != waiter.have_services or has_logs:
                answer = {
                    "changed": True,
                    "pods_version": pods,
                    "services_version": services,
                    "logs": has_logs,
                }
                deltas = waiter.deltas and services != waiter.have_services
                reply = self._with_deltas(waiter, answer) if deltas else answer
                waiter.loop.call_soon_threadsafe(_settle, waiter.future, reply)

    def _with_deltas(self, waiter: _Waiter, answer: dict[str, Any]) -> WatchAnswer:
        """The answer to an agent taking deltas, for a move of the Services: with those changed
        since the version it holds (text encoded once for every agent holding it), so that
        a move costs it one answer, not an answer and a sync call; as it is when that
        version is no longer kept (its sync call then fetches every Service)."""
        try:
            version, parts = self.endpoints.reply_parts(
                waiter.have_services, waiter.node, deltas=True, edits=waiter.edits
            )
        except Exception as exc:  # its sync call fetches them
            log.warning("agent.watch_deltas_failed", node=waiter.node, error=str(exc))
            return answer
        if version == answer["services_version"] and "services_changed" in parts:
            return json_object(answer, parts)
        return answer


def _unchanged(have_pods: str, have_services: str) -> dict[str, Any]:
    return {"changed": False, "pods_version": have_pods, "services_version": have_services, "logs": False}


def _settle(future: asyncio.Future[WatchAnswer], answer: WatchAnswer) -> None:
    if not future.done():
        future.set_result(answer)

"""Scale: the real control plane against N hollow agents, as kubemark and kwok do it.

    python bench/scale.py [--nodes 1000] [--pods 20000] [--deployments 200] [--db URL]
        [--interval 1.0] [--connections 32] [--settle 10] [--quiet 10] [--timeout 600]
        [--api-replicas 0] [--pin] [--agent-processes 1] [--witnesses 50] [--usage-every 15]
        [--services] [--daemonsets 0] [--agents-nice 0] [--agents-idle] [--witness-slice short]
        [--witness-phases even] [--capture] [--rollout 0]

`gitops serve` runs as a child process (its own interpreter, SQLite in a temporary folder
unless `--db` names a database, a folder source, the API on a free loopback port), exactly
as a user starts it; with `--api-replicas N`, N `gitops serve --api-only` on the same
database too, which the agents then talk to (the leader only syncs and runs the
controller), and with `--pin` each replica alone on a CPU of its own, everything else on
the others (as on machines of their own). `--agent-processes` processes then run `--nodes`
hollow agents between them (`Fleet`): each registers
through `POST /agent/v1/register` with the join token, then calls
`POST /agent/v1/nodes/{name}/sync` every `--interval` seconds, the real agent protocol,
reporting the pods the reply assigns it as Running and ready (an address of its pod
subnet each) and the terminating ones as stopped, without Docker; as the real agent, every
`--usage-every` seconds (15) they also measure each pod's CPU and memory use, sent with
the next sync they make anyway (their heartbeat at the latest). The agents share
`--connections` keep-alive HTTP connections and speak HTTP/1.1 over asyncio streams, so
that they cost little of the machine the control plane runs on.

Beside them, `--witnesses` more agents in a process of their own (`Witness`), each with a
connection of its own, on nodes tainted NoSchedule, sync once a second while long-polling:
their quiet calls' times (`witness_sync_ms_p50` / `_p99` / `_max`) are those an agent alone
on its host sees, end to end. The hollow agents' own (`sync_call_ms_*`) also hold their
process's loop stalls and the waits for a pooled connection. An agent alone on its host
has a CPU for itself; the witness shares this machine's with the control plane and the
hollow agents, so by default (`--witness-slice short`) it asks the kernel to run it as
soon as it wakes (`gitops.handover.short_slice`, as the server's event loop does): with the
default slice it waited up to 4 ms for a CPU behind a controller pass or a kernel thread
(perf's scheduler trace), time no agent on a host of its own waits. `--witness-slice
default` measures it that way still (`witness_slice` in the figures). With `--capture` (root:
a packet socket on loopback), a process of its own also times the witness's sync calls by
the kernel's timestamps of their packets, from the request leaving the witness to the
answer leaving the server (`witness_server_ms_p50` / `_p99` / `_max`, over
`witness_server_calls`): the server's part of the witness's time, without the witness's
own encoding, waits for a CPU and reading. Each of the witness's calls is then split at its
packets (`split_calls`, over `witness_split_calls` matched): the witness's own part
(`witness_own_ms_p50` / `_p99`), and, for its slowest 1% (`witness_slow_calls`, at or over
their p99), the medians of the server's part and of the witness's own
(`witness_slow_server_ms_p50`, `witness_slow_own_ms_p50`): where the tail's time went.
The witness's agents call 1/`--witnesses` of a second apart (`--witness-phases even`), so
that none waits in its one event loop for another's call, as no agent alone on its host
does; `--witness-phases random` draws each one's phase, as the thirteenth to thirty-fourth
sessions' runs did. Either way the bench gives the share of the witness's calls that
overlapped another of them in time (`witness_overlapped_share`), and that share among its
slowest 1% (`witness_slow_overlapped_share`).

Phases, each printed with its time:

1. start: the server answers, and every hollow node is registered and has synced once;
2. commit to bound: `--deployments` Deployments holding `--pods` replicas in all are
   written into the source folder (the commit), and the bench waits until every pod is
   bound to a node (`commit_to_bound_s`) and then Running (`commit_to_running_s`),
   counting in the database; with `--services`, each Deployment has a ClusterIP Service,
   and the bench then waits until each witness agent holds every pod as an endpoint, as
   its proxy would program them (`commit_to_endpoints_s`, from the commit); with
   `--daemonsets`, that many DaemonSets come with them, a pod each on every hollow node
   (`daemonset_pods`, bound and Running with the others; the witness's nodes are tainted);
3. quiet: `--quiet` seconds with nothing to do; the controller's passes in that window
   (its `gitops_controller_pass_seconds` histogram and `gitops_controller_pass_writes`
   gauge at /metrics) give `noop_pass_s` and `noop_pass_writes`, and the agents' calls
   give `sync_call_ms_p50` / `_p99` (as the agents measure them; `server_sync_ms_p50` /
   `_p99` are the bounds of the buckets of its `gitops_agent_sync_seconds` histogram that
   hold them in the server, from the handler's start to its answer), the witness's calls,
   and the servers' CPU per call (their user+system time over the calls answered, the
   leader's and the replicas'), hence how many nodes one core
   keeps in sync at one call per node per second (`nodes_per_core`);
4. rollout (with `--rollout F`): the first F of the Deployments get a new image in one
   commit, and the bench waits until each has only pods of its new template, every pod
   Running (`commit_to_rolled_out_s`), with the servers' CPU (`rollout_cpu_s`), the
   controller's passes (`rollout_passes`, `rollout_pass_s` on average), the fewest pods
   ready at any look, every two seconds (`rollout_fewest_ready`: each Deployment keeps 75% of
   its replicas available), and the agents' calls meanwhile (`rollout_sync_ms_p50` /
   `_p99`, `rollout_sync_failures`, `rollout_sync_deferred`; as the hollow agents time
   them, their processes' own waits included, and in the server, `rollout_server_sync_ms_p50`
   / `_p99`, the bounds of the histogram's buckets that hold them).

The server's cyclic garbage collector's time (its `gitops_gc_seconds_total`) is given for
the pods coming up (`running_gc_s`) and as a share of the quiet window (`quiet_gc_share`);
with the quiet window's collections and their seconds by generation (`quiet_gc_collections`,
`quiet_gc_s`) and the bound of the bucket holding its longest pause (`quiet_gc_longest_s`,
from `gitops_gc_pause_seconds`); the agents' processes' own, in the quiet window, as
`client_gc_share` (the mean share per process; they keep what they hold long out of full
collections as the server does, so that they do not stall the calls they time). With
`--api-replicas`, the first replica's (the one serving agents) are `api_quiet_gc_collections`,
`api_quiet_gc_s` and `api_quiet_gc_longest_s`. `stolen_s` is the CPU time the hypervisor
gave this machine's CPUs to others in the quiet window (`steal` in /proc/stat): a virtual
machine's runs differ with its host's load. `host_python_ms` is how fast the machine ran a
fixed piece of Python just before and just after the window (a process of its own, the
best of 5): the same code ran 0.64-0.89 s for a loop here within a minute, so runs of the
same code differ by that much too, unseen in `stolen_s`.

With `--agents-nice 19` the hollow agents' processes have the lowest priority, and with
`--agents-idle` the kernel's idle policy (`SCHED_IDLE`): they take only the CPU the control
plane and the witness leave them, as agents on hosts of their own would take none of it.
At nice 19 a process may still run out its time slice before one that wakes takes its CPU
(the kernel's EEVDF scheduler); one at the idle policy gives it up at once.

The leader's peak RSS (`VmHWM`) is `rss_mib`, the largest replica's `api_rss_mib`.
Figures are printed, never asserted; the last line is one JSON object with them. The
baseline is the same process's own arithmetic: kube-scheduler at its CI threshold of 810
pods/s would bind `--pods` in pods/810 seconds (`kube_scheduler_s`), printed beside ours as
a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import ctypes
import hashlib
import inspect
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import urlopen

from sqlalchemy import create_engine, text

from gitops.agents.agent import WATCH_SECONDS, changed_services
from gitops.edits import EditMismatch
from gitops.handover import short_slice
from gitops.heap import HEAP
from gitops.loop import Cadence

ROOT = Path(__file__).resolve().parent.parent
KUBE_SCHEDULER_PODS_PER_S = 810.0  # scheduler_perf's CI threshold for basic pods at 5,000 nodes
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_CIDR = "10.128.0.0/9"  # /24 per node: room for 32,768 nodes
MiB = 2**20


# --- a small HTTP/1.1 client ------------------------------------------------------------


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection (the server answers with Content-Length)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes, headers: dict[str, str], *, whole: bool = True
    ) -> tuple[int, bytes]:
        """The answer's status and body; without `whole`, a body longer than `_HEAD` and
        `_TAIL` together comes back as its head and its tail only, the rest read and dropped
        as it arrives (`HollowAgent.answer_of` needs no more)."""
        for attempt in (1, 2):  # a connection the server closed while idle is opened again once
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            head = [
                f"{method} {path} HTTP/1.1",
                f"Host: {self.host}:{self.port}",
                f"Content-Length: {len(body)}",
            ]
            head += [f"{k}: {v}" for k, v in headers.items()]
            self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            try:
                await self.writer.drain()
                status_line = await self.reader.readline()
                if not status_line:
                    raise ConnectionResetError("closed by the server")
                length = 0
                close = False
                while True:
                    line = await self.reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value)
                    elif name == "transfer-encoding":
                        raise HttpError(f"unexpected transfer-encoding {value.strip()}")
                    elif name == "connection" and value.strip().lower() == "close":
                        close = True
                if whole or length <= _HEAD + _TAIL:
                    payload = await self.reader.readexactly(length)
                else:
                    payload = await self._ends(length)
                if close:
                    self.close()
                return int(status_line.split()[1]), payload
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _ends(self, length: int) -> bytes:
        """The first `_HEAD` and the last `_TAIL` bytes of a body of `length`: hollow agents
        holding every move's Services in full (megabytes each, thousands of agents in one
        process) kept this process too busy to time its calls."""
        assert self.reader is not None
        head = await self.reader.readexactly(_HEAD)
        left = length - _HEAD - _TAIL
        while left > 0:
            chunk = await self.reader.read(min(left, 2**20))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(chunk)
        return head + await self.reader.readexactly(_TAIL)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Pool:
    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port = host, port
        self.connections = [Connection(host, port) for _ in range(size)]
        self.free: asyncio.Queue[Connection] = asyncio.Queue()
        for connection in self.connections:
            self.free.put_nowait(connection)

    def local_ports(self) -> list[int]:
        """The local ports of its open connections."""
        return [
            c.writer.get_extra_info("sockname")[1]
            for c in self.connections
            if c.writer is not None and not c.writer.is_closing()
        ]

    async def request(
        self, method: str, path: str, body: bytes, headers: dict[str, str], *, whole: bool = True
    ) -> tuple[int, bytes]:
        conn = await self.free.get()
        try:
            return await conn.request(method, path, body, headers, whole=whole)
        finally:
            self.free.put_nowait(conn)

    async def close(self) -> None:
        while not self.free.empty():
            self.free.get_nowait().close()


# --- hollow agents ----------------------------------------------------------------------


@dataclass
class Calls:
    """What the agents' sync calls took, as they measured them."""

    seconds: list[float] = field(default_factory=list)
    failures: int = 0
    deferred: int = 0  # answered 429: the controller was writing many pods (sent again, as the agent does)
    last_error: str = ""
    # With a list (the witness's): each call's (local port, Unix time it began, and ended),
    # to be split at its packets on the wire (`split_calls`).
    spans: list[tuple[int, float, float]] | None = None

    def reset(self) -> None:
        self.seconds.clear()
        if self.spans is not None:
            self.spans.clear()
        self.failures = 0
        self.deferred = 0


# The small top-level fields of an agent's answer (`HollowAgent.answer_of`).
_PLAIN_FIELDS = (b"pods_version", b"services_version", b"report_held", b"changed", b"logs")
_PLAIN_VALUE = re.compile(rb'"(?:[^"\\]|\\.)*"|null|true|false')
_DECODER = json.JSONDecoder()
_HEAD = 4096  # bytes of an answer that hold its small fields
_TAIL = 2**20  # bytes at the end of an answer that hold its pods


@dataclass
class HollowAgent:
    """A node that runs nothing: it reports its pods Running and ready, its stopped ones gone."""

    name: str
    address: str
    pool: Pool
    join_token: str
    calls: Calls
    token: str = ""
    subnet: ipaddress.IPv4Network | None = None
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # pod id -> the status reported
    stopped: list[str] = field(default_factory=list)
    synced: bool = False
    free_ips: list[str] = field(default_factory=list)
    versions: tuple[str, str] = ("", "")  # the pods' and the Services' versions held
    said: str = ""  # the last report sent
    held: str | None = None  # the digest of its report the server holds (None: it compares none)
    beat: Cadence | None = None  # when its heartbeat is due, at a phase of its own, as the real agent's
    news: bool = False  # the long-poll saw something move (the sync loop is woken: `wake`)
    wake: asyncio.Future[None] | None = None  # the sync loop's wait: done on news or at its next tick
    watch_connection: Connection | None = None  # a long-poll holds a connection of its own
    # What a sync would report now, and its digest, until the pods or the stopped ones
    # change: encoding 30 statuses at every agent's every tick to find them unchanged was
    # a sixth of a core at 5,000 agents, stalling the loop that times the calls.
    reported: tuple[str, str] | None = None
    taints: tuple[dict[str, str], ...] = ()  # a witness's, so that no pod is placed on it
    # As the real agent: its pods' CPU and memory measured every `usage_every` seconds (0:
    # never), sent with the next sync it makes anyway, its heartbeat at the latest
    # (`gitops.agents.usage`).
    usage_every: float = 0.0
    usage_due: float = float("inf")  # monotonic time the next measurement is to be sent
    # Service ("namespace/name") -> the Service as the agent holds it, as a proxy would
    # program it (None: not kept; the witness keeps them, `commit_to_endpoints_s`).
    services: dict[str, dict[str, Any]] | None = None
    held_services = ""  # the version of the Services `services` holds

    def answer_of(self, reply: bytes) -> dict[str, Any]:
        """A sync or watch answer, decoded whole by an agent that holds the Services (the
        witness's, as a proxy would), else without their parts: every hollow agent decoding
        every Service's endpoints (3 MB at 15,000 pods in 150 Services) kept the agents'
        process busy for minutes while the server idled. The fields decoded apart are
        top-level keys no Service's or pod's JSON holds."""
        if self.services is not None:
            decoded: dict[str, Any] = json.loads(reply)
            return decoded
        # The small fields come first, and the pods last (`json_object`): neither is looked
        # for through megabytes of Services (a search for an absent key scans them all).
        head = reply[:_HEAD]
        answer: dict[str, Any] = {}
        for name in _PLAIN_FIELDS:
            at = head.find(b'"' + name + b'":')
            value = _PLAIN_VALUE.match(head, at + len(name) + 3) if at >= 0 else None
            if value is not None:
                answer[name.decode()] = json.loads(value[0])
        at = head.find(b'"services_changed":')
        if at >= 0:
            answer["services_changed"] = head[at + 19 : at + 23] != b"null"
        at = reply.rfind(b'"pods":')
        if at >= 0:
            answer["pods"] = _DECODER.raw_decode(reply[at + 7 :].decode())[0]
        return answer

    def hold_services(self, answer: dict[str, Any], asked: str) -> None:
        """Take the Services of a sync or watch answer to a call that named version `asked`
        (after taking its versions): every one, or those changed since (as edits of those
        held unless their ports changed, applied as the real agent does) and the keys of those removed.
        Changes since another version than the one held (a sync's and a watch's answers
        crossing) leave what it holds, with its version, as the real agent does; edits that
        do not fit leave it holding none, to ask for every one."""
        if self.services is None:
            return
        if answer.get("services") is not None:
            services = answer["services"]
        elif answer.get("services_changed") is None:
            return
        else:
            if answer.get("services_from") != asked or asked != self.held_services:
                self.versions = (self.versions[0], self.held_services)
                return
            try:
                services = changed_services(
                    list(self.services.values()),
                    answer["services_changed"],
                    answer.get("services_removed") or (),
                )
            except EditMismatch:
                self.services, self.held_services, self.versions = {}, "", (self.versions[0], "")
                return
        self.services = {f"{s['namespace']}/{s['name']}": s for s in services}
        self.held_services = self.versions[1]

    def endpoints(self) -> int:
        """The endpoints of every Service's first port it holds."""
        assert self.services is not None
        return sum(len(s["endpoints"][0][1]) for s in self.services.values() if s.get("endpoints"))

    async def register(self) -> None:
        body = json.dumps(
            {
                "node": {
                    "name": self.name,
                    "address": self.address,
                    "cpu_milli": 32000,
                    "memory_bytes": 128 * 2**30,
                    "max_pods": 110,
                    "labels": {
                        "kubernetes.io/hostname": self.name,
                        "topology.kubernetes.io/zone": f"zone-{int(self.name.rsplit('-', 1)[1]) % 10}",
                    },
                    "taints": list(self.taints),
                }
            }
        ).encode()
        status, reply = await self.pool.request(
            "POST",
            "/agent/v1/register",
            body,
            {"Content-Type": "application/json", "X-Gitops-Join-Token": self.join_token},
        )
        if status != 200:
            raise HttpError(f"register {self.name}: {status} {reply[:300]!r}")
        answer = json.loads(reply)
        self.token = answer["token"]
        self.subnet = ipaddress.IPv4Network(answer["pod_cidr"])
        self.free_ips = [str(a) for a in list(self.subnet.hosts())[1:]][::-1]

    async def sync(self) -> None:
        report, digest = self.report()
        fields: dict[str, Any] = {
            "statuses": list(self.pods.values()),
            "stopped": self.stopped,
            "have_pods": self.versions[0],
            "have_services": self.versions[1],
            "service_deltas": True,  # as the real agent: what changed since the version held
            "endpoint_edits": True,  # and a Service as edits of the one held (unless its ports changed)
        }
        if self.held is not None:  # as the real agent: a report the server holds is not sent again
            fields["report_digest"] = digest
        measured = time.monotonic() >= self.usage_due
        if measured and self.pods:
            fields["measured"] = self.usage()
        omitted = self.held == digest and not self.stopped
        wall = time.time()
        start, began = time.perf_counter(), time.monotonic()
        try:
            status, reply = await self._post_sync(
                {**fields, "statuses": [], "report_omitted": True} if omitted else fields
            )
            if omitted and status == 200 and self.answer_of(reply).get("report_held") != digest:
                status, reply = await self._post_sync(fields)  # no longer held: sent whole
        except (OSError, HttpError) as exc:
            self.calls.failures += 1
            self.calls.last_error = f"{type(exc).__name__}: {exc}"
            return
        took = time.perf_counter() - start
        self.calls.seconds.append(took)
        if self.calls.spans is not None:
            ports = self.pool.local_ports()
            if len(ports) == 1:  # (a connection of its own, still open: the call's)
                self.calls.spans.append((ports[0], wall, wall + took))
        if status == 429:  # the control plane is busy writing: the same report goes again next time
            self.calls.deferred += 1
            return
        if status != 200:
            self.calls.failures += 1
            self.calls.last_error = f"{status}: {reply[:300]!r}"
            return
        self.stopped, self.reported = [], None
        while measured and self.usage_due <= began:  # the next pass, at its own phase
            self.usage_due += self.usage_every
        answer = self.answer_of(reply)
        self.said = report
        if self.beat is not None:
            self.beat.done(began)  # a call for news leaves the heartbeat where it was
        self.versions = (answer.get("pods_version", ""), answer.get("services_version", ""))
        self.hold_services(answer, fields["have_services"])
        self.held = answer.get("report_held")
        if answer.get("pods") is not None:
            self.apply(answer)
        self.synced = True

    async def _post_sync(self, fields: dict[str, Any]) -> tuple[int, bytes]:
        return await self.pool.request(
            "POST",
            f"/agent/v1/nodes/{self.name}/sync",
            json.dumps(fields).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
            whole=self.services is not None,
        )

    def apply(self, answer: dict[str, Any]) -> None:
        assigned = set()
        for pod in answer.get("pods") or ():
            pod_id = f"{pod['namespace']}/{pod['name']}"
            if pod.get("terminating_at") is not None:
                self.forget(pod_id)
                self.stopped.append(pod_id)
                self.reported = None
                continue
            assigned.add(pod_id)
            if pod_id not in self.pods:
                self.reported = None
                self.pods[pod_id] = {
                    "pod": pod_id,
                    "phase": "Running",
                    "ready": True,
                    "pod_ip": self.free_ips.pop() if self.free_ips else "",
                    "container_id": secrets.token_hex(8),
                    "template_hash": pod.get("template_hash", ""),
                }
        for pod_id in set(self.pods) - assigned:
            self.forget(pod_id)

    def forget(self, pod_id: str) -> None:
        status = self.pods.pop(pod_id, None)
        if status is not None:
            self.reported = None
            if status["pod_ip"]:
                self.free_ips.append(status["pod_ip"])

    def _wake(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    def usage(self) -> list[list[Any]]:
        """Its pods' use as the real agent reports it (`gitops.agents.agent.usage_rows`): one
        container each, a few millicores and MiB."""
        at, pods = time.time(), sorted(self.pods)
        mibs = random.choices(range(8, 24), k=len(pods))
        return [
            [pod_id, at, self.usage_every, "main", round(random.uniform(1.0, 20.0), 3), mib * 2**20]
            for pod_id, mib in zip(pods, mibs, strict=True)
        ]

    def to_say(self) -> bool:
        return self.report()[0] != self.said

    def report(self) -> tuple[str, str]:
        """What a sync would report now (compared with what the last one did), and its digest."""
        if self.reported is None:
            text = json.dumps({"statuses": list(self.pods.values()), "stopped": self.stopped})
            self.reported = (text, hashlib.blake2b(text.encode(), digest_size=16).hexdigest())
        return self.reported

    async def run(
        self, interval: float, heartbeat: float, stop: asyncio.Event, phase: float | None = None
    ) -> None:
        """Sync every `interval` seconds, at `phase` of it from now (None: drawn at random);
        with `heartbeat`, as the real agent does with a long-poll: only when the long-poll
        saw news, there is a change to report, or the heartbeat is due."""
        # Spread over the interval, as real agents are.
        await asyncio.sleep((random.random() if phase is None else phase) * interval)
        if self.usage_every:  # the measurements spread over their period too
            self.usage_due = time.monotonic() + random.random() * self.usage_every
        watching = asyncio.create_task(self.watch(stop)) if heartbeat else None
        loop = asyncio.get_running_loop()
        # Ticks and heartbeats at this agent's own phases, as the real agent's
        # (`gitops.loop.Cadence`): a sync for news moves neither.
        ticks = Cadence(interval, time.monotonic())
        beat = self.beat = Cadence.starting(heartbeat, time.monotonic()) if heartbeat else None
        try:
            while not stop.is_set():
                started = time.monotonic()
                due = beat is not None and beat.is_due(started)
                if not heartbeat or self.news or due or self.to_say():
                    self.news = False
                    await self.sync()
                if self.news:
                    continue
                # Until news or the next tick: a future and a timer, not tasks made and
                # cancelled at each tick (5,000 agents' cancelled waits were cyclic garbage
                # whose collections stalled this process's loop; the run is stopped by
                # cancelling this task).
                self.wake = loop.create_future()
                timer = loop.call_later(ticks.until(time.monotonic()), self._wake)
                await self.wake
                timer.cancel()
        finally:
            if watching is not None:
                watching.cancel()

    async def watch(self, stop: asyncio.Event) -> None:
        """Long-poll `/watch` with the versions held; news wakes the sync loop."""
        assert self.pool is not None
        self.watch_connection = Connection(self.pool.host, self.pool.port)
        try:
            while not stop.is_set():
                if not self.synced:
                    await asyncio.sleep(0.5)
                    continue
                asked = self.versions[1]
                body = json.dumps(
                    {
                        "have_pods": self.versions[0],
                        "have_services": asked,
                        "timeout": WATCH_SECONDS,
                        "service_deltas": True,  # as the real agent: a move of the Services comes along
                        "endpoint_edits": True,
                    }
                ).encode()
                try:
                    status, reply = await self.watch_connection.request(
                        "POST",
                        f"/agent/v1/nodes/{self.name}/watch",
                        body,
                        {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
                        whole=self.services is not None,
                    )
                except (OSError, HttpError):
                    await asyncio.sleep(1.0)
                    continue
                answer = self.answer_of(reply) if status == 200 else {}
                if (
                    answer.get("changed")
                    and answer.get("services_changed") is not None
                    and answer.get("pods_version") == self.versions[0]
                    and not answer.get("logs")
                ):
                    # Only the Services moved, and their changes came along: held, no sync call
                    # (these agents program no proxy).
                    self.versions = (self.versions[0], answer["services_version"])
                    self.hold_services(answer, asked)
                elif answer.get("changed"):
                    held = self.versions
                    self.news = True
                    self._wake()
                    for _ in range(50):  # until the sync it wakes brought the new versions
                        if self.versions != held:
                            break
                        await asyncio.sleep(0.1)
                elif status != 200:
                    await asyncio.sleep(1.0)
        finally:
            self.watch_connection.close()


# --- the hollow agents, in processes of their own ---------------------------------------


def child(flag: str, ports: Sequence[int], join_token: str, *extra: str) -> subprocess.Popen[str]:
    """This script again, as a process of the agents' (`flag`), spoken to on its stdin and
    stdout, one line each way; the join token in its environment, off its argv."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), flag, ",".join(map(str, ports)), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, JOIN_TOKEN_ENV: join_token, "PYTHONPATH": path},
    )


@dataclass
class Fleet:
    """The `--nodes` hollow agents, spread over `--agent-processes` processes: one event loop
    running thousands of agents stalls (a collection, a burst of replies), then sends what
    waited all at once. Real agents, each on its host, send no such bursts; the fewer agents
    a loop runs, the less the server sees of them and the less the calls' times hold the
    loop's own stalls."""

    processes: list[subprocess.Popen[str]]
    nodes: int

    @classmethod
    def start(cls, args: argparse.Namespace, ports: Sequence[int], join_token: str) -> Fleet:
        count = args.agent_processes
        each = -(-args.connections // count)  # the connections, shared out
        processes = [
            child(
                "--agents-of",
                ports,
                join_token,
                *("--agent-share", f"{k}/{count}", "--nodes", str(args.nodes)),
                *("--interval", str(args.interval), "--heartbeat", str(args.heartbeat)),
                *("--connections", str(each), "--usage-every", str(args.usage_every)),
            )
            for k in range(count)
        ]
        for process in processes:  # a load generator takes only the CPU nothing else wants
            os.setpriority(os.PRIO_PROCESS, process.pid, args.agents_nice)
            if args.agents_idle:
                os.sched_setscheduler(process.pid, os.SCHED_IDLE, os.sched_param(0))
        return cls(processes, args.nodes)

    def ask(self, what: str) -> list[dict[str, Any]]:
        """Every process's answer to `what` (each answers at once: this blocks only briefly)."""
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(what + "\n")
            process.stdin.flush()
        answers = []
        for process in self.processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"an agents' process ended (exit {process.wait()})")
            answer: dict[str, Any] = json.loads(line)
            if answer.get("error"):
                raise RuntimeError(f"an agents' process: {answer['error']}")
            answers.append(answer)
        return answers

    def synced(self) -> bool | str:
        """True once every agent has registered and synced once; else how far they are."""
        answers = self.ask("synced")
        synced = sum(a["synced"] for a in answers)
        return synced == self.nodes or f"{sum(a['registered'] for a in answers)} registered, {synced} synced"

    def drain(self, into: Calls) -> float:
        """Add the calls the processes timed since the last drain to `into`; the seconds their
        collectors took in all since they started."""
        collected = 0.0
        for answer in self.ask("drain"):
            into.seconds.extend(answer["seconds"])
            into.failures += answer["failures"]
            into.deferred += answer["deferred"]
            into.last_error = answer["last_error"] or into.last_error
            collected += answer["gc_s"]
        return collected

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


async def be_agents(args: argparse.Namespace, ports: Sequence[int], join_token: str) -> None:
    """An agents' process (`Fleet`): its share of the hollow agents, registered 200 at a
    time and then run; answers "synced" and "drain" on stdin, one JSON line each."""
    # The agents' statuses are a large state: full collections of it stalled this loop, and
    # with it the calls it times. Kept out of them as the server keeps its own (`gitops.heap`).
    HEAP.count_time()
    settled = threading.Event()
    threading.Thread(target=HEAP.keep, args=(settled,), name="heap", daemon=True).start()
    share, count = (int(n) for n in args.agent_share.split("/"))
    calls = Calls()
    pools = [Pool("127.0.0.1", port, args.connections) for port in ports]
    agents = [
        HollowAgent(
            f"hollow-{i}",
            f"127.{(i >> 16) & 255}.{(i >> 8) & 255}.{(i & 255) or 1}",
            pools[i % len(pools)],
            join_token,
            calls,
            usage_every=args.usage_every,
        )
        for i in range(share, args.nodes, count)
    ]
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    failed: list[str] = []

    async def start() -> None:
        try:
            for first in range(0, len(agents), 200):
                await asyncio.gather(*(a.register() for a in agents[first : first + 200]))
        except Exception as exc:
            failed.append(f"{type(exc).__name__}: {exc}")
            return
        tasks.extend(asyncio.create_task(a.run(args.interval, args.heartbeat, stop)) for a in agents)

    starting = asyncio.create_task(start())
    try:
        while True:
            asked = (await asyncio.to_thread(sys.stdin.readline)).strip()
            if asked == "synced":
                answer: dict[str, Any] = {
                    "registered": sum(bool(a.token) for a in agents),
                    "synced": sum(a.synced for a in agents),
                }
            elif asked == "drain":
                answer = {
                    "seconds": calls.seconds[:],
                    "failures": calls.failures,
                    "deferred": calls.deferred,
                    "last_error": calls.last_error,
                    "gc_s": sum(HEAP.seconds),
                }
                calls.reset()
            else:  # the bench is gone, or done
                return
            if failed:
                answer["error"] = failed[0]
            print(json.dumps(answer), flush=True)
    finally:
        settled.set()
        stop.set()
        starting.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(starting, *tasks, return_exceptions=True)
        for pool in pools:
            await pool.close()


# --- the witness ------------------------------------------------------------------------

JOIN_TOKEN_ENV = "GITOPS_SCALE_JOIN_TOKEN"  # noqa: S105 - the variable naming it: handed off argv
WITNESS_TAINT = {"key": "gitops.bench/witness", "value": "", "effect": "NoSchedule"}
# Witness agents that decode and hold the Services (`commit_to_endpoints_s`): 50 decoding
# 4 MB at every move took a core from the server on this 2-core machine.
HOLDING = 3


@dataclass
class Spoken:
    """A process of this script's (`child`), spoken to on its stdin and stdout, one line each
    way: it says "ready", then answers "mark" (a window measured from now) and "report"
    (what it saw since, as JSON; then it ends)."""

    process: subprocess.Popen[str]

    async def _line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        line: str = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), timeout)
        return line.strip()

    async def _ask(self, what: str, timeout: float = 30.0) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(what + "\n")
        self.process.stdin.flush()
        return await self._line(timeout)

    async def mark(self) -> None:
        """Forget what it saw so far: the window measured starts now."""
        if await self._ask("mark") != "marked":
            raise RuntimeError(f"{type(self).__name__} did not mark its window")

    async def report(self) -> dict[str, Any]:
        """What it saw since the mark; the process ends."""
        seen: dict[str, Any] = json.loads(await self._ask("report", 60.0))
        return seen

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@dataclass
class Witness(Spoken):
    """More agents in a process of their own, each with a connection of its own, on nodes
    tainted so that no pod is placed on them, syncing once a second while long-polling (by
    default evenly apart: `be_witness`): the quiet call's time as an agent alone on its
    host sees it. The hollow agents' own figure
    also holds their loop's stalls (thousands of agents in this one process, on the cores the
    control plane runs on) and their waits for one of the pooled connections."""

    @classmethod
    async def start(
        cls, ports: Sequence[int], join_token: str, count: int, cpu_slice: str, phases: str
    ) -> Witness:
        witness = cls(
            child(
                "--witness-of",
                ports,
                join_token,
                "--witnesses",
                str(count),
                "--witness-slice",
                cpu_slice,
                "--witness-phases",
                phases,
            )
        )
        said = await witness._line(120.0)
        if said != "ready":
            witness.stop()
            raise RuntimeError(f"the witness did not start: {said!r}")
        return witness

    async def endpoints(self) -> int:
        """The fewest endpoints (of every Service's first port) one of its agents holds."""
        return int(await self._ask("endpoints"))

    async def ports(self) -> list[int]:
        """The local ports of its agents' sync connections."""
        ports: list[int] = json.loads(await self._ask("ports"))
        return ports


async def be_witness(ports: Sequence[int], join_token: str, count: int, phases: str) -> None:
    """The witness's side (`Witness`): register and sync `count` tainted nodes, say "ready",
    then answer "mark" and "report" on stdin. With `phases` "even", the agents' calls come
    1/`count` of a second apart, so that none waits for another's in this one process (an
    agent alone on its host has no such neighbour); "random" draws each one's phase."""
    calls = Calls(spans=[])
    agents = [
        HollowAgent(
            f"witness-{i}",
            f"127.254.{i >> 8}.{(i & 255) + 1}",
            Pool("127.0.0.1", ports[i % len(ports)], 1),
            join_token,
            calls,
            taints=(WITNESS_TAINT,),
            services={} if i < HOLDING else None,
        )
        for i in range(count)
    ]
    stop = asyncio.Event()
    await asyncio.gather(*(a.register() for a in agents))
    # Once a second, long-polling between: a heartbeat due at every tick.
    tasks = [
        asyncio.create_task(a.run(1.0, 0.5, stop, i / count if phases == "even" else None))
        for i, a in enumerate(agents)
    ]
    try:
        while not all(a.synced for a in agents):  # (stdout is the bench's to read: nothing else on it)
            await asyncio.sleep(0.1)
        print("ready", flush=True)
        while True:
            asked = (await asyncio.to_thread(sys.stdin.readline)).strip()
            if asked == "mark":
                calls.reset()
                print("marked", flush=True)
            elif asked == "ports":
                print(json.dumps([port for a in agents for port in a.pool.local_ports()]), flush=True)
            elif asked == "endpoints":  # the fewest endpoints one of those holding them holds
                print(min(a.endpoints() for a in agents if a.services is not None), flush=True)
            elif asked == "report":
                seen = {
                    "calls": len(calls.seconds),
                    "failures": calls.failures,
                    "p50_ms": percentile_ms(calls.seconds, 0.50),
                    "p99_ms": percentile_ms(calls.seconds, 0.99),
                    "max_ms": round(max(calls.seconds, default=float("nan")) * 1000, 2),
                    "spans": calls.spans,
                }
                print(json.dumps(seen), flush=True)
                return
            elif not asked:  # the bench is gone
                return
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for a in agents:
            await a.pool.close()


# --- the witness's calls on the wire ------------------------------------------------------

SO_ATTACH_FILTER, SO_TIMESTAMPNS = 26, 35  # Linux's <asm-generic/socket.h>
PACKET_OUTGOING = 4  # a packet as it is sent (loopback shows each one twice: sent, received)
SNAP = 96  # bytes of each packet kept: the headers and a request's first line


def port_filter(ports: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """A classic BPF program (code, jt, jf, k) passing IPv4 TCP packets on loopback (an
    Ethernet header of zeros) from or to one of `ports`, their first `SNAP` bytes."""
    # Four checks of the protocols, a load and a comparison per port for each of the two
    # ports, then "reject" and "accept" (jumps count the instructions skipped).
    reject = 4 + 2 * (1 + len(ports))
    accept = reject + 1
    program = [(0x28, 0, 0, 12), (0x15, 0, reject - 2, 0x0800), (0x30, 0, 0, 23), (0x15, 0, reject - 4, 6)]
    for offset in (34, 36):  # the source port, then the destination (an IPv4 header of 20 bytes)
        program.append((0x28, 0, 0, offset))
        for port in ports:
            program.append((0x15, accept - len(program) - 1, 0, port))
    program += [(0x06, 0, 0, 0), (0x06, 0, 0, SNAP)]
    if any(not (0 <= jt < 256 and 0 <= jf < 256) for _, jt, jf, _ in program):
        raise ValueError(f"{len(ports)} ports are more than one filter's jumps reach")
    return program


def exchanges(
    packets: Sequence[tuple[float, int, int, bytes]], ports: set[int]
) -> list[tuple[int, float, float]]:
    """Each sync's (connection's port, the time its request left it, the time the server's
    answer left for it), by the kernel's timestamps of (time, source port, destination port,
    payload's start) for the packets that carry data, on the connections of `ports`."""
    asked: dict[int, float] = {}
    found = []
    for at, source, destination, payload in packets:
        if source in ports and payload.startswith(b"POST "):
            asked[source] = at
        elif destination in ports and payload.startswith(b"HTTP/") and destination in asked:
            found.append((destination, asked.pop(destination), at))
    return found


def split_calls(
    spans: Sequence[tuple[int, float, float]], wire: Sequence[tuple[int, float, float]]
) -> dict[str, Any]:
    """The witness's calls (port, began, ended) split at their exchanges on the wire (port,
    asked, answered; `exchanges`): the server's part of each (its exchanges' times, two when
    a held report was sent again) and the witness's own (the rest: encoding, writing, its
    waits for a CPU, reading the answer). For all the calls matched, and for the slowest 1%
    of them (those at or over their p99): where the tail's time went."""
    by_port: dict[int, list[tuple[float, float]]] = {}
    for port, asked, answered in wire:
        by_port.setdefault(port, []).append((asked, answered))
    for seen in by_port.values():
        seen.sort()
    matched: list[tuple[float, float]] = []  # (the call's seconds, the server's part of them)
    for port, began, ended in spans:
        seen = by_port.get(port, [])
        i = bisect.bisect_left(seen, (began, 0.0))
        server = 0.0
        while i < len(seen) and seen[i][1] <= ended:
            server += seen[i][1] - seen[i][0]
            i += 1
        if server:
            matched.append((ended - began, server))
    tail = percentile([took for took, _ in matched], 0.99)
    slow = [(took, server) for took, server in matched if took >= tail]

    return {
        "calls": len(matched),
        "own_ms_p50": percentile_ms([took - server for took, server in matched], 0.50),
        "own_ms_p99": percentile_ms([took - server for took, server in matched], 0.99),
        "slow_calls": len(slow),
        "slow_server_ms_p50": percentile_ms([server for _, server in slow], 0.50),
        "slow_own_ms_p50": percentile_ms([took - server for took, server in slow], 0.50),
    }


def overlapping(spans: Sequence[tuple[int, float, float]]) -> dict[str, Any]:
    """Of the witness's calls (port, began, ended), the share that overlapped another of
    its calls in time, and that share among its slowest 1% (at or over their p99): each
    such call may have waited for the other's in the witness's one event loop, which an
    agent alone on its host never does (`--witness-phases`)."""
    calls = sorted((began, ended) for _, began, ended in spans)
    overlapped = [False] * len(calls)
    latest = float("-inf")  # the latest end of the calls begun before this one
    for i, (began, ended) in enumerate(calls):
        if latest > began:
            overlapped[i] = True
        if i + 1 < len(calls) and calls[i + 1][0] < ended:
            overlapped[i] = True
        latest = max(latest, ended)
    tail = percentile([ended - began for began, ended in calls], 0.99)
    slow = [hit for (began, ended), hit in zip(calls, overlapped, strict=True) if ended - began >= tail]
    return {
        "overlapped_share": round(sum(overlapped) / len(calls), 4) if calls else None,
        "slow_overlapped_share": round(sum(slow) / len(slow), 4) if slow else None,
    }


def share(value: float | None) -> str:
    """A share as a percentage, or "n/a" when there was nothing to count."""
    return "n/a" if value is None else f"{value:.1%}"


def be_capture(ports: Sequence[int]) -> None:
    """The capture's side (`Capture`): say "ready" (or why it cannot), then answer "mark"
    and "report" on stdin."""
    try:
        program = b"".join(struct.pack("HBBI", *op) for op in port_filter(ports))
        code = ctypes.create_string_buffer(program)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        sock.setsockopt(
            socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(program) // 8, ctypes.addressof(code))
        )
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * MiB)
        sock.bind(("lo", 0))
    except (OSError, ValueError) as exc:
        print(f"unavailable: {exc}", flush=True)
        return
    packets: list[tuple[float, int, int, bytes]] = []

    def read() -> None:  # (a thread: the kernel's timestamps, not this process's, are the times)
        while True:
            data, ancillary, _, address = sock.recvmsg(SNAP, 64)
            if address[2] != PACKET_OUTGOING:
                continue
            at = time.time()  # (if the kernel gave no timestamp)
            for _, kind, value in ancillary:
                if kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    at = seconds + nanoseconds / 1e9
            ip = data[14:]
            header = (ip[0] & 15) * 4
            source, destination = struct.unpack("!HH", ip[header : header + 4])
            start = header + (ip[header + 12] >> 4) * 4
            if len(ip) > start:
                packets.append((at, source, destination, ip[start : start + 8]))

    threading.Thread(target=read, daemon=True).start()
    print("ready", flush=True)
    while True:
        asked = sys.stdin.readline().strip()
        if asked == "mark":
            packets.clear()
            print("marked", flush=True)
        elif asked == "report":
            found = exchanges(list(packets), set(ports))
            seconds = [answered - asked for _, asked, answered in found]
            print(
                json.dumps(
                    {
                        "calls": len(seconds),
                        "p50_ms": percentile_ms(seconds, 0.50),
                        "p99_ms": percentile_ms(seconds, 0.99),
                        "max_ms": round(max(seconds, default=float("nan")) * 1000, 2),
                        "exchanges": found,
                    }
                ),
                flush=True,
            )
            return
        elif not asked:
            return


@dataclass
class Capture(Spoken):
    """The witness's sync calls as the kernel sees them on loopback (`--capture`), in a
    process of its own: from the request's packet leaving the witness to the answer's
    leaving the server. That is the server's part of the witness's time (the server's
    wake-up, its work and its write, the kernel's delivery), without the witness's own
    encoding, waits for a CPU and reading of the answer."""

    @classmethod
    async def start(cls, ports: Sequence[int], join_token: str) -> Capture | str:
        """The capture, or why there is none (packet sockets want root)."""
        capture = cls(child("--capture-of", ports, join_token))
        said = await capture._line(30.0)
        if said != "ready":
            capture.stop()
            return said
        return capture


# --- the control plane ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _workload(kind: str, name: str, label: str, replicas: int | None = None, version: int = 1) -> str:
    """One workload as a YAML document (JSON, its flow style): one container (image
    `name:version`) asking 10m and 16 MiB, its pods labelled `label: name`."""
    labels = {label: name}
    container = {
        "name": "main",
        "image": f"{name}:{version}",
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
    }
    spec: dict[str, Any] = {} if replicas is None else {"replicas": replicas}
    spec |= {
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
    }
    return (
        json.dumps({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}) + "\n"
    )


def replicas_of(d: int, count: int, pods: int) -> int:
    """The replicas of the `d`th of `count` Deployments holding `pods` in all."""
    return pods // count + (1 if d < pods % count else 0)


def deployments(
    count: int, pods: int, *, services: bool = False, daemonsets: int = 0, rolled: int = 0
) -> str:
    """`count` Deployments holding `pods` replicas in all, as one multi-document file; with
    `services`, each with a ClusterIP Service selecting its pods (port 80 to 8080); and
    `daemonsets` DaemonSets (a pod on every node but the witness's, which are tainted). The
    first `rolled` Deployments have their image's second version."""
    docs = [_workload("DaemonSet", f"ds{d}", "ds") for d in range(daemonsets)]
    for d in range(count):
        if services:
            docs.append(
                f"apiVersion: v1\nkind: Service\nmetadata: {{name: app{d}}}\n"
                f"spec: {{selector: {{app: app{d}}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
            )
        version = 2 if d < rolled else 1
        docs.append(_workload("Deployment", f"app{d}", "app", replicas_of(d, count, pods), version))
    return "---\n".join(docs)


PLACEHOLDER = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: scale-bench}\ndata: {started: 'yes'}\n"


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    db: str
    folder: Path
    log: Path

    def status(self) -> dict[str, Any]:
        with urlopen(f"http://127.0.0.1:{self.port}/api/v1/status", timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def metrics(self) -> str:
        with urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as reply:
            text: str = reply.read().decode()
            return text

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"VmHWM:\s+(\d+) kB", status)
        return int(found.group(1)) / 1024 if found else float("nan")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def counts(self) -> tuple[int, int, int]:
        """(pods, bound, running) in the database."""
        running = "coalesce(sum(CASE WHEN phase = 'Running' THEN 1 ELSE 0 END), 0)"
        row = self._one(f"SELECT count(*), count(node), {running} FROM pods")  # noqa: S608 - no input in it
        return int(row[0]), int(row[1]), int(row[2])

    def rollout_counts(self, old: set[str]) -> tuple[int, int, int, int]:
        """(pods, running, ready and not stopping, Deployments with pods of a template hash
        in `old`) in the database, in one scan (at 150,000 pods each scan costs the database
        a few hundred milliseconds, which the server's reads share)."""
        hashes = ", ".join(f"'{h}'" for h in sorted(old) if re.fullmatch(r"[0-9a-f]+", h)) or "''"
        row = self._one(
            "SELECT count(*), coalesce(sum(CASE WHEN phase = 'Running' THEN 1 ELSE 0 END), 0), "  # noqa: S608 - hex only
            "coalesce(sum(CASE WHEN ready AND terminating_at IS NULL THEN 1 ELSE 0 END), 0), "
            f"count(DISTINCT CASE WHEN template_hash IN ({hashes}) THEN owner_name END) FROM pods"
        )
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    def measured_pods(self) -> int:
        """The pods whose measured use this server's agents reported (`/metrics/resource`)."""
        with urlopen(f"http://127.0.0.1:{self.port}/metrics/resource", timeout=60) as reply:
            text: str = reply.read().decode()
        return text.count("gitops_container_cpu_usage_millicores{")

    def revisions(self) -> set[tuple[str, str]]:
        """Each Deployment's pods' template hashes in the database: (its name, a hash)."""
        query = "SELECT DISTINCT owner_name, template_hash FROM pods WHERE owner_kind = 'Deployment'"
        found = self._rows(query)
        return {(str(name), str(template)) for name, template in found}

    def _one(self, query: str) -> Any:
        """The one row `query` gives, read from the database."""
        return self._rows(query)[0]

    def _rows(self, query: str) -> list[Any]:
        """The rows `query` gives, read from the database."""
        if self.db.startswith("sqlite"):
            path = self.db.removeprefix("sqlite:///")
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
                return list(conn.execute(query).fetchall())
        engine = create_engine(self.db)
        with engine.connect() as conn:
            rows = list(conn.execute(text(query)).all())
        engine.dispose()
        return rows

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    tmp: Path,
    db: str,
    join_token: str,
    log_level: str = "warning",
    *,
    replica: int = 0,
    cpus: set[int] | None = None,
) -> Server:
    """The leading `gitops serve` (the folder source), or with `replica` > 0 an `--api-only`
    one on the same database and key (started after the leader, which made the key); on
    `cpus` only, if given."""
    folder = tmp / "manifests"
    token_file = tmp / "join-token"
    if not replica:
        folder.mkdir()
        (folder / "placeholder.yaml").write_text(PLACEHOLDER)
        token_file.write_text(join_token)
        token_file.chmod(0o600)
    port = free_port()
    log = tmp / (f"api-{replica}.log" if replica else "server.log")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "GITOPS_DB": db, "PYTHONPATH": path}  # a password stays off argv
    args = [sys.executable, "-m", "gitops.cli", "--log-level", log_level, "serve"]
    if cpus is not None:
        args = ["taskset", "--cpu-list", ",".join(map(str, sorted(cpus))), *args]
    if shutil.which("setpriv"):
        # Killed with the bench, however it ends: a leader left running by a bench stopped
        # with kill -9 ran on for 51 minutes and took the CPU of three later runs (and
        # what `pkill` found of them). The signal is kept across `taskset`'s exec.
        args = ["setpriv", "--pdeathsig", "KILL", *args]
    if replica:
        args += ["--api-only", "--secret-key-file", str(tmp / "state" / "secret.key")]
    else:
        args += ["--dir", str(folder)]
    state = tmp / (f"state-api-{replica}" if replica else "state")
    args += ["--join-token-file", str(token_file)]
    args += ["--port", str(port), "--state-dir", str(state), "--poll", "1"]
    args += ["--service-cidr", SERVICE_CIDR, "--cluster-cidr", CLUSTER_CIDR]
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=tmp, env=env)
    server = Server(process, port, db, folder, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gitops serve exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError("gitops serve did not listen within 60 s")


def histogram(metrics: str, name: str) -> tuple[float, float]:
    """(sum, count) of a histogram without labels in Prometheus text."""
    total = re.search(rf"^{name}_sum (\S+)$", metrics, re.MULTILINE)
    count = re.search(rf"^{name}_count (\S+)$", metrics, re.MULTILINE)
    return (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)


def buckets(metrics: str, name: str, labels: str = "") -> dict[float, float]:
    """A histogram's cumulative bucket counts by upper bound, from Prometheus text (of the
    series with `labels`, as `generation="2",`)."""
    found = re.findall(rf'^{name}_bucket{{{labels}le="([^"]+)"}} (\S+)$', metrics, re.MULTILINE)
    return {float(le): float(count) for le, count in found}


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding the `q` quantile of what a histogram counted
    between two readings (the quantile is at most that); nan when it counted nothing."""
    counted = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = counted.get(float("inf"), 0.0)
    if not total:
        return float("nan")
    return next(le for le, count in counted.items() if count >= q * total)


GENERATIONS = ("0", "1", "2")


def gc_pauses(metrics: str) -> list[tuple[dict[float, float], float]]:
    """The server's collector pauses (`gitops_gc_pause_seconds`), by generation: their
    cumulative counts by upper bound, and their seconds in all."""
    read = []
    for generation in GENERATIONS:
        total = re.search(
            rf'^gitops_gc_pause_seconds_sum{{generation="{generation}"}} (\S+)$', metrics, re.MULTILINE
        )
        counts = buckets(metrics, "gitops_gc_pause_seconds", f'generation="{generation}",')
        read.append((counts, float(total.group(1)) if total else 0.0))
    return read


def gc_window(
    before: list[tuple[dict[float, float], float]], after: list[tuple[dict[float, float], float]]
) -> dict[str, Any]:
    """The collector's pauses between two readings (`gc_pauses`): the collections and their
    seconds by generation, and the bound of the bucket holding the longest."""
    counts, seconds, longest = [], [], 0.0
    for (was, was_s), (now, now_s) in zip(before, after, strict=True):
        counted = int(now.get(float("inf"), 0.0) - was.get(float("inf"), 0.0))
        counts.append(counted)
        seconds.append(round(now_s - was_s, 3))
        if counted:
            longest = max(longest, bucket_quantile(was, now, 1.0))
    return {"collections": counts, "seconds": seconds, "longest_at_most_s": longest}


def counter_total(metrics: str, name: str) -> float:
    """The sum of a counter's samples over all its labels in Prometheus text."""
    return sum(float(v) for v in re.findall(rf"^{name}_total(?:{{[^}}]*}})? (\S+)$", metrics, re.MULTILINE))


def gauge(metrics: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", metrics, re.MULTILINE)
    return float(found.group(1)) if found else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def percentile_ms(values: Sequence[float], q: float) -> float:
    """`percentile` of seconds, in milliseconds to two places: the figures' unit."""
    return round(percentile(values, q) * 1000, 2)


def say(text: str) -> None:
    print(text, flush=True)


# --- the run ----------------------------------------------------------------------------


async def wait_for(what: str, done: Any, timeout: float, every: float = 0.5) -> float:
    """Seconds until `done()` is true, printing progress; raises after `timeout`."""
    start = time.monotonic()
    shown = start
    while True:
        state = done()
        if inspect.isawaitable(state):
            state = await state
        if state is True:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s ({state})")
        if time.monotonic() - shown >= 5:
            say(f"  ... {what}: {state} after {time.monotonic() - start:.0f} s")
            shown = time.monotonic()
        await asyncio.sleep(every)


def cpu_seconds(servers: Sequence[Server]) -> float:
    return sum(s.cpu_seconds() for s in servers)


def stolen_seconds() -> float:
    """CPU time the hypervisor gave this machine's CPUs to others (`steal` in /proc/stat),
    summed over the CPUs: a virtual machine's runs differ with its host's load."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()  # cpu user nice system idle iowait irq softirq steal ...
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


_HOST_PYTHON = """
import time
best = float("inf")
for _ in range(5):
    start = time.perf_counter()
    sum(i * i for i in range(300_000))
    best = min(best, time.perf_counter() - start)
print(best * 1000)
"""


async def host_python_ms() -> float:
    """Milliseconds a fixed piece of pure Python takes on this machine now (the best of 5,
    in a process of its own so that the bench's loop does not wait for it): how fast the
    host runs the servers' Python, which steal time alone does not tell."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOST_PYTHON, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    return round(float(out), 2)


def merged_buckets(servers: Sequence[Server], name: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts summed over the servers' /metrics."""
    total: dict[float, float] = {}
    for s in servers:
        for le, count in buckets(s.metrics(), name).items():
            total[le] = total.get(le, 0.0) + count
    return total


async def run(
    args: argparse.Namespace, servers: Sequence[Server], join_token: str, figures: dict[str, Any]
) -> None:
    server = servers[0]  # the leader: it syncs the folder and runs the controller
    fronts = servers[1:] or servers  # the agents' control planes: the --api-only ones, if any
    calls = Calls()  # the agents' calls, drained from their processes (`Fleet.drain`)
    start = time.monotonic()
    fleet = Fleet.start(args, [f.port for f in fronts], join_token)
    witness: Witness | None = None
    capture: Capture | None = None
    try:
        await wait_for("agents synced", fleet.synced, max(120.0, args.nodes * 0.04))  # 200 s for 5,000
        figures["start_s"] = round(time.monotonic() - start, 2)
        say(f"start: {args.nodes} hollow nodes registered and synced in {figures['start_s']} s")
        if args.witnesses:
            ports = [f.port for f in fronts]
            witness = await Witness.start(
                ports, join_token, args.witnesses, args.witness_slice, args.witness_phases
            )
            say(f"witness: {args.witnesses} tainted nodes syncing once a second from a process of their own")
            if args.capture:
                started = await Capture.start(await witness.ports(), join_token)
                if isinstance(started, str):
                    say(f"capture: none ({started})")
                else:
                    capture = started
        # A control plane that held no node at its start waits its settle time (12 s) before
        # it creates pods (agents may still come back with containers to adopt): not counted.
        await wait_for("settled", lambda: server.status().get("settled", True), 60)

        all_pods = args.pods + figures["daemonset_pods"]
        committed = time.monotonic()
        cpu_before = cpu_seconds(servers)
        gc_before = counter_total(server.metrics(), "gitops_gc_seconds")
        (server.folder / "apps.yaml").write_text(
            deployments(args.deployments, args.pods, services=args.services, daemonsets=args.daemonsets)
        )

        def bound() -> bool | str:
            total, on_nodes, running = server.counts()
            return (
                total == all_pods and on_nodes == all_pods
            ) or f"{total} pods, {on_nodes} bound, {running} running"

        figures["commit_to_bound_s"] = round(await wait_for("bind", bound, args.timeout), 2)
        figures["bound"] = server.counts()[1]
        say(f"commit to bound: {figures['bound']} pods in {figures['commit_to_bound_s']} s")

        fleet.drain(calls)
        figures["bind_sync_deferred"] = calls.deferred  # answered 429 while the pass wrote
        calls.reset()  # the agents' calls while pods come up: how the server keeps up under churn
        seen = [0]  # calls already shown

        def all_running() -> bool | str:
            running = server.counts()[2]
            fleet.drain(calls)
            recent, seen[0] = calls.seconds[seen[0] :], len(calls.seconds)
            return running == all_pods or (
                f"{running} running; {len(recent)} sync calls, p50 {percentile(recent, 0.5) * 1000:.0f} ms,"
                f" p99 {percentile(recent, 0.99) * 1000:.0f} ms, {calls.failures} failed and"
                f" {calls.deferred} deferred (429) in all"
            )

        await wait_for("running", all_running, args.timeout, every=5.0)
        figures["commit_to_running_s"] = round(time.monotonic() - committed, 2)
        fleet.drain(calls)
        figures["running_sync_ms_p50"] = percentile_ms(calls.seconds, 0.50)
        figures["running_sync_ms_p99"] = percentile_ms(calls.seconds, 0.99)
        figures["running_sync_failures"] = calls.failures
        figures["running_sync_deferred"] = calls.deferred
        figures["first_pass_cpu_s"] = round(cpu_seconds(servers) - cpu_before, 1)
        figures["running_gc_s"] = round(counter_total(server.metrics(), "gitops_gc_seconds") - gc_before, 1)
        cpu_text = f"server CPU {figures['first_pass_cpu_s']} s, {figures['running_gc_s']} s in the collector"
        say(f"commit to running: {figures['commit_to_running_s']} s ({cpu_text})")

        if args.services and witness is not None:

            async def every_endpoint() -> bool | str:
                held = await witness.endpoints()
                return held == args.pods or f"the witness's agents hold {held} endpoints (at least)"

            await wait_for("endpoints", every_endpoint, args.timeout, every=2.0)
            figures["commit_to_endpoints_s"] = round(time.monotonic() - committed, 2)
            say(
                "commit to endpoints: every pod an endpoint at each witness agent in "
                f"{figures['commit_to_endpoints_s']} s"
            )
        await asyncio.sleep(args.settle)  # the last statuses written, the passes after them done
        metrics = server.metrics()
        pass_sum, pass_count = histogram(metrics, "gitops_controller_pass_seconds")
        served_before = merged_buckets(fronts, "gitops_agent_sync_seconds")
        # Read before the witness's window opens: rendering /metrics at 5,000 nodes stalls the
        # replica's loop tens of milliseconds, which the witness's calls would wait for.
        replica = servers[1] if len(servers) > 1 else None  # the first --api-only one, serving agents
        replica_pauses_before = gc_pauses(replica.metrics()) if replica else []
        await asyncio.sleep(1.0)  # and the calls that waited for them answered
        client_gc = fleet.drain(calls)
        speed_before = await host_python_ms()
        calls.reset()
        if capture is not None:
            await capture.mark()
        if witness is not None:
            await witness.mark()
        cpu_before, stolen_before = cpu_seconds(servers), stolen_seconds()
        gc_before = counter_total(metrics, "gitops_gc_seconds")
        pauses_before = gc_pauses(metrics)
        await asyncio.sleep(args.quiet)
        # Each agents' process's share of the window spent collecting, on average.
        client_gc = fleet.drain(calls) - client_gc
        figures["client_gc_share"] = round(client_gc / args.agent_processes / args.quiet, 3)
        figures["stolen_s"] = round(stolen_seconds() - stolen_before, 2)  # by the host, in the window
        figures["host_python_ms"] = [speed_before, await host_python_ms()]
        cpu = cpu_seconds(servers) - cpu_before
        if witness is not None:
            seen_by_witness = await witness.report()
            figures["witness_calls"] = seen_by_witness["calls"]
            figures["witness_failures"] = seen_by_witness["failures"]
            figures["witness_sync_ms_p50"] = seen_by_witness["p50_ms"]
            figures["witness_sync_ms_p99"] = seen_by_witness["p99_ms"]
            figures["witness_sync_ms_max"] = seen_by_witness["max_ms"]
            figures.update(
                (f"witness_{name}", value) for name, value in overlapping(seen_by_witness["spans"]).items()
            )
        if capture is not None:
            on_the_wire = await capture.report()
            figures["witness_server_calls"] = on_the_wire["calls"]
            for figure in ("p50", "p99", "max"):
                figures[f"witness_server_ms_{figure}"] = on_the_wire[f"{figure}_ms"]
            if witness is not None:
                parts = split_calls(seen_by_witness["spans"], on_the_wire["exchanges"])
                figures["witness_split_calls"] = parts.pop("calls")
                figures.update((f"witness_{name}", value) for name, value in parts.items())
        metrics = server.metrics()
        figures["quiet_gc_share"] = round(
            (counter_total(metrics, "gitops_gc_seconds") - gc_before) / args.quiet, 3
        )
        paused = gc_window(pauses_before, gc_pauses(metrics))
        figures["quiet_gc_collections"] = paused["collections"]  # by generation
        figures["quiet_gc_s"] = paused["seconds"]
        figures["quiet_gc_longest_s"] = paused["longest_at_most_s"]  # at most
        if replica is not None:
            paused = gc_window(replica_pauses_before, gc_pauses(replica.metrics()))
            figures["api_quiet_gc_collections"] = paused["collections"]
            figures["api_quiet_gc_s"] = paused["seconds"]
            figures["api_quiet_gc_longest_s"] = paused["longest_at_most_s"]
        after_sum, after_count = histogram(metrics, "gitops_controller_pass_seconds")
        passes = after_count - pass_count
        figures["noop_passes"] = int(passes)
        figures["noop_pass_s"] = round((after_sum - pass_sum) / passes, 4) if passes else None
        figures["noop_pass_writes"] = gauge(metrics, "gitops_controller_pass_writes")
        figures["measured_pods"] = sum(f.measured_pods() for f in fronts)  # whose use the agents reported
        answered = len(calls.seconds)
        figures["sync_calls_per_s"] = round(answered / args.quiet, 1)
        figures["sync_call_ms_p50"] = percentile_ms(calls.seconds, 0.50)
        figures["sync_call_ms_p99"] = percentile_ms(calls.seconds, 0.99)
        figures["sync_failures"] = calls.failures
        # The same calls in the server, from its handler's start to its answer: without the
        # hollow agents' own loop (5,000 agents in this one process) nor the wait for one of
        # their pooled connections; at most the bucket's bound.
        served = merged_buckets(fronts, "gitops_agent_sync_seconds")
        for q in (0.50, 0.99):
            at_most = bucket_quantile(served_before, served, q)
            figures[f"server_sync_ms_p{q * 100:.0f}"] = round(at_most * 1000, 2)
        # Server CPU per answered call, the controller's passes and the long-polls included
        # (they are part of what keeping nodes in sync costs); nodes per core: the nodes kept
        # over the CPU seconds per second it took, if every call due was answered.
        per_call = cpu / answered if answered else float("nan")
        figures["server_cpu_ms_per_call"] = round(per_call * 1000, 3)
        due = args.nodes * args.quiet / (args.heartbeat or args.interval)
        figures["calls_answered_of_due"] = round(answered / due, 2)
        kept = answered >= 0.9 * due and cpu > 0
        figures["nodes_per_core"] = int(args.nodes * args.quiet / cpu) if kept else None
        say(
            f"quiet {args.quiet:.0f} s: {figures['noop_passes']} passes of {figures['noop_pass_s']} s "
            f"({figures['noop_pass_writes']:.0f} writes in the last); {answered} sync calls "
            f"({figures['sync_calls_per_s']}/s, {calls.failures} failed), "
            f"p50 {figures['sync_call_ms_p50']} ms, p99 {figures['sync_call_ms_p99']} ms "
            f"(in the server: p50 <= {figures['server_sync_ms_p50']} ms, "
            f"p99 <= {figures['server_sync_ms_p99']} ms); "
            f"server CPU {cpu:.1f} s = {figures['server_cpu_ms_per_call']} ms per call "
            f"({figures['quiet_gc_share']:.1%} of the time collecting garbage: "
            f"{figures['quiet_gc_collections']} collections by generation taking {figures['quiet_gc_s']} s, "
            f"the longest <= {figures['quiet_gc_longest_s']:g} s; the agents' "
            f"{figures['client_gc_share']:.1%}); "
            f"{figures['calls_answered_of_due']:.0%} of the calls due answered; "
            f"one core keeps {figures['nodes_per_core']} nodes"
            + (
                f" (syncing on news and every {args.heartbeat:g} s)"
                if args.heartbeat
                else " (one call a second)"
            )
            + f"; the host took {figures['stolen_s']} s of CPU from this machine in the window"
            + "; a fixed piece of Python took {} and {} ms just before and after it".format(
                *figures["host_python_ms"]
            )
        )
        if witness is not None:
            say(
                f"  the witness's {figures['witness_calls']} calls ({figures['witness_failures']} failed): "
                f"p50 {figures['witness_sync_ms_p50']} ms, p99 {figures['witness_sync_ms_p99']} ms, "
                f"max {figures['witness_sync_ms_max']} ms; "
                f"{share(figures['witness_overlapped_share'])} of them overlapped another of its calls, "
                f"{share(figures['witness_slow_overlapped_share'])} of its slowest 1%"
            )
        if capture is not None:
            say(
                f"  on the wire, {figures['witness_server_calls']} of them from the request's packet to "
                f"the answer's: p50 {figures['witness_server_ms_p50']} ms, "
                f"p99 {figures['witness_server_ms_p99']} ms, max {figures['witness_server_ms_max']} ms"
            )
        if "witness_split_calls" in figures:
            say(
                f"  the witness's own part of {figures['witness_split_calls']} calls matched on the wire: "
                f"p50 {figures['witness_own_ms_p50']} ms, p99 {figures['witness_own_ms_p99']} ms; in its "
                f"slowest {figures['witness_slow_calls']}, the server's part p50 "
                f"{figures['witness_slow_server_ms_p50']} ms, its own {figures['witness_slow_own_ms_p50']} ms"
            )
        if args.rollout:
            await roll_out(args, servers, fleet, calls, figures)
        if calls.last_error:
            say(f"  last failed call: {calls.last_error}")
    finally:
        fleet.stop()
        if witness is not None:
            witness.stop()
        if capture is not None:
            capture.stop()


async def roll_out(
    args: argparse.Namespace, servers: Sequence[Server], fleet: Fleet, calls: Calls, figures: dict[str, Any]
) -> None:
    """The rollout phase (`--rollout`): the first share of the Deployments get a new image in
    one commit, and the bench waits until each of them has only pods of the new template,
    every pod Running again. Its figures: the time (`commit_to_rolled_out_s`), the servers'
    CPU, the controller's passes (count, mean), the fewest pods ready at once among all of
    them (read every two seconds: each Deployment keeps 75% of its replicas available, its
    default `maxUnavailable`), and the agents' calls meanwhile."""
    server = servers[0]
    rolled = max(1, round(args.deployments * args.rollout))
    names = {f"app{d}" for d in range(rolled)}
    old = {template for name, template in server.revisions() if name in names}
    replaced = sum(replicas_of(d, args.deployments, args.pods) for d in range(rolled))
    all_pods = args.pods + figures["daemonset_pods"]
    figures["rollout_deployments"] = rolled
    figures["rollout_pods"] = replaced
    metrics = server.metrics()
    pass_sum, pass_count = histogram(metrics, "gitops_controller_pass_seconds")
    fronts = servers[1:] or servers  # the agents' control planes
    served_before = merged_buckets(fronts, "gitops_agent_sync_seconds")
    fleet.drain(calls)
    calls.reset()
    fewest_ready = [all_pods]
    committed, cpu_before = time.monotonic(), cpu_seconds(servers)
    (server.folder / "apps.yaml").write_text(
        deployments(
            args.deployments, args.pods, services=args.services, daemonsets=args.daemonsets, rolled=rolled
        )
    )

    def rolled_out() -> bool | str:
        total, running, ready, left = server.rollout_counts(old)
        fewest_ready[0] = min(fewest_ready[0], ready)
        return (total == all_pods and running == all_pods and not left) or (
            f"{total} pods, {running} running, {ready} ready; "
            f"{left} of {rolled} Deployments still with pods of the old template"
        )

    await wait_for("rollout", rolled_out, args.timeout, every=2.0)
    figures["commit_to_rolled_out_s"] = round(time.monotonic() - committed, 2)
    figures["rollout_cpu_s"] = round(cpu_seconds(servers) - cpu_before, 1)
    after_sum, after_count = histogram(server.metrics(), "gitops_controller_pass_seconds")
    figures["rollout_passes"] = int(after_count - pass_count)
    figures["rollout_pass_s"] = (
        round((after_sum - pass_sum) / (after_count - pass_count), 3) if after_count > pass_count else None
    )
    figures["rollout_fewest_ready"] = fewest_ready[0]
    fleet.drain(calls)
    figures["rollout_sync_ms_p50"] = percentile_ms(calls.seconds, 0.50)
    figures["rollout_sync_ms_p99"] = percentile_ms(calls.seconds, 0.99)
    figures["rollout_sync_failures"] = calls.failures
    figures["rollout_sync_deferred"] = calls.deferred
    served = merged_buckets(fronts, "gitops_agent_sync_seconds")
    for q in (0.50, 0.99):  # in the server, from the handler's start to its answer: at most
        at_most = bucket_quantile(served_before, served, q)
        figures[f"rollout_server_sync_ms_p{q * 100:.0f}"] = round(at_most * 1000, 2)
    say(
        f"rollout: {rolled} Deployments' {replaced} pods replaced in {figures['commit_to_rolled_out_s']} s "
        f"({figures['rollout_passes']} controller passes of {figures['rollout_pass_s']} s on average, "
        f"server CPU {figures['rollout_cpu_s']} s); at least {fewest_ready[0]} of {all_pods} pods ready "
        f"at each look; agents' sync calls p50 {figures['rollout_sync_ms_p50']} ms, "
        f"p99 {figures['rollout_sync_ms_p99']} ms, {calls.failures} failed, {calls.deferred} deferred (429) "
        f"(in the server: p50 <= {figures['rollout_server_sync_ms_p50']} ms, "
        f"p99 <= {figures['rollout_server_sync_ms_p99']} ms)"
    )


def _exit_on_term(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=20000)
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument(
        "--services",
        action="store_true",
        help="a ClusterIP Service for each Deployment; the witness then times commit to every endpoint held",
    )
    parser.add_argument(
        "--daemonsets",
        type=int,
        default=0,
        help="DaemonSets besides the Deployments, a pod each on every hollow node (not counted in --pods)",
    )
    parser.add_argument("--db", default="", help="SQLAlchemy URL (default: SQLite in a temporary folder)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between an agent's ticks")
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=10.0,
        help="as the real agent: long-poll for news and sync only on news, a change or every HEARTBEAT "
        "seconds (0: sync every tick)",
    )
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections the agents share")
    parser.add_argument(
        "--usage-every",
        type=float,
        default=15.0,
        help="seconds between the agents' reports of their pods' CPU and memory use, as the real "
        "agent's (0: none)",
    )
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds after all pods run before measuring"
    )
    parser.add_argument("--quiet", type=float, default=10.0, help="seconds of the no-op measurement")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds each phase may take")
    parser.add_argument(
        "--rollout",
        type=float,
        default=0.0,
        help="after the quiet window, give this share of the Deployments (0-1) a new image and time "
        "their rolling update (0: none)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (database, server log)"
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="the server's log level (its log is kept with --keep)",
    )
    parser.add_argument(
        "--api-replicas",
        type=int,
        default=0,
        help="run this many `gitops serve --api-only` on the database too, the agents spread over "
        "them (the leader then only syncs and runs the controller)",
    )
    parser.add_argument(
        "--witnesses",
        type=int,
        default=50,
        help="tainted nodes syncing once a second from a process of their own (0: none)",
    )
    parser.add_argument(
        "--witness-slice",
        choices=("short", "default"),
        default="short",
        help="the witness's CPU slice: short (run as soon as it wakes, as an agent with a CPU of "
        "its own would be) or the kernel's default (it waits for the CPUs it shares)",
    )
    parser.add_argument(
        "--witness-phases",
        choices=("even", "random"),
        default="even",
        help="the witness's agents' calls evenly apart (none waits for another's in its process, "
        "as an agent alone on its host) or each at a phase drawn at random",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="with --api-replicas: each replica on a CPU of its own (0, 1, ...), the leader, this "
        "process and the witness on the others, as on machines of their own",
    )
    parser.add_argument(
        "--agent-processes",
        type=int,
        default=1,
        help="processes the hollow agents are spread over (default 1)",
    )
    parser.add_argument(
        "--agents-nice",
        type=int,
        default=0,
        help="the hollow agents' processes' niceness (19: the lowest priority)",
    )
    parser.add_argument(
        "--agents-idle",
        action="store_true",
        help="the hollow agents' processes at the idle policy (SCHED_IDLE): they take only the CPU "
        "the control plane and the witness leave, as agents on hosts of their own would",
    )
    parser.add_argument(
        "--capture",
        action="store_true",
        help="also time the witness's calls by the kernel's timestamps of their packets on "
        "loopback, from the request leaving the witness to the answer leaving the server (root)",
    )
    parser.add_argument("--capture-of", help=argparse.SUPPRESS)  # the capture's own process
    parser.add_argument("--witness-of", help=argparse.SUPPRESS)  # the witness's own process
    parser.add_argument("--agents-of", help=argparse.SUPPRESS)  # an agents' process (`Fleet`)
    parser.add_argument("--agent-share", default="0/1", help=argparse.SUPPRESS)  # which of them: k/count
    args = parser.parse_args(argv)
    if args.witness_of:
        if args.witness_slice == "short":
            short_slice()  # (its loop's thread, and the threads it starts)
        asyncio.run(
            be_witness(
                [int(p) for p in args.witness_of.split(",")],
                os.environ[JOIN_TOKEN_ENV],
                args.witnesses,
                args.witness_phases,
            )
        )
        return {}
    if args.capture_of:
        be_capture([int(p) for p in args.capture_of.split(",")])
        return {}
    if args.agents_of:
        asyncio.run(be_agents(args, [int(p) for p in args.agents_of.split(",")], os.environ[JOIN_TOKEN_ENV]))
        return {}
    tmp = Path(tempfile.mkdtemp(prefix="gitops-scale-"))
    db = args.db or f"sqlite:///{tmp / 'state.db'}"
    join_token = secrets.token_hex(24)
    figures: dict[str, Any] = {
        "nodes": args.nodes,
        "pods": args.pods,
        "deployments": args.deployments,
        "services": args.deployments if args.services else 0,
        "daemonsets": args.daemonsets,
        "daemonset_pods": args.daemonsets * args.nodes,
    }
    figures["db"] = "sqlite" if db.startswith("sqlite") else db.split(":", 1)[0]
    say(
        f"scale: {args.nodes} hollow nodes, {args.pods} pods in {args.deployments} Deployments, "
        + (f"{figures['daemonset_pods']} in {args.daemonsets} DaemonSets, " if args.daemonsets else "")
        + figures["db"]
    )
    alone: list[set[int]] = [{i} for i in range(args.api_replicas)] if args.pin else []
    rest = set(range(os.cpu_count() or 1)) - set().union(*alone) if args.pin else None
    if args.pin and not rest:
        parser.error(f"--pin: {os.cpu_count()} CPUs leave none beside {args.api_replicas} replicas")
    if rest is not None:
        os.sched_setaffinity(0, rest)  # this process and the witness it starts
    server = start_server(tmp, db, join_token, args.log_level, cpus=rest)
    servers = [server]
    try:
        servers += [
            start_server(tmp, db, join_token, args.log_level, replica=i + 1, cpus=alone[i] if alone else None)
            for i in range(args.api_replicas)
        ]
    except Exception:
        for s in servers:
            s.stop()
        raise
    figures["api_replicas"] = args.api_replicas
    figures["pinned"] = args.pin
    figures["witness_slice"] = args.witness_slice
    figures["witness_phases"] = args.witness_phases
    figures["agent_processes"] = args.agent_processes
    figures["agents_nice"] = args.agents_nice
    figures["agents_idle"] = args.agents_idle
    figures["usage_every"] = args.usage_every
    # Stopped with SIGTERM, the bench stops its server too (and removes its folder): it
    # left the server running.
    terminated = signal.signal(signal.SIGTERM, _exit_on_term)
    try:
        asyncio.run(run(args, servers, join_token, figures))
    except Exception as exc:  # the figures so far are still printed
        figures["error"] = f"{type(exc).__name__}: {exc}"
        say(f"error: {figures['error']}")
        for s in servers:
            say(f"{s.log.name} (last lines):\n{s.log.read_text()[-2000:]}")
    finally:
        figures["rss_mib"] = round(server.rss_mib(), 1)
        if args.api_replicas:
            figures["api_rss_mib"] = round(max(s.rss_mib() for s in servers[1:]), 1)
        signal.signal(signal.SIGTERM, terminated)
        for s in reversed(servers):
            s.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            say(f"kept {tmp}")
    if figures.get("commit_to_bound_s"):
        pods = args.pods + figures["daemonset_pods"]
        kube = pods / KUBE_SCHEDULER_PODS_PER_S
        figures["kube_scheduler_s"] = round(kube, 1)
        say(
            f"baseline: kube-scheduler at {KUBE_SCHEDULER_PODS_PER_S:.0f} pods/s binds {pods} pods in "
            f"{kube:.1f} s; commit to bound here {figures['commit_to_bound_s']} s "
            f"({kube / figures['commit_to_bound_s']:.2f}x)"
        )
    say(f"server peak RSS {figures['rss_mib']} MiB")
    print(json.dumps(figures), flush=True)
    return figures


if __name__ == "__main__":
    main()

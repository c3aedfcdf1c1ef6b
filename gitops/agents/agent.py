"""The node agent: makes one Docker host run exactly the pods the control plane gave it.

Each tick the agent lists its own containers (by ownership label), reports their status
with its heartbeat, receives its pods and every service's endpoints, and converges:

- a pod without its containers gets them, as `gitops.agents.plan` orders them (an infra
  container holding the network of a pod of several, init containers one at a time, then
  sidecars and app containers). Files from ConfigMaps and the downward API are written to
  the agent's state folder, files from Secrets to a tmpfs, never the node's disk; both are
  bind-mounted read-only. emptyDir, claim and hostPath volumes are mounted (`docs/pods.md`);
  postStart hooks run once a container has started, preStop hooks before it stops;
- a container whose pod is gone, or whose template differs, is stopped and removed;
- an exited container is restarted as its restartPolicy says, with Kubernetes' backoff
  (10 s doubling to 5 min, reset after 10 min of running);
- a container that is already running is adopted as it is: an agent restart never
  recreates or restarts anything.

Then it programs iptables so each service VIP reaches its ready pods: a pod on this node by
its container address, a pod elsewhere by its node's address and published host port. A
rule that cannot be programmed is skipped and reported with the next heartbeat; a failing
iptables is reported too, and never keeps the node from running its pods.

What it reports and logs about a pod (reasons, probe output, log tails) has that pod's
Secret values redacted first, and probe failure text is truncated. Probes go to the pod's
own address; a probe's `host` is honoured only when the server allows it
(`gitops serve --allow-probe-hosts`), since the agent probes from the host's network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import ipaddress
import json
import os
import platform
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from gitops.agents.hostpath import host_path_source
from gitops.agents.iptables import Backend, IptablesProxy, ServiceRule
from gitops.agents.logs import LogStreams
from gitops.agents.network import NetworkError, PodNetwork, Route, bridge_name, gateway, pod_network_name
from gitops.agents.nftables import PROXY_ERRORS, NftablesError, NftablesProxy, choose_proxy
from gitops.agents.plan import (
    BACKOFF_MAX,
    BACKOFF_START,
    Outage,
    PodMemory,
    Start,
    container_runs,
    crash_loop,
    exit_text,
    has_infra,
    name_of,
    plan_node,
    runs,
    should_restart,
)
from gitops.agents.podconf import (
    HostResolv,
    PodFacts,
    field_value,
    pod_uid,
    read_host_resolv,
    resolv_conf,
    service_env,
)
from gitops.agents.probes import Prober, Verdict, real_handler
from gitops.agents.runtime import (
    INFRA,
    ContainerInfo,
    ImageMissing,
    MountSpec,
    NonRootRefused,
    RunKey,
    Runtime,
    RuntimeFailure,
    RuntimeUnavailable,
)
from gitops.agents.usage import ContainerUsage, UsageSampler
from gitops.codec import decode_as, encode
from gitops.edits import EditMismatch, edited_service
from gitops.loop import Backoff, Cadence, Loop
from gitops.model import (
    Container,
    ContainerStatus,
    Hook,
    NodeName,
    Phase,
    Pod,
    PodId,
    PodStatus,
    ServiceEndpoints,
    Taint,
)
from gitops.redact import Redactor, truncate
from gitops.schemas.checks import is_label_value

log = structlog.get_logger(__name__)

# How long one long-poll waits for news before it is asked again: under the 60 s an HTTP
# proxy commonly allows an idle answer (nginx's `proxy_read_timeout`). Every renewal costs
# the server a call whose objects live as long as it waits: at 5,000 nodes, renewed every
# 25 s, they were most of what the collector's young collections walked (kubelet's watches
# last 5-10 minutes).
WATCH_SECONDS = 55.0
# Seconds an idle connection to the control plane is kept for the next call: longer than a
# heartbeat (10 s), so that each one does not open a connection of its own (httpx's default
# is 5 s), and shorter than the control plane keeps it (`gitops.server.KEEP_ALIVE_SECONDS`,
# 75 s), so that the agent is the one to drop it and never sends on one being closed.
KEEPALIVE_SECONDS = 60.0
_LIMITS = httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS)
TICK_STUCK_SECONDS = 90.0  # no tick began for this long (three sync timeouts): stop watching
_HELD = ("pods", "services", "routes", "claims")  # parts of a reply kept in `Agent._held`
_DELTA = ("services_from", "services_changed", "services_removed")  # applied by `_complete`, then dropped

LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 4000
MAX_TEXT = 1000  # reasons and probe output, as reported
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")
TERMINATION_MESSAGE_BYTES = 4096
VOLUME_SWEEP_SECONDS = 30.0  # how often emptyDir volumes of pods gone from the node are looked for
NETWORK_RECHECK_SECONDS = 10.0  # how often an unchanged pod network is read again and repaired


def private_directory(path: Path) -> None:
    """Make `path` a folder only we can use, or raise OSError saying why it cannot be: it
    must not be a symbolic link, must be ours, and must let no one else in."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{path} is not a folder (a symbolic link?); refusing to write Secret files there")
    if info.st_uid != os.geteuid():
        raise OSError(
            f"{path} belongs to uid {info.st_uid}, not to this agent; refusing to write Secret files there"
        )
    if info.st_mode & 0o077:
        os.chmod(path, 0o700, follow_symlinks=False)


def filesystem_type(path: Path) -> str:
    """The type of the filesystem `path` is (or would be) on, from /proc/self/mountinfo."""
    target = path
    while not target.exists() and target != target.parent:
        target = target.parent
    real = os.path.realpath(target)
    best, kind = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields, _, rest = line.partition(" - ")
                mount_point = fields.split()[4].replace("\\040", " ")
                inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, kind = mount_point, rest.split()[0]
    except OSError:
        return ""
    return kind


def host_capacity() -> tuple[int, int]:
    """(millicores, memory bytes) of this host."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    memory = 0
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
                break
    return cpus * 1000, memory


# Go's names for machine architectures, as `kubernetes.io/arch` has them.
ARCHES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def well_known_labels(node: str, *, zone: str = "", region: str = "") -> dict[str, str]:
    """The labels kubelet puts on every node, so that manifests selecting on them (such as
    `nodeSelector: {kubernetes.io/os: linux}`) schedule: hostname, os and arch, and the
    topology zone and region when given (`gitops agent --zone/--region`). A node name too
    long for a label value gets no hostname label."""
    machine = platform.machine().lower()
    labels = {
        "kubernetes.io/os": platform.system().lower(),
        "kubernetes.io/arch": ARCHES.get(machine, machine),
    }
    if is_label_value(node):
        labels["kubernetes.io/hostname"] = node
    if zone:
        labels["topology.kubernetes.io/zone"] = zone
    if region:
        labels["topology.kubernetes.io/region"] = region
    return labels


def default_address() -> str:
    """The IPv4 address of the interface holding the default route (no packet is sent)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "route", "show", "default"], capture_output=True, text=True, check=False
    ).stdout
    words = out.split()
    if "dev" in words:
        dev = words[words.index("dev") + 1]
        addr = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "dev", dev], capture_output=True, text=True, check=False
        ).stdout
        for part in addr.split():
            if "/" in part and part[0].isdigit():
                return part.split("/")[0]
    return socket.gethostbyname(socket.gethostname())


@functools.lru_cache(maxsize=64)
def _network(cidr: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(cidr)


def _in_range(address: str, cluster_cidr: str) -> bool:
    try:
        return bool(cluster_cidr) and ipaddress.IPv4Address(address) in _network(cluster_cidr)
    except ValueError:
        return False


def service_rules(
    services: Sequence[ServiceEndpoints], node: NodeName, cluster_cidr: str = ""
) -> list[ServiceRule]:
    """Each Service port's backends: a pod's own address and container port when it is on
    this node or in the cluster's pod range (routed to its node); else (a node without a pod
    network, from before it) its node's address and published host port."""
    rules = []
    for svc in services:
        if not svc.vip:
            continue  # headless and ExternalName Services have no virtual IP
        for port, endpoints in svc.endpoints:
            backends: list[Backend] = []
            for ep in endpoints:
                local = ep.node == node
                if ep.pod_ip and (local or _in_range(ep.pod_ip, cluster_cidr)):
                    backends.append(Backend(ep.pod_ip, ep.container_port, local))
                elif not local and ep.host_port and ep.node_address:
                    backends.append(Backend(ep.node_address, ep.host_port, False))
            rules.append(
                ServiceRule(
                    service=f"{svc.namespace}/{svc.name}:{port.name or port.port}",
                    vip=svc.vip,
                    port=port.port,
                    protocol=port.protocol,
                    backends=tuple(backends),
                    node_port=port.node_port,
                    load_balancer=svc.type == "LoadBalancer",
                    affinity_seconds=svc.session_affinity_seconds,
                    external_local=svc.external_local,
                    internal_local=svc.internal_local,
                )
            )
    return rules


class ServiceMemo:
    """The Services of each sync reply, decoded, with their proxy rules, kept per Service
    while its JSON stays the same: a tick decodes and builds rules for the Services that
    changed only (decoding 5,000 Services takes seconds), and hands the proxy the very rule
    objects of the last tick for the others, so that it looks at the changed ones only."""

    def __init__(self, node: NodeName) -> None:
        self.node = node
        self._kept: dict[tuple[str, str], tuple[Any, str, ServiceEndpoints, list[ServiceRule]]] = {}

    def update(
        self, encoded: Sequence[Any], cluster_cidr: str
    ) -> tuple[list[ServiceEndpoints], list[ServiceRule]]:
        """The Services of `encoded` (a reply's JSON, never changed in place) and their rules."""
        kept: dict[tuple[str, str], tuple[Any, str, ServiceEndpoints, list[ServiceRule]]] = {}
        services: list[ServiceEndpoints] = []
        rules: list[ServiceRule] = []
        for data in encoded:
            key = (str(data.get("namespace")), str(data.get("name")))
            seen = self._kept.get(key)
            if seen is None or seen[1] != cluster_cidr or not (seen[0] is data or seen[0] == data):
                service = decode_as(ServiceEndpoints, data)
                seen = (data, cluster_cidr, service, service_rules([service], self.node, cluster_cidr))
            kept[key] = seen
            services.append(seen[2])
            rules += seen[3]
        self._kept = kept
        return services, rules


def changed_services(
    held: Sequence[dict[str, Any]], changed: Sequence[dict[str, Any]], removed: Sequence[Sequence[str]]
) -> list[dict[str, Any]]:
    """The Services `held` (a reply's JSON, in the control plane's order: by namespace and
    name) with those `changed` since put in their place (made of the one held when they
    come as edits of it: `gitops.edits`) and those `removed` (namespace, name) taken out.
    Edits of a Service not held, or that do not fit it, raise `EditMismatch`."""
    by_key = {(str(s.get("namespace")), str(s.get("name"))): s for s in held}
    for namespace, name in removed:
        by_key.pop((namespace, name), None)
    for entry in changed:
        key = (str(entry.get("namespace")), str(entry.get("name")))
        if "edits" not in entry:
            by_key[key] = entry
        elif key in by_key:
            by_key[key] = edited_service(by_key[key], entry)
        else:
            raise EditMismatch(f"edits of Service {key[0]}/{key[1]}, which is not held")
    return [by_key[key] for key in sorted(by_key)]


def _edits_taken(last: Mapping[str, Any] | None) -> dict[str, bool]:
    """The field asking for Services as edits of those held (`gitops.edits`), when the last
    reply said this control plane takes it (`SyncReply.endpoint_edits`): one of an older
    release refuses a field it does not know."""
    return {"endpoint_edits": True} if last is not None and last.get("endpoint_edits") else {}


class NodeRefused(Exception):
    """The server will not have this node (its name is held by a live node, a bad join
    token, or a node description it cannot accept): the agent stops."""


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # FastAPI's validation errors: say which field
        detail = "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg', '')}" for d in detail
        )
    return f"HTTP {response.status_code}: {detail}"


@dataclass(frozen=True)
class AgentConfig:
    # The control plane's URL, or several separated by commas (control planes sharing one
    # database): the agent talks to one and moves to the next when it cannot reach it.
    server: str
    node: NodeName
    join_token: str
    state_dir: Path
    address: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # beside (and over) the well-known ones
    taints: tuple[Taint, ...] = ()
    zone: str = ""  # topology.kubernetes.io/zone
    region: str = ""  # topology.kubernetes.io/region
    # Seconds between ticks: the node's containers are looked at, and the control plane is
    # told when something changed here.
    interval: float = 1.0
    # Between changes the agent waits on the control plane's long-poll (`/watch`), which
    # answers within 0.1 s of a change of its pods or the Services, and syncs only to report
    # a change of its own or, at least every `heartbeat_seconds`, that it is alive. 0: sync
    # every tick (as with a control plane without `/watch`).
    heartbeat_seconds: float = 10.0
    iptables: str = "iptables"
    chain_prefix: str = "GITOPS"
    # Services on nftables or iptables: "auto" takes nftables where it works (and `iptables`
    # is the default one), gitops.agents.nftables.choose_proxy.
    proxy_mode: str = "auto"
    # How long a terminating pod keeps running after it left the endpoints: every agent
    # syncs its iptables within one interval, so two intervals cover them all.
    drain_seconds: float = 2.0
    capacity: tuple[int, int] | None = None
    # Where Secret files are written: a folder on tmpfs (default: /dev/shm/gitops/<node>).
    secret_dir: Path | None = None
    cluster_domain: str = "cluster.local"
    dns_port: int = 53  # where the cluster DNS answers, on the pod bridge's gateway address
    # Seconds between measurements of the containers' CPU and memory; each goes with the
    # agent's next call (its heartbeat at the latest), never in a call of its own.
    usage_interval: float = 15.0


@dataclass
class Agent:
    config: AgentConfig
    runtime: Runtime
    clock: Callable[[], float] = time.time
    _token: str = ""
    _proxy: IptablesProxy | NftablesProxy | None = None
    _service_memo: ServiceMemo | None = None  # the last Services and their rules, kept while unchanged
    _memory: dict[RunKey, PodMemory] = field(default_factory=dict)
    _waiting: dict[PodId, str] = field(default_factory=dict)
    _outages: list[Outage] = field(default_factory=list)
    _outage_since: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _http: httpx.Client | None = None
    _server_index: int = 0  # which of the control planes given this agent talks to
    _watching: bool = False  # a long-poll is answered: syncs may wait for news or the heartbeat
    _news: bool = False  # the long-poll saw the pods, Services or a log request move
    _synced: threading.Event = field(default_factory=threading.Event)  # set after each sync call
    _sent: tuple[str, float] = ("", float("-inf"))  # digest of the last report sent, and when
    # When the next heartbeat and tick are due, each at a phase of this agent's own: a sync
    # for news does not move them (`gitops.loop.Cadence`).
    _beat: Cadence | None = None
    _ticks: Cadence | None = None
    _ticked_at: float = float("-inf")  # monotonic time the last tick began (`_may_watch`)
    _arrived: dict[str, Any] | None = None  # a watch answer with Services changes, for the next tick
    _arrived_lock: threading.Lock = field(default_factory=threading.Lock)
    _last_reply: dict[str, Any] | None = None  # the last reply, for ticks that skip the call
    _watcher: threading.Thread | None = None
    _assigned_cache: dict[PodId, Pod] = field(default_factory=dict)
    prober: Prober | None = None
    _verdicts: dict[RunKey, Verdict] = field(default_factory=dict)
    _volumes_swept: float = 0.0
    # The claims whose volumes this node keeps, from an authoritative control plane (None:
    # not known, and no claim volume is deleted).
    _claims: set[str] | None = None
    _claims_changed: bool = False
    _hooks: set[str] = field(default_factory=set)  # containers whose postStart hook runs
    _wanted: set[PodId] = field(default_factory=set)  # the pods of the last `converge`: their files stay
    _hook_handler: Any = None
    _logs: dict[tuple[str, float], str] = field(default_factory=dict)
    _messages: dict[tuple[str, float], str] = field(default_factory=dict)  # termination messages, per exit
    _stopped: list[PodId] = field(default_factory=list)
    _busy: bool = False  # the control plane answered the last sync 429 (busy writing): said once
    _removing: dict[str, threading.Thread] = field(default_factory=dict)
    _killing: set[str] = field(default_factory=set)  # of `_removing`: stopped, to be kept
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: Loop | None = None
    _proxy_problems: list[str] = field(default_factory=list)
    # The last pods, Services and routes the control plane sent, with their versions: a
    # reply leaves out (null) what has not changed since the versions a request names.
    _held: dict[str, Any] = field(default_factory=dict)
    allow_probe_hosts: bool = False  # the server's policy, from each sync reply
    allow_host_paths: tuple[str, ...] = ()  # where hostPath volumes may be: the server's, from each sync
    allow_privileged: bool = False  # the server's --allow-privileged, from each sync
    _address: str = ""  # the node's address as registered: where pod ports are published
    _pod_cidr: str = ""  # this node's pod subnet, from the control plane ("" from an older one)
    _cluster_cidr: str = ""
    _network: str = ""  # the Docker network of the pods, once it exists
    _bridge: str = ""
    _net: PodNetwork | None = None
    _net_wanted: tuple[Any, ...] = ()  # what the pod network was last synced to
    _net_synced: float = float("-inf")
    _net_dirty: bool = False  # a container started since: its bridge port wants hairpin
    _net_problems: list[str] = field(default_factory=list)
    _dns: Any = None  # the cluster DNS server (gitops.agents.dns.ClusterDns), once started
    _services: list[ServiceEndpoints] = field(default_factory=list)
    _host_resolv: HostResolv | None = None
    _dns_skipped: list[str] = field(default_factory=list)  # what the zone could not carry
    _log_streams: LogStreams | None = None  # the logs read for `gitops logs`, once asked for one
    _usage: UsageSampler | None = None  # measures the containers' CPU and memory (`gitops.agents.usage`)
    _usage_sent: Mapping[tuple[PodId, str], ContainerUsage] | None = None  # the figures last reported

    # --- control plane --------------------------------------------------------------

    @property
    def server(self) -> str:
        """The control plane this agent talks to now (one of `AgentConfig.server`)."""
        servers = [s.strip() for s in self.config.server.split(",") if s.strip()]
        return servers[self._server_index % len(servers)]

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.server, timeout=30.0, limits=_LIMITS)
        return self._http

    def _next_server(self, error: Exception) -> None:
        """The control plane could not be reached: the next call goes to the next one given."""
        if "," not in self.config.server:
            return
        unreachable = self.server
        self._server_index += 1
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._log_streams is not None:
            self._log_streams.server = self.server
        log.warning("agent.server_unreachable", server=unreachable, error=str(error), next=self.server)

    def _tick_or_move(self) -> None:
        try:
            self.tick()
        except httpx.TransportError as exc:
            self._next_server(exc)
            raise

    @property
    def _token_file(self) -> Path:
        return self.config.state_dir / "node-token"

    def _saved_token(self) -> str:
        try:
            return self._token_file.read_text().strip()
        except OSError:
            return ""

    def _save_token(self, token: str) -> None:
        folder = self.config.state_dir
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = folder / "node-token.new"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        partial.replace(self._token_file)

    def _saved_subnet(self) -> str:
        try:
            return (self.config.state_dir / "pod-cidr").read_text().strip()
        except OSError:
            return ""

    def _save_subnet(self, subnet: str) -> None:
        """Kept beside the node token: after a restart the agent asks for the subnet its
        pods use, which a control plane that lost its state then gives back."""
        folder = self.config.state_dir
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = folder / "pod-cidr.new"
        partial.write_text(subnet + "\n")
        partial.replace(folder / "pod-cidr")

    def register(self) -> str:
        """Register with the join token, presenting this node's last token (kept 0600 in the
        state folder) so that a restarted agent takes its own name back. Raises
        `NodeRefused` when a live node holds the name."""
        cfg = self.config
        cpu, memory = cfg.capacity or host_capacity()
        node = {
            "name": cfg.node,
            "address": cfg.address or default_address(),
            "cpu_milli": cpu,
            "memory_bytes": memory,
            "labels": {**well_known_labels(cfg.node, zone=cfg.zone, region=cfg.region), **dict(cfg.labels)},
            "taints": [{"key": t.key, "value": t.value, "effect": t.effect} for t in cfg.taints],
            "pod_cidr": self._pod_cidr or self._saved_subnet(),
        }
        current = self._token or self._saved_token()
        headers = {"X-Gitops-Join-Token": cfg.join_token}
        if current:
            headers["Authorization"] = f"Bearer {current}"
        response = self.http.post("/agent/v1/register", json={"node": node}, headers=headers)
        if response.status_code in (401, 409, 422):
            raise NodeRefused(f"the server refused node {cfg.node}: {_detail(response)}")
        response.raise_for_status()
        body = response.json()
        self._token = str(body["token"])
        self._address = str(node["address"])
        if body.get("pod_cidr") and body["pod_cidr"] != self._pod_cidr:
            self._pod_cidr, self._network = str(body["pod_cidr"]), ""
            self._save_subnet(self._pod_cidr)
        self._cluster_cidr = str(body.get("cluster_cidr") or "")
        self._save_token(self._token)
        log.info(
            "agent.registered", node=cfg.node, address=node["address"], cpu_milli=cpu, memory_bytes=memory
        )
        return self._token

    def _runtime_down(self, reason: str) -> None:
        """The runtime cannot be reached: say so with the heartbeat (the node turns NotReady
        and its pods leave every endpoint) and converge nothing until it is back."""
        now = self.clock()
        if self._outage_since is None:
            self._outage_since = now
            log.error("agent.runtime_unavailable", reason=reason)
        self._sync_call([], runtime_error=reason)

    def _runtime_back(self) -> None:
        if self._outage_since is None:
            return
        now = self.clock()
        self._outages = [*self._outages[-9:], Outage(self._outage_since, now)]
        log.info("agent.runtime_back", down_for=round(now - self._outage_since, 1))
        self._outage_since = None

    def _sync_call(self, statuses: Sequence[PodStatus], *, runtime_error: str = "") -> dict[str, Any]:
        if not self._token:
            self.register()
        payload: dict[str, Any] = {
            "statuses": [encode(s) for s in statuses],
            "stopped": list(self._stopped),
            "proxy_problems": self._proxy_problems[:1000],
            "runtime_error": runtime_error,
            "have_pods": self._held.get("pods_version", ""),
            "have_services": self._held.get("services_version", ""),
            "service_deltas": True,  # what changed since `have_services` will do (`_complete`)
        }
        said = hashlib.blake2b(
            json.dumps(
                [payload[k] for k in ("statuses", "stopped", "proxy_problems", "runtime_error")]
            ).encode(),
            digest_size=16,
        ).hexdigest()
        if self._may_skip(said):
            # New measurements wait for the next call the agent makes anyway: its heartbeat
            # at the latest, so they are at most a heartbeat old when sent (Kubernetes'
            # cAdvisor and metrics-server pipeline is about as stale). A call made for them
            # alone was a fifth of a 5,000-node control plane's calls (docs/scale.md).
            return self._complete(self._quiet_reply())
        usage = self._usage.latest if self._usage is not None else None
        if usage is not None and usage is not self._usage_sent:
            payload["measured"] = usage_rows(usage)
            self._usage_sent = usage
        news, self._news = self._news, False
        last = self._last_reply
        payload.update(_edits_taken(last))
        omitted = False
        if last is not None and "report_held" in last:
            # This control plane compares reports by the agent's digest, and one it holds
            # need not be sent again (`SyncRequest.report_omitted`): at 30 pods a node, the
            # statuses were most of each heartbeat's bytes and of the server's work on it.
            payload["report_digest"] = said
            omitted = last["report_held"] == said and not payload["stopped"]
        response = self._post_sync(
            {**payload, "statuses": [], "report_omitted": True} if omitted else payload
        )
        if omitted and response.status_code == 200 and response.json().get("report_held") != said:
            # It no longer holds that report (this node's pods moved since, or it restarted):
            # sent whole at once.
            response = self._post_sync(payload)
        if response.status_code == 429 and self._last_reply is not None:
            # The control plane is writing a pass of many pods: it took the heartbeat, and the
            # report goes again next tick (not marked sent); what the agent holds stands.
            self._news = self._news or news
            if "measured" in payload:
                self._usage_sent = None
            if not self._busy:
                log.info("agent.server_busy", detail=_detail(response))
            self._busy = True
            return self._complete(self._quiet_reply())
        self._busy = False
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        self._sent = (said, time.monotonic())
        if self._beat is not None:
            self._beat.done(self._sent[1])
        completed = self._complete(result)
        self._last_reply = {k: v for k, v in completed.items() if k not in _HELD}
        self._synced.set()
        return completed

    def _post_sync(self, payload: dict[str, Any]) -> httpx.Response:
        """POST `payload` to this node's sync route, registering again if the token is refused."""
        url = f"/agent/v1/nodes/{self.config.node}/sync"
        response = self.http.post(url, json=payload, headers={"Authorization": f"Bearer {self._token}"})
        if response.status_code == 401:
            self.register()
            response = self.http.post(url, json=payload, headers={"Authorization": f"Bearer {self._token}"})
        return response

    def _may_skip(self, said: str) -> bool:
        """Whether this tick need not call: the long-poll is on and saw nothing new, this
        report says what the last one did, the heartbeat is not due, and the last reply
        was a settled control plane's with no log request in it."""
        last = self._last_reply
        if last is None:
            return False
        # The control plane says how often it needs a heartbeat (a quarter of its NotReady
        # grace): an agent heartbeating every 10 s made a 6-s grace flap.
        every = min(self.config.heartbeat_seconds, float(last.get("heartbeat_seconds") or "inf"))
        now = time.monotonic()
        if self._beat is None:
            self._beat = Cadence.starting(every, now)
        self._beat.every(every, now)
        return (
            self.config.heartbeat_seconds > 0
            and self._watching
            and not self._news
            and bool(last.get("authoritative", True))
            and not last.get("logs")
            and said == self._sent[0]
            and not self._beat.is_due(now)
        )

    def _quiet_reply(self) -> dict[str, Any]:
        """The reply a call would get now: the last one, with what the agent holds."""
        assert self._last_reply is not None
        return {
            **self._last_reply,
            "pods": None,
            "services": None,
            "pods_version": self._held.get("pods_version", ""),
            "services_version": self._held.get("services_version", ""),
            "logs": [],
        }

    def _may_watch(self) -> bool:
        """Whether to long-poll now: registered, holding a reply's versions, and ticking. A
        watch is a heartbeat to the control plane: an agent whose ticks stopped (a Docker
        call that never returns) stops watching after `TICK_STUCK_SECONDS`, so that its
        node goes NotReady and its pods are replaced."""
        return (
            bool(self._token)
            and "pods_version" in self._held
            and time.monotonic() - self._ticked_at < TICK_STUCK_SECONDS
        )

    def _watch(self) -> None:
        """Long-poll the control plane for news (in a thread of its own): a change of this
        node's pods, of the Services, or a log request wakes the tick at once. Stops
        watching for good when the control plane has no `/watch` (an older release)."""
        http: httpx.Client | None = None
        failures = 0
        try:
            while not self._stop.is_set():
                if not self._may_watch():
                    self._watching = False
                    self._stop.wait(self.config.interval)
                    continue
                server = self.server
                if http is None or str(http.base_url).rstrip("/") != server.rstrip("/"):
                    if http is not None:
                        http.close()
                    http = httpx.Client(base_url=server, timeout=WATCH_SECONDS + 10.0, limits=_LIMITS)
                try:
                    response = http.post(
                        f"/agent/v1/nodes/{self.config.node}/watch",
                        json={
                            "have_pods": self._held.get("pods_version", ""),
                            "have_services": self._held.get("services_version", ""),
                            "timeout": WATCH_SECONDS,
                            "service_deltas": True,  # a move of the Services comes with what changed
                            **_edits_taken(self._last_reply),
                        },
                        headers={"Authorization": f"Bearer {self._token}"},
                    )
                    if response.status_code in (404, 405):
                        log.info("agent.no_watch", server=server, reason="the control plane has no /watch")
                        return
                    response.raise_for_status()
                except httpx.HTTPError as exc:
                    self._watching = False  # every tick calls until the long-poll is back
                    failures += 1
                    log.debug("agent.watch_failed", error=str(exc), failures=failures)
                    self._stop.wait(min(float(failures), 5.0))
                    continue
                failures = 0
                self._watching = True
                answer = response.json()
                if answer.get("changed"):
                    self._synced.clear()
                    brought = answer.get("services_changed") is not None
                    if brought:  # the Services' changes came along: the next tick applies them
                        with self._arrived_lock:
                            self._arrived = answer
                    if (
                        not brought
                        or answer.get("logs")
                        or answer.get("pods_version") != self._held.get("pods_version")
                    ):
                        self._news = True  # something only a sync call brings
                    self.loop.trigger()
                    self._synced.wait(5.0)  # the next long-poll holds what this brings
        finally:
            self._watching = False
            if http is not None:
                http.close()

    def _complete(self, reply: dict[str, Any]) -> dict[str, Any]:
        """`reply` with what it left out as unchanged filled in from the replies before, and
        the Services changed since the version held applied to those held (and dropped from
        it: a later quiet tick must not apply them again to the next version)."""
        delta = {key: reply.pop(key) for key in _DELTA if key in reply}
        with self._arrived_lock:
            arrived, self._arrived = self._arrived, None
        held = self._held.get("services_version", "")
        if (
            arrived is not None
            and not delta
            and reply.get("services") is None
            and reply.get("services_version", "") in ("", held)
        ):
            # Changes a watch answer brought (this reply brought nothing newer): applied as a
            # sync reply's would be, with no call made for them.
            delta = {key: arrived[key] for key in _DELTA if key in arrived}
            reply["services_version"], reply["routes"] = arrived["services_version"], arrived.get("routes")
            self._synced.set()  # the watch may ask again, holding them
        if reply.get("services") is None and delta.get("services_changed") is not None:
            services = None
            crossed = delta.get("services_from") != self._held.get("services_version")
            if not crossed and "services" in self._held:
                try:
                    services = changed_services(
                        self._held["services"], delta["services_changed"], delta.get("services_removed") or []
                    )
                except EditMismatch as exc:
                    log.warning("agent.service_edits_refused", error=str(exc))
            if services is not None:
                self._held["services"] = services
                self._held["services_version"] = reply["services_version"]
                if reply.get("routes") is not None:
                    self._held["routes"] = reply["routes"]
            elif not crossed or "services" not in self._held:  # they do not fit: ask for all
                self._held["services_version"] = ""
            # Else changes since another version than the one held (a watch's answer and a sync
            # reply crossing): what it holds stands, with its version, and the next call asks
            # from there. Asking for all instead fetched every Service (33 MB at 1,500).
            reply["services"] = self._held.get("services", [])
            reply["routes"] = self._held.get("routes", [])
            reply["services_version"] = self._held["services_version"]
        for part, version, along in (
            ("pods", "pods_version", ("claims",)),
            ("services", "services_version", ("routes",)),
        ):
            if reply.get(part) is None and reply.get(version) and reply[version] == self._held.get(version):
                for name in (part, *along):
                    if name in self._held:
                        reply[name] = self._held[name]
                continue
            self._held[version] = reply.get(version, "")
            self._held[part] = reply[part] = reply.get(part) or []
            for name in along:  # absent from an older server's reply: left absent
                if reply.get(name) is not None:
                    self._held[name] = reply[name]
                else:
                    self._held.pop(name, None)
                    reply.pop(name, None)
        return reply

    # --- one tick -------------------------------------------------------------------

    def tick(self) -> None:
        self._ticked_at = time.monotonic()
        node = self.config.node
        try:
            containers = self.runtime.list(node)
        except RuntimeUnavailable as exc:
            self._runtime_down(str(exc))
            return
        self._runtime_back()
        if self._usage is None:
            self._usage = UsageSampler(self.runtime, interval=self.config.usage_interval)
        self._usage.poll(
            (c.pod, c.container, c.id) for c in containers if c.running and c.container not in ("", INFRA)
        )
        statuses = self._statuses(containers, self._assigned_cache)
        reply = self._sync_call(statuses)
        if reply.get("logs"):  # read in threads of their own: a followed log never holds up the tick
            if self._log_streams is None:
                self._log_streams = LogStreams(
                    node,
                    self.runtime,
                    server=self.server,
                    token=lambda: self._token,
                    pod_of=lambda pod_id: self._assigned_cache.get(pod_id),  # noqa: PLW0108 - replaced each tick
                    stop=self._stop,
                    clock=self.clock,
                )
            self._log_streams.handle(reply["logs"])
        self.allow_probe_hosts = bool(reply.get("allow_probe_hosts", False))
        self.allow_host_paths = tuple(str(p) for p in reply.get("allow_host_paths") or ())
        self.allow_privileged = bool(reply.get("allow_privileged", False))
        authoritative = bool(reply.get("authoritative", True))
        pods = [decode_as(Pod, p) for p in reply["pods"]]
        self._assigned_cache = {p.id: p for p in pods}
        self._cluster_cidr = str(reply.get("cluster_cidr") or self._cluster_cidr)
        if self._service_memo is None:
            self._service_memo = ServiceMemo(node)
        services, rules = self._service_memo.update(reply["services"], self._cluster_cidr)
        claims = set(reply["claims"]) if authoritative and "claims" in reply else None
        self._claims_changed |= claims != self._claims
        self._claims = claims
        # Endpoints first: traffic leaves a pod before its container is stopped.
        try:
            if self._proxy is None:
                self._proxy = choose_proxy(
                    self.config.proxy_mode,
                    reply["service_cidr"],
                    prefix=self.config.chain_prefix,
                    iptables=self.config.iptables,
                    # Unchanged endpoints cost nothing; the kernel's rules are read again (and
                    # repaired if someone changed them) every 10 s.
                    recheck_seconds=10.0,
                )
                self._proxy.install()
            self._proxy.sync(rules)
            self._proxy_problems = list(self._proxy.skipped)
        except PROXY_ERRORS as exc:
            # The node's pods still run and keep being converged; the failure is reported.
            kind = "nftables" if isinstance(exc, NftablesError) else "iptables"
            self._proxy_problems = [f"{kind} failed: {exc}"]
            log.error("agent.proxy_failed", error=str(exc))
        self._proxy_problems += self._pod_network(services, [Route(s, a) for s, a in reply.get("routes", [])])
        self.probe(pods, containers)
        changed = self.converge(pods, containers, authoritative=authoritative)
        if changed:
            # Report what we just started without waiting a whole interval.
            self._sync_call(self._statuses(self.runtime.list(node), self._assigned_cache))

    def _pod_network(self, services: list[ServiceEndpoints], routes: Sequence[Route]) -> list[str]:
        """Keep the pod network (`gitops.agents.network`) and the cluster DNS up to date;
        what cannot be done, for the heartbeat. Without a subnet from the control plane (an
        older one), pods stay on Docker's default bridge with published ports."""
        if not self._pod_cidr:
            self._services = services
            return []
        problems: list[str] = []
        cfg = self.config
        # Every tick: a network removed behind the agent's back is made again.
        name = pod_network_name(cfg.node)
        try:
            self._bridge = self.runtime.ensure_network(
                name, self._pod_cidr, gateway(self._pod_cidr), bridge_name(cfg.node)
            )
            self._network = name
        except (RuntimeFailure, RuntimeUnavailable, OSError) as exc:
            self._network = ""
            return [f"pod network {self._pod_cidr}: {exc}"]
        if self._bridge:
            if self._net is None:
                self._net = PodNetwork(prefix=cfg.chain_prefix, iptables=cfg.iptables)
            wanted = (
                self._pod_cidr,
                self._cluster_cidr or self._pod_cidr,
                tuple(routes),
                self._bridge,
                self._address,
            )
            now = self.clock()
            # Unchanged, with no container started since (its bridge port wants hairpin), the
            # kernel's state is read again and repaired every NETWORK_RECHECK_SECONDS only:
            # a sync runs several processes.
            if (
                wanted != self._net_wanted
                or self._net_dirty
                or now - self._net_synced >= NETWORK_RECHECK_SECONDS
            ):
                self._net_wanted, self._net_synced, self._net_dirty = wanted, now, False
                try:
                    self._net.sync(wanted[0], wanted[1], routes, bridge=self._bridge, address=self._address)
                    self._net_problems = list(self._net.problems)
                except NetworkError as exc:
                    self._net_problems = [f"pod network: {exc}"]
            problems += self._net_problems
            started = False
            if self._dns is None:
                problems += self._start_dns()
                started = self._dns is not None
            if self._dns is not None and (started or services != self._services):
                zone = self._dns.update(services)
                self._dns_skipped = [f"cluster DNS: {why}" for why in zone.skipped]
            problems += self._dns_skipped
        self._services = services
        return problems

    def _start_dns(self) -> list[str]:
        from gitops.agents.dns import ClusterDns  # noqa: PLC0415 - only nodes with a pod network

        address = gateway(self._pod_cidr)
        dns = ClusterDns(address, self.config.dns_port, domain=self.config.cluster_domain)
        try:
            dns.start()
        except OSError as exc:
            log.error("agent.dns_failed", address=address, error=str(exc))
            return [f"cluster DNS on {address}:{self.config.dns_port}: {exc}"]
        self._dns = dns
        log.info(
            "agent.dns_started", address=address, port=self.config.dns_port, domain=self.config.cluster_domain
        )
        return []

    def converge(
        self, pods: Sequence[Pod], containers: Sequence[ContainerInfo], *, authoritative: bool = True
    ) -> bool:
        """Plan this node (`gitops.agents.plan.plan_node`) and carry the plan out; True when
        something was started, killed or removed."""
        self._wanted = {p.id for p in pods}
        now = self.clock()
        # A container being removed is out of the plan; one being killed stays in it (running
        # until it has stopped, then exited), so its pod is not started again meanwhile: a
        # start then would reuse the run's name and replace the container being killed.
        with self._lock:
            gone = set(self._removing) - self._killing
        live = [c for c in containers if c.id not in gone]
        restarts = {pod_id: v.reason for pod_id, v in self._verdicts.items() if v.restart}
        self._verdicts = {pod_id: v for pod_id, v in self._verdicts.items() if not v.restart}
        actions = plan_node(
            pods,
            live,
            self._memory,
            now=now,
            verdicts=restarts,
            outages=self._outages,
            authoritative=authoritative,
            drain_seconds=self.config.drain_seconds,
            outage_slack=2 * self.config.interval + 1,
        )
        self._memory = dict(actions.memory)
        self._waiting = dict(actions.waiting)
        self._stopped = list(actions.stopped)
        live_ids = {c.id for c in containers}
        self._logs = {k: v for k, v in self._logs.items() if k[0] in live_ids}
        self._messages = {k: v for k, v in self._messages.items() if k[0] in live_ids}
        for remove in actions.remove:
            log.info(
                "agent.removing",
                pod=remove.container.pod,
                container=remove.container.id[:12],
                reason=remove.reason,
            )
            self._remove(remove.container, remove.grace)
        for kill in actions.kill:
            log.info(
                "agent.killing", pod=kill.container.pod, container=kill.container.id[:12], reason=kill.reason
            )
            self._remove(kill.container, kill.grace, keep=True)
        infra = {c.pod: c for c in live if c.container == INFRA and c.running}
        for start in actions.start:
            self._start(start, infra.get(start.pod.id), now)
        self._net_dirty |= bool(actions.start)
        if actions.remove or now - self._volumes_swept > VOLUME_SWEEP_SECONDS or self._claims_changed:
            self._sweep_volumes(pods, now)
        return actions.changes

    def _sweep_volumes(self, pods: Sequence[Pod], now: float) -> None:
        """Remove the emptyDir volumes of pods no longer on this node (a volume still used by
        a container being removed waits for the next sweep)."""
        self._volumes_swept = now
        self._claims_changed = False
        try:
            for name in self.runtime.remove_volumes(self.config.node, {p.id for p in pods}, self._claims):
                log.info("agent.volume_removed", volume=name)
        except Exception:
            log.exception("agent.volume_sweep_failed")

    def probe(self, pods: Sequence[Pod], containers: Sequence[ContainerInfo]) -> bool:
        """Run due probes. A liveness or startup probe that gave up marks its pod for a kill at
        the next `converge` (the restart then goes through the crash backoff); True then."""
        if self.prober is None:
            self.prober = Prober(
                real_handler(
                    self.runtime,
                    lambda: self.allow_probe_hosts,
                    lambda container: self._redactor(self._assigned_cache.get(container.pod)),
                ),
                self.clock,
            )
        by_pod = runs(c for c in containers if c.id not in self._removing)
        targets = []
        for pod in pods:
            if pod.terminating_at is not None:
                continue
            by_name = container_runs(pod, by_pod.get(pod.id, []))
            infra_runs = by_name.get(INFRA)
            infra = infra_runs[-1] if infra_runs else None
            for spec in pod.spec.all_containers:
                found = by_name.get(spec.name)
                c = found[-1] if found else None
                if c is None or not c.running or not spec.probed:
                    continue
                if infra is not None:  # probes go to the pod's address, which its infra container holds
                    c = dataclasses.replace(c, pod_ip=infra.pod_ip)
                targets.append(
                    ((pod.id, spec.name), c, spec.startup_probe, spec.liveness_probe, spec.readiness_probe)
                )
        by_id = {p.id: p for p in pods}
        self._verdicts = {
            key: dataclasses.replace(
                v, reason=truncate(self._redactor(by_id.get(key[0]))(v.reason), MAX_TEXT)
            )
            for key, v in self.prober.check(targets).items()
        }
        self.prober.forget({t[0] for t in targets})
        for key, verdict in self._verdicts.items():
            if verdict.restart:
                log.info("agent.probe_failed", pod=key[0], container=key[1], reason=verdict.reason)
                self._memory[key] = dataclasses.replace(
                    self._memory.get(key, PodMemory()),
                    last_error=verdict.reason.removesuffix("; restarting"),
                )
        return any(v.restart for v in self._verdicts.values())

    def _remove(self, container: ContainerInfo, grace: int, *, keep: bool = False) -> None:
        """Stop (and unless `keep`, remove) in the background: a grace period must not stall
        the node."""

        def work() -> None:
            try:
                left = self._pre_stop(container, grace)
                if keep:
                    self.runtime.stop(container.id, left)
                else:
                    self.runtime.remove(container.id, left)
                    if container.pod not in self._assigned_cache and container.pod not in self._wanted:
                        self._forget_files(container.pod)
            except Exception:
                log.exception("agent.remove_failed", pod=container.pod, container=container.id[:12])
            finally:
                with self._lock:
                    self._removing.pop(container.id, None)
                    self._killing.discard(container.id)

        with self._lock:
            if container.id in self._removing:
                return
            thread = threading.Thread(target=work, name=f"remove-{container.id[:12]}", daemon=True)
            self._removing[container.id] = thread
            if keep:
                self._killing.add(container.id)
        thread.start()

    # --- lifecycle hooks ------------------------------------------------------------

    def _run_hook(self, pod: Pod, hook: Hook, container: ContainerInfo, timeout: float) -> tuple[bool, str]:
        """Run `hook` for `container` (exec inside it; httpGet to the pod's address, as a probe
        goes): (succeeded, what it said, redacted)."""
        if hook.handler == "sleep":
            self._stop.wait(min(hook.seconds, timeout))
            return True, f"slept {min(hook.seconds, timeout):g}s"
        if self._hook_handler is None:
            self._hook_handler = real_handler(
                self.runtime,
                lambda: self.allow_probe_hosts,
                lambda c: self._redactor(self._assigned_cache.get(c.pod)),
            )
        ok, said = self._hook_handler(container, hook.as_probe(int(timeout)))
        return ok, truncate(self._redactor(pod)(said), MAX_TEXT)

    def _post_start(self, pod: Pod, spec: Container, container: ContainerInfo) -> None:
        """Run the container's postStart hook in the background: the container is not ready
        until it succeeds, and a failure kills it (its restart follows the backoff)."""
        hook = spec.post_start
        assert hook is not None
        timeout = float(max(pod.spec.termination_grace_period_seconds, 30))

        def work() -> None:
            try:
                ok, said = self._run_hook(pod, hook, container, timeout)
            except Exception as exc:  # a hook that cannot be run failed
                ok, said = False, f"{type(exc).__name__}: {exc}"
            finally:
                with self._lock:
                    self._hooks.discard(container.id)
            if ok:
                log.info("agent.post_start_done", pod=pod.id, container=spec.name)
                return
            reason = f"FailedPostStartHook ({hook.describe()}): {said}"
            log.warning("agent.post_start_failed", pod=pod.id, container=spec.name, reason=reason)
            key = (pod.id, spec.name)
            self._memory[key] = dataclasses.replace(self._memory.get(key, PodMemory()), last_error=reason)
            self._remove(container, pod.spec.termination_grace_period_seconds, keep=True)

        with self._lock:
            self._hooks.add(container.id)
        threading.Thread(target=work, name=f"post-start-{container.id[:12]}", daemon=True).start()

    def _pre_stop(self, container: ContainerInfo, grace: int) -> int:
        """Run the preStop hook of a running container of a pod this node runs, within
        `grace`; the grace left for SIGTERM (Kubernetes gives at least 2 more seconds)."""
        pod = self._assigned_cache.get(container.pod)
        if pod is None or not container.running or container.container == INFRA:
            return grace
        spec = next((c for c in pod.spec.all_containers if c.name == name_of(container, pod)), None)
        if spec is None or spec.pre_stop is None or grace <= 0:
            return grace
        if has_infra(pod):  # httpGet goes to the pod's address, which its infra container holds
            holder = next(
                (c for c in self.runtime.list(self.config.node) if c.pod == pod.id and c.container == INFRA),
                None,
            )
            if holder is not None:
                container = dataclasses.replace(container, pod_ip=holder.pod_ip)
        started = time.monotonic()
        try:
            ok, said = self._run_hook(pod, spec.pre_stop, container, float(grace))
        except Exception as exc:
            ok, said = False, f"{type(exc).__name__}: {exc}"
        log.info("agent.pre_stop", pod=pod.id, container=spec.name, ok=ok, said=said)
        return max(2, grace - round(time.monotonic() - started))

    def wait_removals(self, timeout: float = 60.0) -> None:
        with self._lock:
            threads = list(self._removing.values())
        for thread in threads:
            thread.join(timeout)

    def _start(self, start: Start, infra: ContainerInfo | None, now: float) -> None:
        """Carry out a `Start`: the pod's network container, or one of its containers (in
        the network of `infra` when the pod has one). A failure is remembered with a
        backoff and reported as the pod's reason."""
        pod = start.pod
        spec = next((c for c in pod.spec.all_containers if c.name == start.container), pod.spec.main)
        name = INFRA if start.container == INFRA else spec.name
        key = (pod.id, name)
        state = self._memory.get(key, PodMemory())
        options: dict[str, Any] = {"address": self._address, "network": self._network}
        hooked: ContainerInfo | None = None  # started, with a postStart hook to run
        try:
            if pod.spec.privileged and not self.allow_privileged:
                # Validation refuses it already; a node checks again what it would give away.
                raise RuntimeFailure(
                    "the pod is privileged or uses the host's namespaces, which the server does not allow"
                )
            if name == INFRA:
                self.runtime.run_infra(self.config.node, pod, start.restart, **options)
            else:
                if infra is not None:
                    options = {"infra": infra.id}
                facts = self._facts(pod, infra.pod_ip if infra is not None else "")
                options["env"] = [
                    *service_env(self._services, pod.spec, pod.namespace),
                    *((env, field_value(path, facts)) for env, path in spec.field_env),
                ]
                mounts = [
                    *self._write_files(pod, spec, facts),
                    *self._write_resolv_conf(pod),
                    *self._volume_mounts(pod, spec),
                    self._termination_file(pod, spec, start.restart),
                ]
                run = functools.partial(
                    self.runtime.run, self.config.node, pod, mounts, start.restart, container=spec, **options
                )
                auth = pod.spec.auth_for(spec.image)
                if spec.image_pull_policy == "Always":
                    self.runtime.pull(spec.image, auth)  # Kubernetes' Always: every start pulls
                try:
                    info = run()
                except ImageMissing:
                    if spec.image_pull_policy != "IfNotPresent":
                        raise
                    self.runtime.pull(spec.image, auth)
                    info = run()
                if spec.post_start is not None and info.running:
                    address = infra.pod_ip if infra is not None else info.pod_ip
                    hooked = dataclasses.replace(info, pod_ip=address)
        except (ImageMissing, RuntimeFailure, NonRootRefused, OSError) as exc:
            kind = (
                "ErrImageNeverPull"
                if spec.image_pull_policy == "Never" and isinstance(exc, ImageMissing)
                else "ErrImagePull"
                if isinstance(exc, ImageMissing)
                else "CreateContainerConfigError"
                if isinstance(exc, NonRootRefused)
                else "CreateContainerError"
            )
            where = f"container {name}: " if has_infra(pod) else ""
            delay = min(BACKOFF_START * 2 ** min(state.failed_starts, 10), BACKOFF_MAX)
            self._memory[key] = dataclasses.replace(
                state,
                last_error=truncate(self._redactor(pod)(f"{where}{kind}: {exc}"), MAX_TEXT),
                failed_starts=state.failed_starts + 1,
                next_attempt=now + delay,
            )
            log.warning("agent.start_failed", pod=pod.id, reason=self._memory[key].last_error, retry_in=delay)
            return
        self._memory[key] = dataclasses.replace(state, last_error="", failed_starts=0)
        if hooked is not None:
            self._post_start(pod, spec, hooked)
        log.info(
            "agent.started",
            pod=pod.id,
            container=name,
            image=spec.image,
            run=start.restart,
            reason=start.reason,
        )

    def _termination_path(self, pod_id: PodId, container: str, restart: int) -> Path:
        return self._pod_dir(pod_id) / f"termination-{container}-{restart}"

    def _termination_file(self, pod: Pod, spec: Container, restart: int) -> MountSpec:
        """An empty file, writable by any user, mounted at the container's
        terminationMessagePath: what it holds when the container ends is its message. The
        file of the run before the previous one goes."""
        folder = self._pod_dir(pod.id)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o711)  # the container's user reaches its file, and lists nothing
        path = self._termination_path(pod.id, spec.name, restart)
        path.write_bytes(b"")
        path.chmod(0o666)
        self._termination_path(pod.id, spec.name, restart - 2).unlink(missing_ok=True)
        return MountSpec(str(path), spec.termination_message_path, read_only=False)

    def _termination_message(self, pod: Pod, spec: Container, container: ContainerInfo) -> str:
        """What an exited container wrote to its terminationMessagePath (at most 4 KiB, as
        kubelet reads), or with FallbackToLogsOnError and nothing written after a failure,
        its log's last line; redacted, on one line. Read once per exit, as the log tail is."""
        key = (container.id, container.finished_at)
        if key not in self._messages:
            self._messages[key] = self._read_termination_message(pod, spec, container)
        return self._messages[key]

    def _read_termination_message(self, pod: Pod, spec: Container, container: ContainerInfo) -> str:
        try:
            with self._termination_path(pod.id, spec.name, container.restart).open("rb") as f:
                message = f.read(TERMINATION_MESSAGE_BYTES).decode(errors="replace").strip()
        except OSError:
            message = ""
        if not message and spec.termination_message_policy == "FallbackToLogsOnError" and container.exit_code:
            lines = self._log_tail(container, pod).strip().splitlines()
            message = lines[-1] if lines else ""
        return " ".join(self._redactor(pod)(message).split())

    def _facts(self, pod: Pod, pod_ip: str) -> PodFacts:
        return PodFacts(
            name=pod.name,
            namespace=pod.namespace,
            uid=pod_uid(pod.id, pod.created_at),
            node=self.config.node,
            pod_ip=pod_ip,
            host_ip=self._address,
            service_account=pod.spec.service_account_name,
            labels=pod.labels,
            annotations=pod.spec.annotations,
        )

    def _volume_mounts(self, pod: Pod, spec: Container) -> list[MountSpec]:
        volumes = {v.name: v for v in pod.spec.volumes}
        mounts = []
        for m in spec.mounts:
            volume = volumes[m.volume]
            if volume.host_path:  # checked again here against the server's allowed folders
                source = host_path_source(volume, m.sub_path, self.allow_host_paths)
                mounts.append(MountSpec(source, m.path, read_only=m.read_only))
                continue
            if m.sub_path and volume.medium == "Memory":
                raise RuntimeFailure(
                    f"subPath {m.sub_path!r} of emptyDir {m.volume}: not supported with medium Memory"
                )
            name = self.runtime.ensure_volume(self.config.node, pod, volume)
            mounts.append(MountSpec(name, m.path, read_only=m.read_only, volume=True, sub_path=m.sub_path))
        return mounts

    # --- files ----------------------------------------------------------------------

    def _pod_dir(self, pod_id: PodId, *, secret: bool = False) -> Path:
        # Absolute: Docker reads a relative bind-mount source as a volume name.
        root = self.secret_root() if secret else self.config.state_dir.resolve() / "pods"
        return root / pod_id.replace("/", "_")

    @property
    def secret_folder(self) -> Path:
        # /dev/shm is a tmpfs on Linux; our folders in it are 0700, ours, and named after the node.
        return Path(os.path.abspath(self.config.secret_dir or Path("/dev/shm/gitops") / self.config.node))  # noqa: S108

    def secret_root(self) -> Path:
        """The folder Secret files are written to: on tmpfs (or ramfs), and private. In a
        world-writable /dev/shm, anyone could have made our folder first (or a symbolic link
        in its place), so each folder we own there is checked, never just trusted."""
        root = self.secret_folder
        kind = filesystem_type(root) or "an unknown filesystem"
        if kind not in MEMORY_FILESYSTEMS:
            raise OSError(
                f"Secret files must stay off the node's disk, but {root} is on {kind}; "
                "give the agent a folder on tmpfs (--secret-dir)"
            )
        if self.config.secret_dir:
            root.parent.mkdir(parents=True, exist_ok=True)  # the operator's choice of place
        for folder in [root] if self.config.secret_dir else [root.parent, root]:
            private_directory(folder)
        return root

    def _write_files(self, pod: Pod, container: Container, facts: PodFacts) -> list[MountSpec]:
        """The container's ConfigMap, Secret and downward API files, written on the host."""
        mounts = []
        for f in container.files:
            folder = self._pod_dir(pod.id, secret=f.secret)
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder.chmod(0o700)
            host = folder / hashlib.sha256(f"{container.name}:{f.path}".encode()).hexdigest()[:16]
            host.write_bytes(field_value(f.field, facts).encode() if f.field else f.content)
            host.chmod(f.mode & 0o777)
            mounts.append(MountSpec(str(host), f.path))
        return mounts

    def _write_resolv_conf(self, pod: Pod) -> list[MountSpec]:
        """The pod's /etc/resolv.conf (`gitops.agents.podconf.resolv_conf`), on a pod network."""
        if not (self._network and self._pod_cidr):
            return []
        if self._host_resolv is None:
            self._host_resolv = read_host_resolv()
        text = resolv_conf(
            pod.spec,
            pod.namespace,
            cluster_dns=gateway(self._pod_cidr),
            domain=self.config.cluster_domain,
            host=self._host_resolv,
        )
        folder = self._pod_dir(pod.id)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / "resolv.conf"
        path.write_text(text)
        path.chmod(0o644)
        return [MountSpec(str(path), "/etc/resolv.conf")]

    def _forget_files(self, pod_id: PodId) -> None:
        shutil.rmtree(self._pod_dir(pod_id), ignore_errors=True)
        shutil.rmtree(self.secret_folder / pod_id.replace("/", "_"), ignore_errors=True)

    # --- status ---------------------------------------------------------------------

    def _statuses(self, containers: Sequence[ContainerInfo], assigned: dict[PodId, Pod]) -> list[PodStatus]:
        """A status per pod with a container (its current runs), and per assigned pod without.
        A container of a pod the agent was not given is reported with its template and owner,
        so that a control plane that lost its state can adopt it."""
        result: dict[PodId, PodStatus] = {}
        by_pod = runs(c for c in containers if c.id not in self._removing)
        for pod_id, found in by_pod.items():
            pod = assigned.get(pod_id)
            if pod is None:
                result[pod_id] = self._unknown_status(found)
                continue
            mine = [c for c in found if c.template_hash == pod.template_hash]
            if mine:  # else only containers of another template: being replaced
                result[pod_id] = self._pod_status(pod, mine)
        for pod_id, assigned_pod in assigned.items():
            if pod_id not in result and assigned_pod.terminating_at is None:
                key = (pod_id, INFRA if has_infra(assigned_pod) else assigned_pod.spec.main.name)
                state = self._memory.get(key, PodMemory())
                result[pod_id] = PodStatus(
                    pod_id,
                    "Pending",
                    False,
                    state.last_error or self._waiting.get(pod_id, "") or "starting container",
                    restarts=assigned_pod.restarts,
                )
        return list(result.values())

    def _unknown_status(self, found: Sequence[ContainerInfo]) -> PodStatus:
        """What is known of a pod the agent was not given: whether its containers run."""
        apps = [c for c in found if c.container != INFRA] or list(found)
        c = apps[-1]
        if c.running:
            status = PodStatus(c.pod, "Running", True, "", c.pod_ip, c.host_ports)
        else:
            phase: Phase = "Succeeded" if c.exit_code == 0 else "Failed"
            status = PodStatus(c.pod, phase, False, exit_text(c), exit_code=c.exit_code)
        return dataclasses.replace(
            status, restarts=c.restart, container_id=c.id, template_hash=c.template_hash, owner=c.owner
        )

    def _container_status(self, pod: Pod, spec: Container, found: Sequence[ContainerInfo]) -> ContainerStatus:
        init = spec in pod.spec.init_containers
        state = self._memory.get((pod.id, spec.name), PodMemory())
        if not found:
            return ContainerStatus(
                spec.name, "waiting", reason=state.last_error or "PodInitializing", init=init
            )
        c = found[-1]
        error = f" ({c.error})" if c.error else ""
        if c.running:
            ready, reason = self._readiness(pod, spec, c.id)
            return ContainerStatus(spec.name, "running", ready, c.restart, None, reason, init)
        tail = self._log_tail(c, pod)
        message = self._termination_message(pod, spec, c)
        said = f"; message: {message}" if message else ""
        if should_restart(pod, c, spec):
            reason = crash_loop(c, state, self.clock()) + error + said
            return ContainerStatus(spec.name, "waiting", False, c.restart, c.exit_code, reason, init, tail)
        reason = (
            "Completed" if init and c.exit_code == 0 else exit_text(c) + (f": {c.error}" if c.error else "")
        ) + said
        return ContainerStatus(spec.name, "terminated", False, c.restart, c.exit_code, reason, init, tail)

    def _pod_status(self, pod: Pod, mine: Sequence[ContainerInfo]) -> PodStatus:
        """A pod's status from its containers' (`gitops.agents.plan` says what runs when)."""
        by_name = container_runs(pod, mine)
        multi = has_infra(pod)
        statuses = [
            self._container_status(pod, spec, by_name.get(spec.name, [])) for spec in pod.spec.all_containers
        ]
        apps = statuses[len(pod.spec.init_containers) :]
        inits = statuses[: len(pod.spec.init_containers)]
        redact = self._redactor(pod)

        def named(status: ContainerStatus) -> str:
            what = "init container" if status.init else "container"
            return f"{what} {status.name}: {status.reason}" if multi else status.reason

        holder_runs = by_name.get(INFRA if multi else pod.spec.main.name, [])
        holder = holder_runs[-1] if holder_runs and holder_runs[-1].running else None
        address = (holder.pod_ip, holder.host_ports) if holder is not None else ("", ())
        failed_init = next((s for s in inits if s.state == "terminated" and s.exit_code != 0), None)
        if all(s.state == "terminated" for s in apps):
            failed = next((s for s in apps if s.exit_code != 0), None)
            last = failed or apps[0]
            status = PodStatus(
                pod.id,
                "Failed" if failed else "Succeeded",
                False,
                named(last),
                exit_code=last.exit_code,
                last_log=last.last_log,
            )
        elif failed_init is not None:
            status = PodStatus(
                pod.id,
                "Failed",
                False,
                "Init:Error: " + named(failed_init),
                exit_code=failed_init.exit_code,
                last_log=failed_init.last_log,
            )
        elif any(s.state == "running" or s.restarts or s.exit_code is not None for s in apps):
            serving = [
                *apps,
                *(
                    s
                    for s, spec in zip(inits, pod.spec.init_containers, strict=True)
                    if spec.restart_policy == "Always"
                ),
            ]
            ready = all(s.state == "running" and s.ready for s in serving)
            problem = next((s for s in serving if not (s.state == "running" and s.ready) and s.reason), None)
            if problem is None:
                problem = next((s for s in serving if s.reason), None)
            status = PodStatus(
                pod.id,
                "Running",
                ready,
                named(problem) if problem is not None else "",
                *address,
                exit_code=problem.exit_code if problem is not None else None,
                last_log=problem.last_log if problem is not None else "",
            )
        else:
            finished = [
                (s.state == "terminated" and s.exit_code == 0)
                or (spec.restart_policy == "Always" and s.state == "running")
                for s, spec in zip(inits, pod.spec.init_containers, strict=True)
            ]
            done = sum(finished)
            pending = next((s for s, ok in zip(inits, finished, strict=True) if not ok), None)
            if pending is not None:
                said = pending.state != "running" and pending.reason not in ("", "PodInitializing")
                reason = f"Init:{done}/{len(inits)}" + (f" ({named(pending)})" if said else "")
            else:
                reason = self._waiting.get(pod.id, "") or next(
                    (named(s) for s in apps if s.reason and s.reason != "PodInitializing"), "PodInitializing"
                )
            status = PodStatus(
                pod.id,
                "Pending",
                False,
                reason,
                *address,
                last_log=pending.last_log if pending is not None else "",
            )
        main = by_name.get(pod.spec.main.name) or holder_runs or list(mine)
        return dataclasses.replace(
            status,
            reason=truncate(redact(status.reason), MAX_TEXT),
            restarts=sum(s.restarts for s in statuses),
            container_id=main[-1].id,
            template_hash=pod.template_hash,
            owner=mine[-1].owner,
            containers=tuple(
                dataclasses.replace(s, reason=truncate(redact(s.reason), MAX_TEXT)) for s in statuses
            )
            if multi
            else (),
        )

    def redactor(self) -> Redactor:
        """Redacts the Secret values of every pod this node runs (for its log lines)."""
        return Redactor.of_values(
            v for pod in list(self._assigned_cache.values()) for v in pod.spec.secret_values()
        )

    def _redactor(self, pod: Pod | None) -> Redactor:
        """Redacts the Secret values `pod` carries (nothing for an unknown pod)."""
        return Redactor.of_values(pod.spec.secret_values()) if pod is not None else Redactor()

    def _log_tail(self, container: ContainerInfo, pod: Pod | None) -> str:
        """The last lines an exited container wrote, read once per exit, redacted and then
        cut (so no part of a Secret value survives the cut). Nothing for a container whose
        pod is not known yet (an agent just restarted): its Secret values are not known."""
        if pod is None:
            return ""
        key = (container.id, container.finished_at)
        if key not in self._logs:
            self._logs = {k: v for k, v in self._logs.items() if k[0] != container.id}
            tail = self._redactor(pod)(self.runtime.logs_tail(container.id, LOG_TAIL_LINES))
            self._logs[key] = tail[-LOG_TAIL_BYTES:]
        return self._logs[key]

    def _readiness(self, pod: Pod, spec: Container, container_id: str = "") -> tuple[bool, str]:
        with self._lock:
            hooked = container_id in self._hooks
        if hooked:
            return False, "waiting for the postStart hook"
        if not spec.probed:
            return True, ""
        verdict = self._verdicts.get((pod.id, spec.name))
        if verdict is None:
            probed = spec.startup_probe or spec.readiness_probe
            return (False, "waiting for the first probe") if probed else (True, "")
        return verdict.ready, verdict.reason

    # --- loop -----------------------------------------------------------------------

    @property
    def loop(self) -> Loop:
        if self._loop is None:
            interval = self.config.interval
            self._loop = Loop(
                "agent",
                self._tick_or_move,
                interval=self._until_tick,
                # A control plane that restarted expects its agents back within seconds.
                backoff=Backoff(first=interval, cap=10.0),
                stop=self._stop,
                fatal=(NodeRefused,),
                node=self.config.node,
            )
        return self._loop

    def _until_tick(self) -> float:
        """Seconds until the next tick: every `interval`, at this agent's own phase (a
        tick for news in between does not move the next)."""
        now = time.monotonic()
        if self._ticks is None:
            self._ticks = Cadence.starting(self.config.interval, now)
        self._ticks.every(self.config.interval, now)
        return self._ticks.until(now)

    def run(self) -> None:
        """Tick until stopped; raises `NodeRefused` when the server will not have this node.
        The cluster DNS stops with the loop (not in `stop`, which a signal handler calls)."""
        if self.config.heartbeat_seconds > 0 and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="agent-watch", daemon=True)
            self._watcher.start()
        try:
            self.loop.run()
        finally:
            self._stop.set()
            if self._dns is not None:
                self._dns.stop()

    def start(self) -> threading.Thread:
        def run() -> None:
            try:
                self.run()
            except NodeRefused as exc:
                log.error("agent.stopped", error=str(exc), node=self.config.node)

        thread = threading.Thread(target=run, name="agent", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        self.loop.trigger()
        if self._usage is not None:
            self._usage.close()


def usage_rows(figures: Mapping[tuple[PodId, str], ContainerUsage]) -> list[list[Any]]:
    """The figures of a sampler's pass as a sync request carries them (`SyncRequest.measured`):
    a row per container, `[pod, at, window, container, cpu_milli, memory_bytes]`, by pod."""
    return [
        [pod, f.at, f.window, container, round(f.cpu_milli, 3), f.memory_bytes]
        for (pod, container), f in sorted(figures.items())
    ]

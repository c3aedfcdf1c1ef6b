"""What agents send and receive, as Pydantic models: validated at the border, documented in
`/openapi.json`.

A request that does not fit is answered 422 naming the field (`node.address: expected an
IPv4 address ...`) before any of it reaches the store, so one agent's garbage can never
become a row that breaks other nodes. The limits are generous for real agents and stop
a broken or hostile one from filling the database.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from gitops.schemas.checks import is_label_key, is_label_value, is_subdomain

MAX_REASON = 4_000
MAX_LOG = 16_000
MAX_PODS_PER_REPORT = 10_000
_POD_ID = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _node_name(value: str) -> str:
    if not is_subdomain(value):
        raise ValueError(
            "expected a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', at most 253)"
        )
    return value


def _node_address(value: str) -> str:
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(
            f"expected the IPv4 address other nodes reach this node on, got {value[:80]!r}"
        ) from None
    if (
        address.is_unspecified
        or address.is_multicast
        or address.is_link_local  # 169.254.0.0/16, cloud metadata services included
        or address.is_reserved
        or address in ipaddress.IPv4Network("0.0.0.0/8")
        or address == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise ValueError(
            f"{value} cannot be a node's address (unspecified, multicast, link-local, reserved or broadcast)"
        )
    return str(address)


def address_problem(address: str, service_cidr: str, *, loopback_ok: bool) -> str | None:
    """What is wrong with a valid node address in this cluster, or None: it must not be in
    the service range, nor loopback unless every node is on the server's own machine."""
    ip = ipaddress.IPv4Address(address)
    if ip in ipaddress.ip_network(service_cidr):
        return f"{address} is inside the service range {service_cidr}"
    if ip.is_loopback and not loopback_ok:
        return (
            f"{address} is a loopback address, which other nodes cannot reach; give the agent "
            "--address (the server listens beyond loopback, so nodes are on other machines)"
        )
    return None


_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# An IPv4 address as `ipaddress` writes it (no leading zeros): such a value is valid and
# already canonical. Agents report every pod's address in each sync; parsing each one
# through `ipaddress` and writing it back was a third of validating a sync's body.
_CANONICAL_IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}")


def _pod_ip(value: str) -> str:
    if value == "" or _CANONICAL_IPV4.fullmatch(value):
        return value
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f'expected an IPv4 address or "", got {value[:80]!r}') from None


def _subnet(value: str) -> str:
    if value == "":
        return value
    try:
        return str(ipaddress.IPv4Network(value))
    except ValueError:
        raise ValueError(
            f'expected an IPv4 subnet such as 10.244.3.0/24, or "", got {value[:80]!r}'
        ) from None


def _pod_id(value: str) -> str:
    if len(value) > 317 or not _POD_ID.match(value):
        raise ValueError("expected namespace/name of a pod")
    return value


def _labels(value: dict[str, str]) -> dict[str, str]:
    for key, label in value.items():
        if not is_label_key(key):
            raise ValueError(f"label key {key[:80]!r} is not a valid label key")
        if not is_label_value(label):
            raise ValueError(f"label {key}: value {label[:80]!r} is not a valid label value")
    return value


NodeNameText = Annotated[str, Field(max_length=253), AfterValidator(_node_name)]
PodIdText = Annotated[str, AfterValidator(_pod_id)]
# A pod's namespace/name checked by pydantic's own pattern, with no Python call per value: a
# measurement row's (`MeasuredRow`), one per container every 15 s from every agent.
PodIdPattern = Annotated[str, Field(max_length=317, pattern=_POD_ID.pattern)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaintModel(_Strict):
    key: Annotated[str, Field(min_length=1, max_length=317)]
    value: Annotated[str, Field(max_length=63)] = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


class NodeModel(_Strict):
    """A node as its agent describes it."""

    name: NodeNameText
    address: Annotated[str, AfterValidator(_node_address)]
    cpu_milli: Annotated[int, Field(ge=1, le=10**7)]
    memory_bytes: Annotated[int, Field(ge=1, le=2**60)]
    max_pods: Annotated[int, Field(ge=1, le=100_000)] = 110
    labels: Annotated[dict[str, str], Field(max_length=256), AfterValidator(_labels)] = {}
    taints: Annotated[list[TaintModel], Field(max_length=64)] = []
    # The pod subnet the node's pods already use (its agent remembers it): kept when free,
    # so that a control plane rebuilt from git gives every node its subnet back.
    pod_cidr: Annotated[str, AfterValidator(_subnet)] = ""


class RegisterRequest(_Strict):
    """`POST /agent/v1/register`: the node (the join token is the `X-Gitops-Join-Token`
    header). A node whose name is held by a Ready node also sends that node's current token
    as `Authorization: Bearer`."""

    node: NodeModel


class RegisterReply(BaseModel):
    token: str
    service_cidr: str
    cluster_cidr: str = ""
    pod_cidr: str = ""  # this node's pod subnet: its agent runs pods on a bridge of it


class ContainerStatusModel(_Strict):
    """What an agent reports about one container of a pod of several."""

    name: Annotated[str, Field(min_length=1, max_length=63)]
    state: Literal["waiting", "running", "terminated"] = "waiting"
    ready: bool = False
    restarts: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    exit_code: Annotated[int, Field(ge=-(2**31), le=2**31 - 1)] | None = None
    reason: Annotated[str, Field(max_length=MAX_REASON)] = ""
    init: bool = False
    last_log: Annotated[str, Field(max_length=MAX_LOG)] = ""


class PodStatusModel(_Strict):
    """What an agent reports about one pod bound to its node."""

    pod: PodIdText
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]
    ready: bool = False
    reason: Annotated[str, Field(max_length=MAX_REASON)] = ""
    pod_ip: Annotated[str, AfterValidator(_pod_ip)] = ""
    # Mutable defaults as factories: a plain `[]` is deep-copied for every status validated.
    host_ports: Annotated[
        list[tuple[Port, Literal["TCP", "UDP", "SCTP"], Port]], Field(max_length=1024, default_factory=list)
    ]
    restarts: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    exit_code: Annotated[int, Field(ge=-(2**31), le=2**31 - 1)] | None = None
    container_id: Annotated[str, Field(max_length=128)] = ""
    last_log: Annotated[str, Field(max_length=MAX_LOG)] = ""
    template_hash: Annotated[str, Field(max_length=64)] = ""
    owner: Annotated[str, Field(max_length=600)] = ""
    containers: Annotated[list[ContainerStatusModel], Field(max_length=64, default_factory=list)]


MAX_LOG_CHUNK = 32 * 2**10  # bytes of a container's log in one chunk an agent posts
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def _base64(value: str) -> str:
    if len(value) % 4 or not _BASE64.match(value):
        raise ValueError("expected base64 (the log's bytes)")
    return value


class LogRequestModel(BaseModel):
    """A container's log asked for by `gitops logs`, for the agent of the pod's node: the
    current run of the container, or with `previous` the run before it."""

    id: str
    pod: str
    container: str
    previous: bool = False
    tail: int  # the last lines only
    follow: bool = False
    since: float = 0.0  # only what was written in the last `since` seconds (0: all of it)


class LogChunkRequest(_Strict):
    """`POST /agent/v1/nodes/{name}/logs/{id}`: the next piece of a log this node was asked
    for (`seq` 0, 1, 2, ...; a chunk posted again is taken once). An empty chunk says the
    agent is still there; `done` ends the log, with `error` and `problem` when it could not
    be read, and `cut` when it was longer than the agent sends."""

    seq: Annotated[int, Field(ge=0, le=2**31 - 1)]
    data: Annotated[str, Field(max_length=(MAX_LOG_CHUNK + 2) // 3 * 4), AfterValidator(_base64)] = ""
    done: bool = False
    error: Annotated[str, Field(max_length=2000)] = ""
    problem: Literal["", "NotFound", "Waiting", "Unavailable", "Failed"] = ""
    cut: bool = False


class LogChunkReply(BaseModel):
    accepted: bool = True  # False: the reader is behind; post the same chunk again shortly
    cancelled: bool = False  # the reader is gone: stop reading the log


ContainerName = Annotated[str, Field(min_length=1, max_length=63)]
CpuMilli = Annotated[float, Field(ge=0, le=1e9)]
MemoryBytes = Annotated[int, Field(ge=0, le=2**62)]
Window = Annotated[float, Field(ge=0, le=86400)]
MAX_CONTAINERS = 64  # of a pod's, measured


class ContainerUsageModel(_Strict):
    """One container's CPU (millicores, over the agent's sampling window) and memory working set."""

    container: ContainerName
    cpu_milli: CpuMilli
    memory_bytes: MemoryBytes


class PodUsageModel(_Strict):
    """What an agent measured of one pod's running containers."""

    pod: PodIdText
    at: float  # Unix time of the latest reading
    window: Window = 0.0  # seconds the CPU figures span
    containers: Annotated[list[ContainerUsageModel], Field(max_length=MAX_CONTAINERS)] = []


# One container's measurement as a row (`SyncRequest.measured`): (pod, at, window, container,
# cpu_milli, memory_bytes), the fields of `PodUsageModel` and `ContainerUsageModel`. Rows
# are half the bytes of those objects, and pydantic validates them in a fifth of the time
# (14 against 61 us for 30 pods): a third of the agents' calls carry them.
MeasuredRow = tuple[PodIdPattern, float, Window, ContainerName, CpuMilli, MemoryBytes]


class SyncRequest(_Strict):
    """`POST /agent/v1/nodes/{name}/sync`: a heartbeat with the node's pod statuses, the
    terminating pods it has finished stopping, and the service rules its proxy had to skip."""

    # (Lists made for each request, not a default deep-copied: every agent sends one a second.)
    statuses: Annotated[list[PodStatusModel], Field(max_length=MAX_PODS_PER_REPORT, default_factory=list)]
    stopped: Annotated[list[PodIdText], Field(max_length=MAX_PODS_PER_REPORT, default_factory=list)]
    proxy_problems: Annotated[
        list[Annotated[str, Field(max_length=2000)]], Field(max_length=1000, default_factory=list)
    ]
    runtime_error: Annotated[str, Field(max_length=2000)] = ""  # why the container runtime is unreachable
    # The containers' CPU and memory use, when the agent measured them again since its last
    # report: as rows (`MeasuredRow`, one per container, each pod's container once), as agents
    # of this release send them, or as objects per pod (`usage`, as older agents do).
    measured: Annotated[list[MeasuredRow], Field(max_length=MAX_PODS_PER_REPORT * MAX_CONTAINERS)] | None = (
        None
    )
    usage: Annotated[list[PodUsageModel], Field(max_length=MAX_PODS_PER_REPORT)] | None = None
    # The versions of the node's pods and of the Services (with the routes) the agent holds,
    # from earlier replies: what has not changed since is not sent again.
    have_pods: Annotated[str, Field(max_length=128)] = ""
    have_services: Annotated[str, Field(max_length=128)] = ""
    # The agent takes the Services as what changed since `have_services` (`services_from`,
    # `services_changed`, `services_removed` in the reply) when the server still knows that
    # version; without it, every Service each time they move (an older agent).
    service_deltas: bool = False
    # With `service_deltas`: a Service changed may come as edits of the one the agent holds
    # (`gitops.edits`: its endpoints and addresses as an edit script, `"edits"` in place of
    # them), unless its ports changed.
    endpoint_edits: bool = False
    # The agent's own digest of what it reports (its statuses, stopped pods, proxy problems
    # and runtime error): the server compares reports by it, not by digesting them itself.
    report_digest: Annotated[str, Field(max_length=128)] = ""
    # The statuses (and stopped pods, none) are those of the report `report_digest`, which
    # the last reply said this server holds (`SyncReply.report_held`): not sent again, as a
    # kubelet sends a pod's status only when it changed. If the server no longer holds it
    # (the node's pods moved since, or it restarted), it keeps the heartbeat, writes
    # nothing, and its reply's `report_held` is empty: the agent sends the report whole.
    report_omitted: bool = False

    @field_validator("measured")
    @classmethod
    def _each_container_once(cls, rows: list[MeasuredRow] | None) -> list[MeasuredRow] | None:
        if not rows or len({(r[0], r[3]) for r in rows}) == len(rows):
            return rows
        seen: set[tuple[str, str]] = set()
        for i, (pod, _, _, container, _, _) in enumerate(rows):
            if (pod, container) in seen:
                raise ValueError(f"row {i}: container {container} of pod {pod} is measured twice")
            seen.add((pod, container))
        return rows

    @model_validator(mode="after")
    def _omitted_report_named(self) -> SyncRequest:
        if self.report_omitted and (not self.report_digest or self.statuses or self.stopped):
            raise ValueError("report_omitted needs report_digest, and no statuses or stopped")
        return self

    @model_validator(mode="after")
    def _measured_one_way(self) -> SyncRequest:
        if self.measured is not None and self.usage is not None:
            raise ValueError("the measurements go as measured rows or as usage, not both")
        return self


class WatchRequest(_Strict):
    """`POST /agent/v1/nodes/{name}/watch`: the versions the agent holds (from its last sync
    reply); answered when one of them moves or a log request comes, or after `timeout`."""

    have_pods: Annotated[str, Field(max_length=128)] = ""
    have_services: Annotated[str, Field(max_length=128)] = ""
    timeout: Annotated[float, Field(ge=0, le=60)] = 25.0
    # The answer to a move of the Services may carry what changed since `have_services`
    # (as `SyncRequest.service_deltas`): no sync call is needed for it.
    service_deltas: bool = False
    endpoint_edits: bool = False  # as `SyncRequest.endpoint_edits`


class WatchReply(BaseModel):
    changed: bool  # false: the timeout passed with nothing new
    pods_version: str
    services_version: str
    logs: bool = False  # a `gitops logs` request waits for this node: sync to get it
    # To an agent that asked for deltas, when the Services moved and the server still holds
    # the version the agent holds: the Services changed since `services_from`, the keys
    # removed, and the routes (null: unchanged), as in `SyncReply`; absent otherwise.
    services_from: str | None = None
    services_changed: list[dict[str, Any]] | None = None
    services_removed: list[tuple[str, str]] | None = None
    routes: list[tuple[str, str]] | None = None


class SyncReply(BaseModel):
    """The node's pods (with their resolved Secret values: only this node receives them) and
    every Service's endpoints, each with its version; null when the request said it holds
    that version already (the agent keeps what it has)."""

    pods: list[dict[str, Any]] | None
    pods_version: str = ""
    services: list[dict[str, Any]] | None
    services_version: str = ""
    # Instead of `services` (then null), to an agent that asked for deltas: the Services
    # changed since version `services_from` (each whole, or as edits of the one held to an
    # agent that asked for `endpoint_edits`) and the (namespace, name) of those removed; the
    # others are as in that version.
    services_from: str = ""
    services_changed: list[dict[str, Any]] | None = None
    services_removed: list[tuple[str, str]] | None = None
    # This control plane takes `SyncRequest.endpoint_edits` (one of an older release refuses
    # the field, as any it does not know): an agent asks for them once a reply said so.
    endpoint_edits: bool = False
    service_cidr: str
    cluster_cidr: str = ""
    # (pod subnet, node address) of every other node: routed through that node (host-gw).
    # Null when unchanged since the version the agent holds (they share a version).
    routes: list[tuple[str, str]] | None = []
    allow_probe_hosts: bool = False
    # The folders of the nodes hostPath volumes may be under (`gitops serve --allow-host-path`):
    # the agent mounts no other, whatever a pod says.
    allow_host_paths: list[str] = []
    allow_privileged: bool = False  # privileged containers and the host's PID/IPC namespaces
    # False while the control plane may not yet know every pod (just started: it has not read
    # all its sources, or heard from its agents): agents keep containers it did not assign.
    authoritative: bool = True
    # The longest the agent may go without a sync when it has nothing new to say: a quarter
    # of the control plane's NotReady grace (the agent's own, if shorter, holds).
    heartbeat_seconds: float | None = None
    # The PersistentVolumeClaims (namespace/name) whose volumes this node keeps; the agent
    # deletes its other claim volumes (only when `authoritative`). Null with `pods`.
    claims: list[str] | None = []
    # Log requests of `gitops logs` for this node's pods, not answered yet (again in each
    # reply until the agent posts their first chunk).
    logs: list[LogRequestModel] = []
    # The request's `report_digest` when this server now holds that report as the node's
    # last (written, or the same as the last written, against the node's pods as they are):
    # the next heartbeat saying the same may omit it (`SyncRequest.report_omitted`). Empty
    # otherwise, and to a request without a digest.
    report_held: str = ""


def field_errors(errors: list[dict[str, Any]]) -> str:
    """FastAPI's validation errors as one line per field: `node.address: expected ...`."""
    lines = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body",)]
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        lines.append(f"{'.'.join(loc) or '(request)'}: {message}")
    return "; ".join(lines)

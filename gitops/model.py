"""The values that flow through gitops, from manifest to container.

Everything here is a frozen dataclass: desired state (validated manifests and the pod
specs derived from them), observed state (nodes, pods as the agents report them) and the
results of the pure core (plans, placements). A change is a new value
(`dataclasses.replace`), never an edit in place. Nothing in this module does I/O.

`Manifest.body` is the parsed YAML document (plain dicts and lists); it is shared, never
mutated, and its canonical JSON is what `content_hash` hashes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, NewType, TypeVar, overload

_Value = TypeVar("_Value")


class _cached(Generic[_Value]):
    """A property computed once per (frozen) instance: functools.cached_property without its
    lock (Python 3.11 takes one on every first read, which costs more than the value here)."""

    def __init__(self, compute: Callable[[Any], _Value]) -> None:
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> _cached[_Value]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> _Value: ...
    def __get__(self, instance: object | None, owner: type | None = None) -> _Value | _cached[_Value]:
        if instance is None:
            return self
        value = self.compute(instance)
        instance.__dict__[self.name] = value  # read from there from now on
        return value


NodeName = NewType("NodeName", str)
PodName = NewType("PodName", str)
PodId = NewType("PodId", str)
"""`namespace/name` of a pod; unique in the cluster."""

Severity = Literal["error", "warning"]
Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]

# The group/version Kubernetes serves today for each kind gitops reads, and only that one.
API_VERSIONS: Mapping[str, str] = {
    "Namespace": "v1",
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "ReplicaSet": "apps/v1",
    "ReplicationController": "v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
    "Service": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "PersistentVolumeClaim": "v1",
    "PersistentVolume": "v1",
    "PodDisruptionBudget": "policy/v1",  # weighed by preemption
    "PriorityClass": "scheduling.k8s.io/v1",  # gives pods their priority
    # Stored, not acted on (`gitops.schemas.kinds`).
    "ServiceAccount": "v1",
    "LimitRange": "v1",
    "ResourceQuota": "v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "StorageClass": "storage.k8s.io/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "Ingress": "networking.k8s.io/v1",
    "CustomResourceDefinition": "apiextensions.k8s.io/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
}
KINDS = frozenset(API_VERSIONS)
# Kinds whose objects belong to no namespace: their key's namespace is "".
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "PersistentVolume",
        "ClusterRole",
        "ClusterRoleBinding",
        "StorageClass",
        "PriorityClass",
        "CustomResourceDefinition",
    }
)
NAMESPACED_KINDS = KINDS - CLUSTER_SCOPED


def canonical_json(value: Any) -> str:
    """Serialise `value` the same way every time, for hashing and storage."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


@dataclass(frozen=True, order=True)
class ObjectKey:
    """Identity of a manifest object. Cluster-scoped objects (`CLUSTER_SCOPED`: Namespace,
    ClusterRole, ...) have namespace ``""``."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.ref}"

    @property
    def ref(self) -> str:
        return self.name if self.kind in CLUSTER_SCOPED else f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class SourceLocation:
    """Where something was written: a path relative to the source root, 1-based line/col."""

    file: str
    line: int = 1
    col: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    """One validation finding, formatted `file:line:col: Kind ns/name: field: message`."""

    severity: Severity
    message: str
    location: SourceLocation | None = None
    object: ObjectKey | None = None
    field: str = ""

    def __str__(self) -> str:
        parts = []
        if self.location is not None:
            parts.append(str(self.location))
        if self.object is not None:
            parts.append(str(self.object))
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        text = ": ".join(parts)
        return text if self.severity == "error" else f"{text} (warning)"


@dataclass(frozen=True)
class Manifest:
    """A validated desired object as written in the source.

    For a Secret, `hash` and `digests` (data key -> digest of its decoded value) are keyed
    with the cluster's key once the store or a preview has sealed it (`gitops.keyed`), so
    that neither can be used to guess a value offline. Pod template hashes take Secret
    values through `digests` only.
    """

    key: ObjectKey
    api_version: str
    body: Mapping[str, Any]
    location: SourceLocation
    hash: str = ""
    digests: Mapping[str, str] = field(default_factory=dict)

    @property
    def spec(self) -> Mapping[str, Any]:
        spec = self.body.get("spec")
        return spec if isinstance(spec, Mapping) else {}

    @property
    def data(self) -> Mapping[str, Any]:
        data = self.body.get("data")
        return data if isinstance(data, Mapping) else {}

    @property
    def labels(self) -> Mapping[str, str]:
        meta = self.body.get("metadata") or {}
        labels = meta.get("labels") or {}
        return labels if isinstance(labels, Mapping) else {}


# --- pods -----------------------------------------------------------------------------


def image_registry(reference: str) -> str:
    """The registry host of an image reference, as Docker reads it: the first path
    component when it has a dot or a port or is `localhost`, else Docker Hub (`docker.io`).
    A registry given as a URL (`https://index.docker.io/v1/`, as docker config files have
    them) is reduced to its host."""
    text = reference.split("://", 1)[-1]
    first, slash, _ = text.partition("/")
    if not slash and "://" in reference:
        first = text
    if "://" in reference or (slash and ("." in first or ":" in first or first == "localhost")):
        host = first.lower()
        return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host
    return "docker.io"


@dataclass(frozen=True)
class ContainerPort:
    container_port: int
    protocol: str = "TCP"
    name: str = ""
    host_port: int = 0  # a declared hostPort: published on the node's address at this port


@dataclass(frozen=True)
class MountedFile:
    """A file the agent writes on the host and bind-mounts read-only into the container."""

    path: str  # absolute path inside the container
    content: bytes
    mode: int = 0o644
    secret: bool = False  # from a Secret: sealed at rest, written to tmpfs only, redacted in text
    # A downward API file: the node writes the value of this field path (`content` is empty).
    field: str = ""


@dataclass(frozen=True)
class Toleration:
    key: str = ""  # "" with operator Exists tolerates every taint
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: str = ""  # "" matches every effect
    toleration_seconds: int | None = None  # NoExecute only: how long to stay on a failed node


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


# --- scheduling constraints ------------------------------------------------------------
#
# The pod's scheduling fields as Kubernetes defines them, resolved: `matchLabelKeys` are
# already merged into their selector, a term's namespaces are explicit (its own namespace
# when the manifest names none), and priorityClassName is the number it stands for.

REQUIREMENT_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")
_GO_INT = re.compile(r"[+-]?[0-9]+")


def _go_int(text: str) -> int | None:
    """`text` as Go's strconv.ParseInt(text, 10, 64) reads it (as Kubernetes compares Gt/Lt):
    ASCII digits with an optional sign, within int64; None otherwise."""
    if not _GO_INT.fullmatch(text):
        return None
    number = int(text)
    return number if -(2**63) <= number < 2**63 else None


@dataclass(frozen=True)
class Requirement:
    """One `matchExpressions` entry: `key operator values`. Gt and Lt (node affinity only)
    compare integers and hold one value."""

    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    values: tuple[str, ...] = ()

    def matches(self, value: str | None) -> bool:
        """Whether a label of this key with `value` (None: no such label) satisfies it."""
        if self.operator == "In":
            return value is not None and value in self.values
        if self.operator == "NotIn":
            return value is None or value not in self.values
        if self.operator == "Exists":
            return value is not None
        if self.operator == "DoesNotExist":
            return value is None
        if value is None or len(self.values) != 1:
            return False
        number, bound = _go_int(value), _go_int(self.values[0])
        if number is None or bound is None:
            return False
        return number > bound if self.operator == "Gt" else number < bound

    def __str__(self) -> str:
        if self.operator in ("Exists", "DoesNotExist"):
            return f"{self.key} {self.operator}"
        if self.operator in ("Gt", "Lt"):
            return f"{self.key} {self.operator} {self.values[0] if self.values else ''}"
        return f"{self.key} {self.operator} ({', '.join(self.values)})"


@dataclass(frozen=True)
class LabelSelector:
    """A label selector: every `match_labels` pair and every requirement holds. The empty
    selector matches every set of labels (a missing one is None where it is allowed)."""

    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            e.matches(labels.get(e.key)) for e in self.expressions
        )

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels] + [str(e) for e in self.expressions]
        return ", ".join(parts) if parts else "all pods"


@dataclass(frozen=True)
class NodeSelectorTerm:
    """One term of node affinity: every expression on the node's labels and every field
    expression (`metadata.name` only) holds. A term with neither matches no node."""

    expressions: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        if not self.expressions and not self.fields:
            return False
        return all(e.matches(labels.get(e.key)) for e in self.expressions) and all(
            f.matches(name if f.key == "metadata.name" else None) for f in self.fields
        )

    def __str__(self) -> str:
        return ", ".join([str(e) for e in self.expressions] + [str(f) for f in self.fields]) or "(empty term)"


@dataclass(frozen=True)
class PreferredNodeTerm:
    weight: int  # 1..100
    term: NodeSelectorTerm


@dataclass(frozen=True)
class PodAffinityTerm:
    """Pods matching `selector` in the term's namespaces, on nodes with the same value of
    `topology_key` as the node judged. Namespaces: those in `namespaces`, and those whose
    labels `namespace_selector` matches (None: none by selector; empty: all)."""

    selector: LabelSelector | None  # None matches no pod
    topology_key: str
    namespaces: tuple[str, ...] = ()
    namespace_selector: LabelSelector | None = None

    def __str__(self) -> str:
        return f"{self.selector if self.selector is not None else 'no pods'} on {self.topology_key}"


@dataclass(frozen=True)
class WeightedPodAffinityTerm:
    weight: int  # 1..100
    term: PodAffinityTerm


@dataclass(frozen=True)
class Affinity:
    """`spec.affinity`. `node_required` None means no requirement; otherwise the node must
    match one of its terms."""

    node_required: tuple[NodeSelectorTerm, ...] | None = None
    node_preferred: tuple[PreferredNodeTerm, ...] = ()
    pod_required: tuple[PodAffinityTerm, ...] = ()
    pod_preferred: tuple[WeightedPodAffinityTerm, ...] = ()
    anti_required: tuple[PodAffinityTerm, ...] = ()
    anti_preferred: tuple[WeightedPodAffinityTerm, ...] = ()


@dataclass(frozen=True)
class TopologySpreadConstraint:
    """`spec.topologySpreadConstraints[]`, as Kubernetes defines it; `selector` None counts
    no pods. `min_domains` only applies with DoNotSchedule."""

    max_skew: int
    topology_key: str
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"] = "DoNotSchedule"
    selector: LabelSelector | None = None
    min_domains: int = 1
    node_affinity_policy: Literal["Honor", "Ignore"] = "Honor"
    node_taints_policy: Literal["Honor", "Ignore"] = "Ignore"

    def __str__(self) -> str:
        return f"maxSkew {self.max_skew} on {self.topology_key}"


@dataclass(frozen=True)
class Probe:
    """A resolved container probe (Kubernetes' fields and defaults; ports are numbers).

    `service` is the name a grpc probe asks the gRPC health service about ("": the server
    as a whole)."""

    handler: Literal["exec", "httpGet", "tcpSocket", "grpc"]
    command: tuple[str, ...] = ()
    port: int = 0
    path: str = "/"
    host: str = ""
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    service: str = ""  # added after release 0.1: left out of template hashes while ""
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    def describe(self) -> str:
        if self.handler == "exec":
            return "exec " + " ".join(self.command)
        if self.handler == "httpGet":
            return f"{self.scheme.lower()}-get :{self.port}{self.path}"
        if self.handler == "grpc":
            return f"grpc :{self.port}" + (f"/{self.service}" if self.service else "")
        return f"tcp-socket :{self.port}"


@dataclass(frozen=True)
class VolumeMount:
    """A pod volume (`Volume`) mounted into a container."""

    volume: str
    path: str  # absolute path inside the container
    read_only: bool = False
    sub_path: str = ""  # a folder of the volume mounted instead of the whole


@dataclass(frozen=True)
class Volume:
    """A volume the containers of a pod share: an `emptyDir` (created with the pod, removed
    with it), or a PersistentVolumeClaim's volume (`claim`: `namespace/name`), which lives
    on the node where the claim was first used for as long as the claim does, or a
    `hostPath`: a file or folder of the node itself (`host_path`, normalised), allowed only
    under the folders the server allows. ConfigMap, Secret and downward API volumes are
    `MountedFile`s instead."""

    name: str
    medium: Literal["", "Memory"] = ""  # "": on the node's disk; "Memory": a tmpfs
    size_limit_bytes: int = 0  # 0: no limit (a tmpfs then takes at most half the node's memory)
    claim: str = ""  # a PersistentVolumeClaim, `namespace/name`
    host_path: str = ""  # a hostPath volume: the absolute path on the node
    # What must be at `host_path` (Kubernetes' HostPathType): "" checks nothing (a missing
    # path becomes a folder, as container runtimes make it), *OrCreate make what is missing.
    host_path_type: Literal[
        "", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"
    ] = ""


@dataclass(frozen=True)
class SecurityContext:
    """A container's security settings, the pod's merged under the container's own."""

    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool = False
    supplemental_groups: tuple[int, ...] = ()  # with the pod's fsGroup first
    read_only_root_filesystem: bool = False
    capabilities_add: tuple[str, ...] = ()
    capabilities_drop: tuple[str, ...] = ()
    no_new_privileges: bool = False  # allowPrivilegeEscalation: false
    seccomp: Literal["", "RuntimeDefault", "Unconfined"] = ""  # "": the engine's default profile
    sysctls: tuple[tuple[str, str], ...] = ()
    privileged: bool = False  # only where the server allows it (`gitops serve --allow-privileged`)


@dataclass(frozen=True)
class Container:
    """One container of a pod, fully resolved (no references)."""

    name: str
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    files: tuple[MountedFile, ...] = ()
    working_dir: str = ""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    cpu_request_milli: int = 0
    memory_request_bytes: int = 0
    cpu_limit_milli: int | None = None
    memory_limit_bytes: int | None = None
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None
    startup_probe: Probe | None = None
    # Names of the `env` entries whose values come from Secrets: sealed at rest, redacted in text.
    secret_env: tuple[str, ...] = ()
    mounts: tuple[VolumeMount, ...] = ()
    # Downward API variables the node fills in when it starts the container: (name, fieldPath).
    field_env: tuple[tuple[str, str], ...] = ()
    security: SecurityContext = SecurityContext()
    # An init container with restartPolicy Always is a sidecar: it runs beside the app.
    restart_policy: Literal["", "Always"] = ""
    post_start: Hook | None = None
    pre_stop: Hook | None = None
    # Where the container may write why it ended (a file the node provides), and whether its
    # log's last lines stand in when it failed without writing one.
    termination_message_path: str = "/dev/termination-log"
    termination_message_policy: Literal["File", "FallbackToLogsOnError"] = "File"

    @property
    def probed(self) -> bool:
        return bool(self.startup_probe or self.liveness_probe or self.readiness_probe)


# The fields release 0.1 kept on PodSpec for its single container.
LEGACY_CONTAINER_FIELDS = (
    "image",
    "command",
    "args",
    "env",
    "ports",
    "files",
    "working_dir",
    "image_pull_policy",
    "cpu_request_milli",
    "memory_request_bytes",
    "cpu_limit_milli",
    "memory_limit_bytes",
    "readiness_probe",
    "liveness_probe",
    "startup_probe",
    "secret_env",
)


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for one image registry, from an imagePullSecret (sealed at rest, never shown)."""

    registry: str  # a host (and port): `registry.example.com`, `docker.io`
    username: str
    password: str


@dataclass(frozen=True)
class Hook:
    """A container lifecycle handler: `postStart` runs once the container has started (it is
    not ready until the hook succeeds; a failure kills it), `preStop` before it is stopped
    (within its grace period). Ports are numbers."""

    handler: Literal["exec", "httpGet", "sleep"]
    command: tuple[str, ...] = ()
    port: int = 0
    path: str = "/"
    host: str = ""
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    seconds: int = 0  # sleep

    def describe(self) -> str:
        if self.handler == "exec":
            return "exec " + " ".join(self.command)
        if self.handler == "httpGet":
            return f"{self.scheme.lower()}-get :{self.port}{self.path}"
        return f"sleep {self.seconds}s"

    def as_probe(self, timeout_seconds: int) -> Probe:
        """The same call as a probe makes it (exec and httpGet), with `timeout_seconds`."""
        handler: Literal["exec", "httpGet"] = "exec" if self.handler == "exec" else "httpGet"
        return Probe(
            handler,
            command=self.command,
            port=self.port,
            path=self.path,
            host=self.host,
            scheme=self.scheme,
            headers=self.headers,
            timeout_seconds=max(1, timeout_seconds),
        )


@dataclass(frozen=True)
class PodSpec:
    """What a node needs to run a pod: its containers, fully resolved (no references).

    `init_containers` run one at a time, in order, each to success, before `containers`
    start; those with `restart_policy` "Always" are sidecars that keep running beside them.
    """

    containers: tuple[Container, ...]
    init_containers: tuple[Container, ...] = ()
    volumes: tuple[Volume, ...] = ()
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    termination_grace_period_seconds: int = 30
    # The pod's own name in DNS: `hostname` (default: the pod's name) and, with `subdomain`
    # naming a headless Service of its namespace, `hostname.subdomain.ns.svc.<domain>`.
    hostname: str = ""
    subdomain: str = ""
    # What the pod's /etc/resolv.conf says (kubelet's dnsPolicy and dnsConfig).
    dns_policy: Literal["ClusterFirst", "Default", "None", "ClusterFirstWithHostNet"] = "ClusterFirst"
    dns_nameservers: tuple[str, ...] = ()
    dns_searches: tuple[str, ...] = ()
    dns_options: tuple[tuple[str, str], ...] = ()  # (name, value); value "" for a bare option
    # Whether the Services of the pod's namespace are given to it as environment variables.
    enable_service_links: bool = True
    service_account_name: str = ""  # "" is the namespace's "default"
    # The host's process and IPC namespaces (only where the server allows them).
    host_pid: bool = False
    host_ipc: bool = False
    # The template's annotations, kept only when the downward API hands them to a container.
    annotations: tuple[tuple[str, str], ...] = ()
    # Registry credentials from the pod's imagePullSecrets: not part of the template hash (a
    # rotated credential replaces no pod, as in Kubernetes).
    pull_auths: tuple[RegistryAuth, ...] = ()
    # The node the pod must run on ("": wherever the scheduler places it): a DaemonSet's
    # pod names its node here, as does a template's `nodeName`.
    node_name: str = ""
    # Scheduling constraints and priority (resolved: see `Affinity`); a spec without them
    # encodes and hashes as it did before they existed.
    affinity: Affinity = Affinity()
    topology_spread: tuple[TopologySpreadConstraint, ...] = ()
    priority: int = 0
    priority_class_name: str = ""
    preemption_policy: Literal["PreemptLowerPriority", "Never"] = "PreemptLowerPriority"

    def auth_for(self, image: str) -> RegistryAuth | None:
        """The credentials for `image`'s registry, if the pod has some."""
        registry = image_registry(image)
        return next((a for a in self.pull_auths if a.registry == registry), None)

    @staticmethod
    def upgrade_encoded(data: dict[str, Any]) -> dict[str, Any]:
        """An encoded spec of release 0.1 (one container, its fields on the spec) in today's shape."""
        if "containers" in data:
            return data
        data = dict(data)
        container = {f: data.pop(f) for f in LEGACY_CONTAINER_FIELDS if f in data}
        container["name"] = data.pop("container_name", "main")
        data["containers"] = [container]
        return data

    @property
    def privileged(self) -> bool:
        """Whether the pod needs what only `--allow-privileged` gives."""
        return self.host_pid or self.host_ipc or any(c.security.privileged for c in self.all_containers)

    def with_containers(self, change: Callable[[Container], Container]) -> PodSpec:
        """This spec with `change` applied to each of its containers (init ones too)."""
        return dataclasses.replace(
            self,
            containers=tuple(change(c) for c in self.containers),
            init_containers=tuple(change(c) for c in self.init_containers),
        )

    @property
    def main(self) -> Container:
        """The first app container: what a one-line summary shows."""
        return self.containers[0]

    @property
    def image(self) -> str:
        return self.main.image

    @_cached
    def sidecars(self) -> tuple[Container, ...]:
        return tuple(c for c in self.init_containers if c.restart_policy == "Always")

    @_cached
    def all_containers(self) -> tuple[Container, ...]:
        return (*self.init_containers, *self.containers)

    @_cached
    def ports(self) -> tuple[ContainerPort, ...]:
        """The ports of the containers that serve (app containers and sidecars)."""
        return tuple(p for c in (*self.sidecars, *self.containers) for p in c.ports)

    @_cached
    def cpu_request_milli(self) -> int:
        return self._request(lambda c: c.cpu_request_milli)

    @_cached
    def memory_request_bytes(self) -> int:
        return self._request(lambda c: c.memory_request_bytes)

    def _request(self, of: Callable[[Container], int]) -> int:
        """Kubernetes' effective pod request: the larger of what runs at the end (app
        containers and sidecars) and what each init container needs beside the sidecars
        started before it."""
        total = sum(of(c) for c in self.containers) + sum(of(c) for c in self.sidecars)
        sidecars = 0
        for c in self.init_containers:
            if c.restart_policy == "Always":
                sidecars += of(c)
            else:
                total = max(total, sidecars + of(c))
        return total

    @_cached
    def claims(self) -> tuple[str, ...]:
        """The PersistentVolumeClaims (`namespace/name`) the pod's volumes use."""
        return tuple(dict.fromkeys(v.claim for v in self.volumes if v.claim))

    @_cached
    def host_port_claims(self) -> tuple[tuple[int, str], ...]:
        """The (host port, protocol) pairs this pod takes on its node: one pod per node each."""
        return tuple((p.host_port, p.protocol) for p in self.ports if p.host_port)

    def secret_values(self) -> tuple[bytes, ...]:
        """The Secret values this spec carries (env values and file contents), for redaction."""
        values: set[bytes] = set()
        for c in self.all_containers:
            names = set(c.secret_env)
            values |= {v.encode(errors="surrogateescape") for k, v in c.env if k in names}
            values |= {f.content for f in c.files if f.secret}
        values |= {a.password.encode(errors="surrogateescape") for a in self.pull_auths}
        return tuple(sorted(v for v in values if v))

    @property
    def qos_class(self) -> Literal["Guaranteed", "Burstable", "BestEffort"]:
        """Kubernetes' QoS class: Guaranteed when every container limits CPU and memory at
        its requests, BestEffort when none requests or limits anything."""
        every = self.all_containers
        if all(
            c.cpu_limit_milli is not None
            and c.memory_limit_bytes is not None
            and c.cpu_limit_milli == c.cpu_request_milli
            and c.memory_limit_bytes == c.memory_request_bytes
            for c in every
        ):
            return "Guaranteed"
        if not any(
            c.cpu_request_milli or c.memory_request_bytes or c.cpu_limit_milli or c.memory_limit_bytes
            for c in every
        ):
            return "BestEffort"
        return "Burstable"


@dataclass(frozen=True)
class ContainerStatus:
    """What an agent reports about one container of a pod (its current run)."""

    name: str
    state: Literal["waiting", "running", "terminated"] = "waiting"
    ready: bool = False
    restarts: int = 0
    exit_code: int | None = None
    reason: str = ""  # why it waits or how it ended (`OOMKilled`, `exited with code 1`, ...)
    init: bool = False  # an init container (a sidecar too)
    last_log: str = ""  # tail of the log of its last exit


@dataclass(frozen=True)
class Pod:
    """A pod: desired by the planner, placed by the scheduler, observed by its agent."""

    namespace: str
    name: PodName
    owner: ObjectKey
    template_hash: str
    spec: PodSpec
    labels: tuple[tuple[str, str], ...] = ()
    node: NodeName | None = None
    phase: Phase = "Pending"
    ready: bool = False
    reason: str = ""
    pod_ip: str = ""
    host_ports: tuple[tuple[int, str, int], ...] = ()  # (container port, protocol, host port)
    restarts: int = 0
    exit_code: int | None = None
    created_at: float = 0.0
    last_log: str = ""  # tail of the log of the container's last exit
    terminating_at: float | None = None  # set when stopping: out of endpoints, then SIGTERM
    ready_since: float = 0.0
    containers: tuple[ContainerStatus, ...] = ()  # per container, as its agent last reported

    def available(self, min_ready_seconds: int, now: float) -> bool:
        """Ready for at least `min_ready_seconds` (Kubernetes' availability)."""
        return self.ready and (min_ready_seconds <= 0 or now - self.ready_since >= min_ready_seconds)

    @property
    def id(self) -> PodId:
        return PodId(f"{self.namespace}/{self.name}")

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


PodChange = tuple[Pod | None, Pod | None]
"""A pod that changed between two readings: (before, after); None for one that came or went."""


def pod_changes(
    last: Sequence[Pod], pods: Sequence[Pod]
) -> tuple[list[PodChange], list[int] | None, list[PodChange]]:
    """The pods of `pods` that changed since `last` (both in id order), each as (before,
    after); when no pod came or went, where the changed ones are in `pods` (else None); and
    the pods that are the same but another object (read again). A pod is the same when it
    is the very object of `last` (the store's `PodCache` keeps those of rows not written
    since) or an equal one: at 150,000 pods, a few written cost a walk comparing identities,
    not 150,000 comparisons of values."""
    changed: list[PodChange] = []
    swapped: list[PodChange] = []
    if pods is last:
        return changed, [], swapped
    if len(pods) == len(last):  # the usual change: a few pods written, none come or gone
        where = []
        same = list(map(operator.is_, pods, last))
        for i in itertools.compress(range(len(same)), map(operator.not_, same)):
            p, before = pods[i], last[i]
            if p.namespace != before.namespace or p.name != before.name:
                break  # pods came and went: match them by id below
            if p != before:
                changed.append((before, p))
                where.append(i)
            else:
                swapped.append((before, p))
        else:
            return changed, where, swapped
        changed, swapped = [], []
    known: dict[str, Pod] = {p.id: p for p in last}
    for p in pods:
        was = known.pop(p.id) if p.id in known else None
        if was is None or (was is not p and was != p):
            changed.append((was, p))
        elif was is not p:
            swapped.append((was, p))
    changed += ((p, None) for p in known.values())  # gone
    return changed, None, swapped


# --- nodes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    name: NodeName
    address: str = ""
    cpu_milli: int = 0
    memory_bytes: int = 0
    labels: tuple[tuple[str, str], ...] = ()
    taints: tuple[Taint, ...] = ()
    ready: bool = True
    max_pods: int = 110
    reason: str = ""  # why the node is NotReady ("" when it is Ready)
    pod_cidr: str = ""  # the node's pod subnet ("" until the control plane gives it one)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


# --- services -------------------------------------------------------------------------


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | str
    protocol: str = "TCP"
    name: str = ""
    node_port: int = 0  # NodePort and LoadBalancer Services: the port on every node's addresses


@dataclass(frozen=True)
class Endpoint:
    """A ready pod behind a service port, reachable on its node or from other nodes."""

    pod: PodId
    node: NodeName
    pod_ip: str
    container_port: int
    node_address: str
    host_port: int


@dataclass(frozen=True)
class PodAddress:
    """A pod a Service selects, as cluster DNS names it: its address, and its `hostname`
    when the pod's `subdomain` is that Service (`hostname.service.ns.svc.<domain>`)."""

    pod: PodId
    ip: str
    hostname: str = ""
    ready: bool = True


ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]


@dataclass(frozen=True)
class ServiceEndpoints:
    """A Service with its virtual IP and, per port, the endpoints of its ready pods.

    A headless Service (`clusterIP: None`) has no VIP (`vip` is ""): DNS answers its name
    with `addresses`. An ExternalName Service has neither: DNS answers with a CNAME to
    `external_name`. `addresses` are the ready pods the Service selects (and the not-ready
    ones too with `publishNotReadyAddresses`), whatever its ports."""

    namespace: str
    name: str
    vip: str
    ports: tuple[ServicePort, ...]
    endpoints: tuple[tuple[ServicePort, tuple[Endpoint, ...]], ...] = ()
    type: ServiceType = "ClusterIP"
    headless: bool = False
    external_name: str = ""
    addresses: tuple[PodAddress, ...] = ()
    session_affinity_seconds: int = 0  # sessionAffinity ClientIP: its timeout; 0 for None
    external_local: bool = False  # externalTrafficPolicy: Local
    internal_local: bool = False  # internalTrafficPolicy: Local


@dataclass(frozen=True)
class DisruptionBudget:
    """A PodDisruptionBudget as preemption weighs it: how many of the pods it selects (in
    its namespace) may be disrupted now."""

    namespace: str
    name: str
    selector: LabelSelector | None  # None selects no pod
    allowed: int


@dataclass(frozen=True)
class Preemption:
    """A pod that fits once `victims` (lower-priority pods on `node`) are gone."""

    node: NodeName
    victims: tuple[PodId, ...]


@dataclass(frozen=True)
class Placements:
    """Scheduler output: pods placed on nodes, and pods that fit nowhere with why.

    `preemptions` holds the pods among `unschedulable` that will fit on a node once the
    lower-priority pods named are stopped; `why` (when asked for) says for each placed pod
    why that node: its score against the runner-up's, term by term."""

    assigned: Mapping[PodId, NodeName] = field(default_factory=dict)
    unschedulable: Mapping[PodId, str] = field(default_factory=dict)
    preemptions: Mapping[PodId, Preemption] = field(default_factory=dict)
    why: Mapping[PodId, str] = field(default_factory=dict)


# --- the cluster as a whole -------------------------------------------------------------


@dataclass(frozen=True)
class ClusterState:
    """Everything one control-loop pass reads: desired objects, pods, nodes, rollouts.

    `not_ready_since` maps each NotReady node to the time it became NotReady. `version`
    names this state (a content hash): a preview says which version it was computed on.
    """

    desired: tuple[Manifest, ...]
    pods: tuple[Pod, ...]
    nodes: tuple[Node, ...]
    not_ready_since: Mapping[NodeName, float] = field(default_factory=dict)
    rollouts: Mapping[ObjectKey, RolloutState] = field(default_factory=dict)
    version: str = ""
    # Each PersistentVolumeClaim (`namespace/name`) that has a volume, and the node it is on.
    claims: Mapping[str, NodeName] = field(default_factory=dict)
    jobs: Mapping[ObjectKey, JobState] = field(default_factory=dict)
    crons: Mapping[ObjectKey, CronState] = field(default_factory=dict)
    scales: Mapping[ObjectKey, ScaleState] = field(default_factory=dict)  # per autoscaler
    usage: Mapping[PodId, PodUsage] = field(default_factory=dict)  # as the agents last measured


# --- sources --------------------------------------------------------------------------


@dataclass(frozen=True)
class Revision:
    """One state of a source: a git commit, or a content hash of a watched folder."""

    source: str
    id: str
    message: str = ""
    author: str = ""
    committed_at: float = 0.0


@dataclass(frozen=True)
class PodStatus:
    """What an agent reports about one of its pods."""

    pod: PodId
    phase: Phase
    ready: bool = False
    reason: str = ""
    pod_ip: str = ""
    host_ports: tuple[tuple[int, str, int], ...] = ()
    restarts: int = 0
    exit_code: int | None = None
    container_id: str = ""
    last_log: str = ""
    template_hash: str = ""  # of the container: lets a control plane that lost its state adopt it
    owner: str = ""  # Kind/namespace/name of the pod's owner, from the container's labels
    containers: tuple[ContainerStatus, ...] = ()


@dataclass(frozen=True)
class RolloutState:
    """What the controller remembers of a Deployment's rollouts between passes."""

    deployment: ObjectKey
    target: str  # template hash the source asks for
    started_at: float
    progress_at: float  # last time the rollout made progress
    progress_mark: tuple[int, int] = (0, 0)  # (updated, updated and available) at that time
    status: Literal["progressing", "complete", "failed", "rolled back"] = "progressing"
    reason: str = ""
    # Templates that completed, oldest first: (hash, spec.template) for rollbacks.
    history: tuple[tuple[str, Any], ...] = ()
    error: str = ""  # why the last pass could not plan or write this workload ("" when it could)


@dataclass(frozen=True)
class JobState:
    """What the controller remembers of a Job between passes (Kubernetes keeps it in the
    Job's status): when it started, the pods it has counted as finished, and how it ended.

    `template` is the template hash the run is for: a Job whose template changes in git is
    a new run (Kubernetes refuses the change; in git the new template is the new run)."""

    job: ObjectKey
    template: str
    started_at: float | None = None  # None while suspended before it ever started
    succeeded: int = 0
    failed: int = 0  # pods counted against backoffLimit (restarts too, under OnFailure)
    succeeded_indexes: tuple[int, ...] = ()  # completionMode Indexed
    counted: tuple[str, ...] = ()  # names of finished pods already counted
    created: int = 0  # pods created so far: each new pod's name takes the next number
    last_failure_at: float = 0.0
    condition: Literal["", "Complete", "Failed", "Suspended"] = ""
    reason: str = ""  # why it ended or waits (`BackoffLimitExceeded: ...`)
    finished_at: float | None = None
    expired: bool = False  # ttlSecondsAfterFinished passed: its pods are deleted
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.condition in ("Complete", "Failed")


# --- CronJobs and autoscalers ------------------------------------------------------------


@dataclass(frozen=True)
class CronRun:
    """One Job a CronJob started."""

    name: str  # the Job's name
    scheduled_at: float  # epoch seconds of the schedule time it runs for
    outcome: Literal["", "Complete", "Failed"] = ""  # "" while active


@dataclass(frozen=True)
class CronState:
    """What a pass remembers for the next one."""

    cronjob: ObjectKey
    created_at: float  # when the CronJob first appeared (no runs for earlier times)
    last_schedule: float | None = None  # scheduled time of the last run started
    runs: tuple[CronRun, ...] = ()  # runs whose Job exists (active or kept in history), oldest first
    reason: str = ""  # why the last pass did or did not start a run
    error: str = ""  # why the CronJob cannot run at all (a bad spec); "" when it can


@dataclass(frozen=True)
class ContainerUsage:
    """One container's latest sample."""

    container: str
    cpu_milli: float  # CPU used, millicores (a rate over the agent's sampling interval)
    memory_bytes: int  # working set


@dataclass(frozen=True)
class PodUsage:
    """A pod's latest sample, one entry per running container."""

    pod: PodId
    at: float  # when sampled
    containers: tuple[ContainerUsage, ...]
    # How long the CPU rate was measured over, ending at `at`: a starting pod's sample counts
    # only when all of it was taken after the pod became ready.
    window: float = 0.0


@dataclass(frozen=True)
class MetricStatus:
    """One metric as this pass read it."""

    name: str  # "cpu", "memory", or "cpu of container app"
    current: str  # "83%" or "120m" / "300Mi"; "unknown" when it could not be read
    target: str
    proposal: int | None = None  # the replicas this metric alone asks for (None: not computed)


@dataclass(frozen=True)
class ScaleState:
    """What one pass decided, and what the next pass needs to remember."""

    hpa: ObjectKey
    target: ObjectKey  # the scaleTargetRef (kind Deployment or StatefulSet, same namespace)
    replicas: int  # the replica count the autoscaler wants now (what the target runs)
    last_scale_at: float = 0.0
    recommendations: tuple[tuple[float, int], ...] = ()  # (time, replicas) within the longest window
    events: tuple[tuple[float, int], ...] = ()  # (time, replica change) for behavior policies
    metrics: tuple[MetricStatus, ...] = ()
    reason: str = ""  # why the last decision (kubectl describe hpa-like)
    error: str = ""
    unsupported: tuple[str, ...] = ()

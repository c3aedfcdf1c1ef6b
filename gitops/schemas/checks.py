"""Rules of one document that a JSON Schema cannot say well.

Names and labels in Kubernetes' syntax, a workload's selector against its pod template (a
ReplicationController's is a plain map of labels, by default the template's), the
restartPolicy each workload kind allows (Always for Deployments, StatefulSets, DaemonSets,
ReplicaSets and ReplicationControllers; Never or OnFailure, written out, for Jobs and
CronJobs' job templates), update
strategies, a StatefulSet's claim templates against its volumes, a Job's completion mode and
failure policy, a CronJob's schedule and time zone (`cron`), unique container names,
quantities and request <= limit, volume mounts against declared volumes, a pod's DNS
settings, a pod's scheduling fields (node selector requirements with the values their
operators need, label keys, `matchLabelKeys` beside and apart from their labelSelector,
`minDomains` only with DoNotSchedule, one topology spread constraint per key and
whenUnsatisfiable), Service port names and what each Service type allows (ports optional
only when headless or ExternalName, nodePorts only on NodePort and LoadBalancer, ...), base64 in
Secrets, and what the server's `Policy` allows in every workload's pod template (hostPath
volumes only under the folders its operator named; privileged containers and host namespaces
only if allowed). `node_port_claims` says which ports a Service takes on every node, for the
check across objects in `validate`. Each check reads the plain body defensively (the schema
may already have found it malformed) and returns `Finding`s: a field path and a message;
`validate` turns them into located diagnostics.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from .cron import SCHEDULE_HELP, TZ_HELP, schedule_problem, time_zone_problem
from .loader import FieldPath, format_path
from .quantity import QuantityError, parse_cpu, parse_memory
from .schema import describe_value

__all__ = [
    "DEFAULT_POLICY",
    "EXPOSED_TYPES",
    "NODE_PORTS",
    "WORKLOAD_KINDS",
    "Finding",
    "NodePortClaim",
    "Policy",
    "check_document",
    "is_label_key",
    "is_label_value",
    "is_subdomain",
    "label_selector_matches",
    "node_port_claims",
    "normal_host_path",
    "pod_spec",
    "pod_template_path",
    "under_prefix",
]

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")

SUBDOMAIN_HELP = (
    "a DNS-1123 subdomain (at most 253 lowercase letters, digits, '-' or '.', "
    "starting and ending with a letter or digit)"
)
DNS1035_HELP = (
    "a DNS-1035 label (at most 63 lowercase letters, digits or '-', "
    "starting with a letter and ending with a letter or digit)"
)
LABEL_KEY_HELP = (
    "a label key (an optional DNS-1123 subdomain prefix and '/', then at most 63 letters, "
    "digits, '-', '_' or '.', starting and ending with a letter or digit)"
)
IGNORED_FOR = "field is not acted on by gitops and is ignored for"
LABEL_VALUE_HELP = (
    "a label value (empty, or at most 63 letters, digits, '-', '_' or '.', "
    "starting and ending with a letter or digit)"
)


@dataclass(frozen=True)
class Finding:
    """An error at `path`; `at_key` points it at the key rather than the value."""

    path: FieldPath
    message: str
    at_key: bool = False
    warning: bool = False


def normal_host_path(path: str) -> str:
    """An absolute path on a node, normalised: `..`, `.`, repeated and trailing slashes
    resolved the way the kernel reads them (no symbolic links followed)."""
    return "/" + posixpath.normpath("/" + path).lstrip("/")


def under_prefix(path: str, prefixes: Sequence[str]) -> bool:
    """Whether the absolute `path` is one of `prefixes` or inside one, by whole path
    components of both normalised (/var/log holds /var/log/x, not /var/logs)."""
    normal = normal_host_path(path)
    for prefix in prefixes:
        root = normal_host_path(prefix)
        if normal == root or normal.startswith(root.rstrip("/") + "/"):
            return True
    return False


@dataclass(frozen=True)
class Policy:
    """What a server lets manifests do beyond what Kubernetes itself checks.

    `host_paths`: the folders on the nodes under which `hostPath` volumes may be
    (`gitops serve --allow-host-path`, normalised absolute paths); none by default.
    `privileged`: privileged containers and the host's process and IPC namespaces are
    allowed (`gitops serve --allow-privileged`); the host's network never is."""

    host_paths: tuple[str, ...] = ()
    privileged: bool = False

    def options(self) -> list[str]:
        """This policy as command-line options (for the push hook of a hosted repository)."""
        return [
            *(arg for prefix in self.host_paths for arg in ("--allow-host-path", prefix)),
            *(["--allow-privileged"] if self.privileged else []),
        ]

    def __post_init__(self) -> None:
        relative = [p for p in self.host_paths if not p.startswith("/")]
        if relative:
            raise ValueError(f"host path prefix {relative[0]!r}: expected an absolute path")
        object.__setattr__(self, "host_paths", tuple(dict.fromkeys(map(normal_host_path, self.host_paths))))


DEFAULT_POLICY = Policy()  # allows nothing beyond Kubernetes' own rules


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _items(value: object, path: FieldPath) -> Iterator[tuple[FieldPath, Mapping[str, Any]]]:
    for index, item in enumerate(_list(value)):
        if isinstance(item, Mapping):
            yield (*path, index), item


# --- where each workload kind keeps its pods ----------------------------------------------

WORKLOAD_KINDS = frozenset(
    {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job", "CronJob"}
)
"""The kinds that run pods from a pod template."""


def pod_template_path(kind: str) -> FieldPath:
    """Where a workload of `kind` keeps its pod template (a CronJob: in its job template)."""
    return ("spec", "jobTemplate", "spec", "template") if kind == "CronJob" else ("spec", "template")


def pod_spec(kind: str, body: Mapping[str, Any]) -> tuple[FieldPath, Mapping[str, Any]]:
    """The path of the pod spec of a workload of `kind`, and that spec as written ({} if absent)."""
    path: FieldPath = (*pod_template_path(kind), "spec")
    node: Mapping[str, Any] = body
    for part in path:
        node = _map(node.get(str(part)))
    return path, node


# --- names and labels -------------------------------------------------------------------


def is_subdomain(name: str) -> bool:
    return len(name) <= 253 and bool(_DNS1123_SUBDOMAIN.match(name))


def is_dns1035(name: str) -> bool:
    return len(name) <= 63 and bool(_DNS1035_LABEL.match(name))


def is_label_key(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and not is_subdomain(prefix):
        return False
    return len(name) <= 63 and bool(_QUALIFIED_NAME.match(name))


def is_label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and bool(_QUALIFIED_NAME.match(value)))


def _check_name(name: object, path: FieldPath, *, dns1035: bool) -> Iterator[Finding]:
    if not isinstance(name, str) or not name:
        return
    if dns1035 and not is_dns1035(name):
        yield Finding(path, f"expected {DNS1035_HELP}, got {describe_value(name)}")
    elif not dns1035 and not is_subdomain(name):
        yield Finding(path, f"expected {SUBDOMAIN_HELP}, got {describe_value(name)}")


def _check_labels(labels: object, path: FieldPath, *, values: bool = True) -> Iterator[Finding]:
    for key, value in _map(labels).items():
        if not is_label_key(key):
            yield Finding(
                (*path, key), f"invalid key: expected {LABEL_KEY_HELP}, got {describe_value(key)}", True
            )
        if values and isinstance(value, str) and not is_label_value(value):
            yield Finding((*path, key), f"expected {LABEL_VALUE_HELP}, got {describe_value(value)}")


def _check_metadata(body: Mapping[str, Any], *, dns1035: bool) -> Iterator[Finding]:
    metadata = _map(body.get("metadata"))
    yield from _check_name(metadata.get("name"), ("metadata", "name"), dns1035=dns1035)
    namespace = metadata.get("namespace")
    if isinstance(namespace, str) and namespace and not is_dns1035(namespace):
        yield Finding(("metadata", "namespace"), f"expected {DNS1035_HELP}, got {describe_value(namespace)}")
    yield from _check_labels(metadata.get("labels"), ("metadata", "labels"))
    yield from _check_labels(metadata.get("annotations"), ("metadata", "annotations"), values=False)


# --- selectors ----------------------------------------------------------------------------


def label_selector_matches(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    """Whether a Kubernetes LabelSelector (matchLabels and matchExpressions) selects `labels`."""
    for key, value in _map(selector.get("matchLabels")).items():
        if labels.get(key) != value:
            return False
    for written in _list(selector.get("matchExpressions")):
        expression = _map(written)
        label, operator = str(expression.get("key")), expression.get("operator")
        values = _list(expression.get("values"))
        present = label in labels
        if operator == "In" and not (present and labels[label] in values):
            return False
        if operator == "NotIn" and present and labels[label] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _check_selector_syntax(selector: Mapping[str, Any], path: FieldPath) -> Iterator[Finding]:
    yield from _check_labels(selector.get("matchLabels"), (*path, "matchLabels"))
    expressions = _items(selector.get("matchExpressions"), (*path, "matchExpressions"))
    for item_path, expression in expressions:
        operator, values = expression.get("operator"), expression.get("values")
        key = expression.get("key")
        if isinstance(key, str) and key and not is_label_key(key):
            yield Finding((*item_path, "key"), f"expected {LABEL_KEY_HELP}, got {describe_value(key)}")
        if operator in ("In", "NotIn") and not _list(values):
            yield Finding(item_path, f'expected a non-empty "values" list for operator {operator}')
        if operator in ("Exists", "DoesNotExist") and values:
            yield Finding(
                (*item_path, "values"),
                f"expected no values for operator {operator}, got {describe_value(values)}",
            )


def _check_selector(spec: Mapping[str, Any], base: FieldPath = ("spec",)) -> Iterator[Finding]:
    """A workload's selector (in `spec` at `base`) is well formed, not empty, and selects
    the labels of its own pod template, as Kubernetes requires of every workload kind."""
    selector = spec.get("selector")
    if not isinstance(selector, Mapping):
        return
    path: FieldPath = (*base, "selector")
    findings = list(_check_selector_syntax(selector, path))
    yield from findings
    if findings:
        return  # whether a malformed selector matches its template is not a useful question
    if not _map(selector.get("matchLabels")) and not _list(selector.get("matchExpressions")):
        yield Finding(path, "expected a non-empty selector (matchLabels or matchExpressions)")
        return
    yield from _check_selects_template(selector, spec, base)


def _template_labels(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(_map(_map(spec.get("template")).get("metadata")).get("labels"))


def _check_selects_template(
    selector: Mapping[str, Any], spec: Mapping[str, Any], base: FieldPath
) -> Iterator[Finding]:
    """The LabelSelector `selector` (at `base`.selector) selects the labels of the pod
    template in `spec`: a workload's pods must be its own."""
    template_labels = _template_labels(spec)
    if not label_selector_matches(selector, template_labels):
        shown = ", ".join(f"{k}={v}" for k, v in template_labels.items()) or "none"
        where = format_path((*base, "template", "metadata", "labels"))
        yield Finding(
            (*base, "selector"), f"selector does not match the pod template's labels ({where}: {shown})"
        )


def _check_map_selector(spec: Mapping[str, Any], base: FieldPath = ("spec",)) -> Iterator[Finding]:
    """A ReplicationController's selector: a plain map of labels, by default (absent or
    empty) the pod template's labels, which then must not be empty; one written must
    select the template's labels, as a LabelSelector's matchLabels would."""
    selector = spec.get("selector")
    path: FieldPath = (*base, "selector")
    if isinstance(selector, Mapping) and selector:
        findings = list(_check_labels(selector, path))
        yield from findings
        # A value that is not a string (say, a LabelSelector written here) is the schema's to report.
        if not findings and all(isinstance(v, str) for v in selector.values()):
            yield from _check_selects_template({"matchLabels": selector}, spec, base)
    elif selector in (None, {}) and isinstance(spec.get("template"), Mapping) and not _template_labels(spec):
        where = format_path((*base, "template", "metadata", "labels"))
        problem = "required field is missing" if selector is None else "expected a non-empty selector"
        yield Finding(
            path, f"{problem} when {where} is empty (the selector defaults to the template's labels)"
        )


# --- deployments --------------------------------------------------------------------------


def _check_resources(resources: Mapping[str, Any], path: FieldPath) -> Iterator[Finding]:
    parsed: dict[tuple[str, str], int] = {}
    for section in ("requests", "limits"):
        for name, parse in (("cpu", parse_cpu), ("memory", parse_memory)):
            value = _map(resources.get(section)).get(name)
            if value is None:
                continue
            try:
                parsed[section, name] = parse(value)
            except QuantityError as error:
                yield Finding((*path, section, name), str(error))
    for name, unit in (("cpu", "m"), ("memory", " bytes")):
        request, limit = parsed.get(("requests", name)), parsed.get(("limits", name))
        if request is not None and limit is not None and request > limit:
            written = _map(resources.get("limits")).get(name)
            yield Finding(
                (*path, "requests", name),
                f"request {describe_value(_map(resources.get('requests')).get(name))} ({request}{unit}) "
                f"is greater than the limit {describe_value(written)} ({limit}{unit})",
            )


def _check_env(container: Mapping[str, Any], path: FieldPath) -> Iterator[Finding]:
    for env_path, env in _items(container.get("env"), (*path, "env")):
        if "value" in env and "valueFrom" in env:
            yield Finding((*env_path, "valueFrom"), 'expected either "value" or "valueFrom", not both')
        value_from = _map(env.get("valueFrom"))
        refs = [k for k in ("configMapKeyRef", "secretKeyRef") if k in value_from]
        if len(refs) > 1:
            yield Finding(
                (*env_path, "valueFrom"), 'expected one of "configMapKeyRef" or "secretKeyRef", not both'
            )
    for env_path, source in _items(container.get("envFrom"), (*path, "envFrom")):
        refs = [k for k in ("configMapRef", "secretRef") if k in source]
        if len(refs) != 1:
            yield Finding(env_path, 'expected exactly one of "configMapRef" or "secretRef"')


def _check_container_names(spec: Mapping[str, Any], path: FieldPath) -> Iterator[Finding]:
    """Container names are unique across a pod's init and app containers; only init
    containers may say `restartPolicy` (Always: a sidecar)."""
    seen: dict[str, FieldPath] = {}
    for field in ("initContainers", "containers"):
        for container_path, container in _items(spec.get(field), (*path, field)):
            name = container.get("name")
            if isinstance(name, str):
                if name in seen:
                    yield Finding(
                        (*container_path, "name"),
                        f'duplicate container name "{name}" (also {format_path(seen[name])})',
                    )
                seen.setdefault(name, container_path)
            if field == "containers" and "restartPolicy" in container:
                yield Finding(
                    (*container_path, "restartPolicy"),
                    "only init containers may set restartPolicy (Always makes one a sidecar)",
                )


def _check_volume_sources(volume: Mapping[str, Any], path: FieldPath) -> Iterator[Finding]:
    sources = [k for k in VOLUME_SOURCES if k in volume]
    if len(sources) > 1:
        yield Finding(path, "expected exactly one volume source, got " + ", ".join(f'"{s}"' for s in sources))
    empty = _map(volume.get("emptyDir"))
    if "sizeLimit" in empty:
        try:
            parse_memory(empty["sizeLimit"])
        except QuantityError as error:
            yield Finding((*path, "emptyDir", "sizeLimit"), str(error))
    host_path = _map(volume.get("hostPath")).get("path")
    if isinstance(host_path, str) and ".." in host_path.split("/"):
        yield Finding((*path, "hostPath", "path"), f"must not contain '..', got {describe_value(host_path)}")


HOST_PATH_HELP = "gitops serve --allow-host-path"


def check_host_paths(body: Mapping[str, Any], policy: Policy, kind: str = "Deployment") -> Iterator[Finding]:
    """A workload's hostPath volumes lie under the folders `policy` allows: a pod gets
    at the node's files only where the server's operator said it may."""
    base, pod = pod_spec(kind, body)
    path: FieldPath = (*base, "volumes")
    allowed = ", ".join(policy.host_paths) or "none"
    for volume_path, volume in _items(pod.get("volumes"), path):
        written = _map(volume.get("hostPath")).get("path")
        if not isinstance(written, str) or not written.startswith("/") or ".." in written.split("/"):
            continue  # the schema, or the check of its volume, says what is wrong with it
        if under_prefix(written, policy.host_paths):
            continue
        normal = normal_host_path(written)
        shown = written if normal == (written.rstrip("/") or "/") else f"{written} ({normal})"
        yield Finding(
            (*volume_path, "hostPath", "path"),
            f"hostPath {shown} is not under a prefix this server allows "
            f"({HOST_PATH_HELP}; allowed: {allowed})",
        )


PRIVILEGED_HELP = "gitops serve --allow-privileged"


def check_privileged(body: Mapping[str, Any], policy: Policy, kind: str = "Deployment") -> Iterator[Finding]:
    """Privileged containers and the host's process and IPC namespaces only where the
    server allows them."""
    if policy.privileged:
        return
    base, pod = pod_spec(kind, body)
    for field in ("hostPID", "hostIPC"):
        if pod.get(field) is True:
            refused = f"the host's namespaces are refused unless the server allows them ({PRIVILEGED_HELP})"
            yield Finding((*base, field), f"{refused}, got true")
    for field in ("initContainers", "containers"):
        for container_path, container in _items(pod.get(field), (*base, field)):
            if _map(container.get("securityContext")).get("privileged") is True:
                yield Finding(
                    (*container_path, "securityContext", "privileged"),
                    f"privileged containers are refused unless the server allows them ({PRIVILEGED_HELP}), "
                    "got true",
                )


VOLUME_SOURCES = ("configMap", "secret", "emptyDir", "downwardAPI", "persistentVolumeClaim", "hostPath")


def _check_pod(
    spec: Mapping[str, Any], path: FieldPath, claims: Mapping[str, FieldPath] | None = None
) -> Iterator[Finding]:
    """The rules of a pod template's spec at `path`; `claims` are a StatefulSet's
    volumeClaimTemplates by name, which its containers mount like volumes."""
    claims = claims or {}
    containers = [*_items(spec.get("initContainers"), (*path, "initContainers"))]
    containers += _items(spec.get("containers"), (*path, "containers"))
    yield from _check_container_names(spec, path)
    yield from _check_labels(spec.get("nodeSelector"), (*path, "nodeSelector"))
    yield from _check_dns_config(spec, path)
    yield from _check_affinity(_map(spec.get("affinity")), (*path, "affinity"))
    yield from _check_topology_spread(
        spec.get("topologySpreadConstraints"), (*path, "topologySpreadConstraints")
    )
    volumes: dict[str, FieldPath] = {}
    for volume_path, volume in _items(spec.get("volumes"), (*path, "volumes")):
        name = volume.get("name")
        if not isinstance(name, str):
            continue
        if name in volumes:
            yield Finding(
                (*volume_path, "name"), f'duplicate volume name "{name}" (also {format_path(volumes[name])})'
            )
        else:
            volumes[name] = volume_path
        yield from _check_volume_sources(volume, volume_path)
    for container_path, container in containers:
        yield from _check_resources(_map(container.get("resources")), (*container_path, "resources"))
        yield from _check_env(container, container_path)
        yield from _check_probe_handlers(container, container_path)
        yield from _check_probe_hosts(container, container_path)
        yield from _check_host_ports(container, container_path)
        for mount_path, mount in _items(container.get("volumeMounts"), (*container_path, "volumeMounts")):
            name = mount.get("name")
            if isinstance(name, str) and name not in volumes and name not in claims:
                declared = ", ".join([*volumes, *(c for c in claims if c not in volumes)]) or "none"
                where = format_path((*path, "volumes"))
                if claims:
                    where += " or spec.volumeClaimTemplates"
                yield Finding(
                    (*mount_path, "name"),
                    f'volume "{name}" is not declared in {where} (declared: {declared})',
                )


# --- scheduling: node and pod affinity, topology spread ------------------------------------

_REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
_PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"


def _check_node_requirement(
    requirement: Mapping[str, Any], path: FieldPath, *, field: bool
) -> Iterator[Finding]:
    """One `matchExpressions` (node labels) or `matchFields` (`metadata.name`) entry: its
    values as its operator needs them, as Kubernetes validates a node selector."""
    key, operator, values = requirement.get("key"), requirement.get("operator"), requirement.get("values")
    if not field and isinstance(key, str) and key and not is_label_key(key):
        yield Finding((*path, "key"), f"expected {LABEL_KEY_HELP}, got {describe_value(key)}")
    where: FieldPath = (*path, "values") if "values" in requirement else path
    items = _list(values)
    if field and operator in ("In", "NotIn") and len(items) != 1:
        yield Finding(
            where,
            f"expected exactly one value (a node name) for {operator} on metadata.name, got {len(items)}",
        )
    elif operator in ("In", "NotIn") and not items:
        yield Finding(where, f'expected a non-empty "values" list for operator {operator}')
    elif operator in ("Exists", "DoesNotExist") and values:
        yield Finding(where, f"expected no values for operator {operator}, got {describe_value(values)}")
    elif operator in ("Gt", "Lt") and (len(items) != 1 or not _is_integer_text(items[0])):
        got = describe_value(items[0]) if len(items) == 1 else f"{len(items)} values"
        yield Finding(
            where,
            f"expected exactly one integer value for operator {operator} (the label is compared as a "
            f"number), got {got}",
        )


def _is_integer_text(value: object) -> bool:
    return isinstance(value, str) and bool(re.fullmatch(r"[+-]?[0-9]+", value)) and len(value) <= 19


def _check_node_term(term: Mapping[str, Any], path: FieldPath) -> Iterator[Finding]:
    for item_path, requirement in _items(term.get("matchExpressions"), (*path, "matchExpressions")):
        yield from _check_node_requirement(requirement, item_path, field=False)
    for item_path, requirement in _items(term.get("matchFields"), (*path, "matchFields")):
        yield from _check_node_requirement(requirement, item_path, field=True)


def _selector_keys(selector: Mapping[str, Any]) -> set[str]:
    keys = set(_map(selector.get("matchLabels")))
    keys |= {str(e.get("key")) for _, e in _items(selector.get("matchExpressions"), ())}
    return keys


def _check_label_keys(
    written: Mapping[str, Any], path: FieldPath, fields: Sequence[str]
) -> Iterator[Finding]:
    """`matchLabelKeys` (and `mismatchLabelKeys`) of a pod affinity term or a topology spread
    constraint: label keys, only beside a labelSelector, none of them already in it (the
    pod's values of these keys are added to the selector), and no key in both lists."""
    selector = written.get("labelSelector")
    keys = _selector_keys(selector) if isinstance(selector, Mapping) else set()
    seen: dict[str, str] = {}
    for field in fields:
        listed = _list(written.get(field))
        if listed and not isinstance(selector, Mapping):
            yield Finding((*path, field), "may be set only with a labelSelector (its keys are added to it)")
        for index, key in enumerate(listed):
            if not isinstance(key, str) or not key:
                continue  # the schema says so
            where: FieldPath = (*path, field, index)
            if not is_label_key(key):
                yield Finding(where, f"expected {LABEL_KEY_HELP}, got {describe_value(key)}")
            elif key in keys:
                yield Finding(
                    where,
                    f'key "{key}" is also in {format_path((*path, "labelSelector"))}: expected a key '
                    "the labelSelector does not use (the pod's value of it is added to the selector)",
                )
            elif key in seen and seen[key] != field:
                yield Finding(where, f'key "{key}" is also in {seen[key]}: expected it in one of them')
            seen.setdefault(key, field)


def _check_topology_key(written: Mapping[str, Any], path: FieldPath) -> Iterator[Finding]:
    key = written.get("topologyKey")
    if isinstance(key, str) and key and not is_label_key(key):
        yield Finding((*path, "topologyKey"), f"expected {LABEL_KEY_HELP}, got {describe_value(key)}")


def _check_pod_term(term: Mapping[str, Any], path: FieldPath) -> Iterator[Finding]:
    for field in ("labelSelector", "namespaceSelector"):
        selector = term.get(field)
        if isinstance(selector, Mapping):
            yield from _check_selector_syntax(selector, (*path, field))
    for index, namespace in enumerate(_list(term.get("namespaces"))):
        if isinstance(namespace, str) and namespace and not is_dns1035(namespace):
            yield Finding(
                (*path, "namespaces", index), f"expected {DNS1035_HELP}, got {describe_value(namespace)}"
            )
    yield from _check_topology_key(term, path)
    yield from _check_label_keys(term, path, ("matchLabelKeys", "mismatchLabelKeys"))


def _check_affinity(affinity: Mapping[str, Any], path: FieldPath) -> Iterator[Finding]:
    """A pod's `affinity`, beyond its schema: node selector requirements as their operators
    need them, label keys, and `matchLabelKeys` against the labelSelector."""
    node = _map(affinity.get("nodeAffinity"))
    node_path: FieldPath = (*path, "nodeAffinity")
    terms_path: FieldPath = (*node_path, _REQUIRED, "nodeSelectorTerms")
    for term_path, term in _items(_map(node.get(_REQUIRED)).get("nodeSelectorTerms"), terms_path):
        yield from _check_node_term(term, term_path)
    for item_path, item in _items(node.get(_PREFERRED), (*node_path, _PREFERRED)):
        yield from _check_node_term(_map(item.get("preference")), (*item_path, "preference"))
    for kind in ("podAffinity", "podAntiAffinity"):
        pod = _map(affinity.get(kind))
        for term_path, term in _items(pod.get(_REQUIRED), (*path, kind, _REQUIRED)):
            yield from _check_pod_term(term, term_path)
        for item_path, item in _items(pod.get(_PREFERRED), (*path, kind, _PREFERRED)):
            yield from _check_pod_term(_map(item.get("podAffinityTerm")), (*item_path, "podAffinityTerm"))


def _check_topology_spread(constraints: object, path: FieldPath) -> Iterator[Finding]:
    """A pod's `topologySpreadConstraints`, beyond their schema: `minDomains` only with
    DoNotSchedule, label keys, `matchLabelKeys` against the labelSelector, and one
    constraint per topologyKey and whenUnsatisfiable."""
    seen: dict[tuple[object, object], FieldPath] = {}
    for item_path, constraint in _items(constraints, path):
        when = constraint.get("whenUnsatisfiable")
        if "minDomains" in constraint and isinstance(when, str) and when != "DoNotSchedule":
            yield Finding(
                (*item_path, "minDomains"),
                f'may be set only when whenUnsatisfiable is "DoNotSchedule", got {describe_value(when)}',
            )
        selector = constraint.get("labelSelector")
        if isinstance(selector, Mapping):
            yield from _check_selector_syntax(selector, (*item_path, "labelSelector"))
        yield from _check_topology_key(constraint, item_path)
        yield from _check_label_keys(constraint, item_path, ("matchLabelKeys",))
        pair = (constraint.get("topologyKey"), when)
        if isinstance(pair[0], str) and isinstance(when, str):
            if pair in seen:
                yield Finding(
                    item_path,
                    f"duplicate constraint: topologyKey {describe_value(pair[0])} with whenUnsatisfiable "
                    f"{describe_value(when)} is also {format_path(seen[pair])}",
                )
            seen.setdefault(pair, item_path)


def _check_dns_config(spec: Mapping[str, Any], path: FieldPath) -> Iterator[Finding]:
    """`dnsPolicy: None` takes the whole resolv.conf from `dnsConfig`, so it needs a server."""
    if spec.get("dnsPolicy") != "None" or _list(_map(spec.get("dnsConfig")).get("nameservers")):
        return
    where = (*path, "dnsConfig", "nameservers") if "dnsConfig" in spec else (*path, "dnsPolicy")
    yield Finding(
        where,
        'must provide at least 1 DNS nameserver when dnsPolicy is "None" '
        f"(in {format_path((*path, 'dnsConfig', 'nameservers'))})",
    )


def _check_host_ports(container: Mapping[str, Any], path: FieldPath) -> Iterator[Finding]:
    taken: dict[tuple[object, object], FieldPath] = {}
    for port_path, port in _items(container.get("ports"), (*path, "ports")):
        number = port.get("hostPort")
        if not number:
            continue
        claim = (number, port.get("protocol", "TCP"))
        if claim in taken:
            yield Finding(
                (*port_path, "hostPort"),
                f"duplicate hostPort {number}/{claim[1]} (also {format_path(taken[claim])})",
            )
        taken.setdefault(claim, port_path)


PROBE_HOST_HELP = (
    "probes go to the pod's own address; a probe's host is used only when the server allows it "
    "(gitops serve --allow-probe-hosts), since agents probe from the host's network"
)


PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
PROBE_HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")


def _check_probe_handlers(container: Mapping[str, Any], path: FieldPath) -> Iterator[Finding]:
    """A probe says how to probe in exactly one way, as Kubernetes requires."""
    for probe in PROBES:
        body = container.get(probe)
        if not isinstance(body, Mapping):
            continue
        handlers = [h for h in PROBE_HANDLERS if h in body]
        if len(handlers) != 1:
            got = ", ".join(f'"{h}"' for h in handlers) or "none"
            yield Finding(
                (*path, probe), "expected exactly one handler (exec, httpGet, tcpSocket or grpc), got " + got
            )


def _check_probe_hosts(container: Mapping[str, Any], path: FieldPath) -> Iterator[Finding]:
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        for handler in ("httpGet", "tcpSocket"):
            host = _map(_map(container.get(probe)).get(handler)).get("host")
            if isinstance(host, str) and host:
                yield Finding((*path, probe, handler, "host"), PROBE_HOST_HELP, warning=True)


def _check_strategy(spec: Mapping[str, Any]) -> Iterator[Finding]:
    strategy = _map(spec.get("strategy"))
    rolling = strategy.get("rollingUpdate")
    if strategy.get("type") == "Recreate" and rolling is not None:
        yield Finding(
            ("spec", "strategy", "rollingUpdate"), 'expected no rollingUpdate when type is "Recreate"'
        )
    rolling = _map(rolling)
    if _is_zero(rolling.get("maxSurge")) and _is_zero(rolling.get("maxUnavailable")):
        yield Finding(
            ("spec", "strategy", "rollingUpdate", "maxUnavailable"),
            "expected maxUnavailable > 0 when maxSurge is 0 (the rollout could never progress)",
        )


def _is_zero(value: object) -> bool:
    """Whether an int-or-percent (maxSurge, maxUnavailable) is 0 or 0%."""
    if isinstance(value, str) and value.endswith("%") and value[:-1].isascii() and value[:-1].isdigit():
        return int(value[:-1]) == 0
    return isinstance(value, int) and not isinstance(value, bool) and value == 0


def _check_template(
    spec: Mapping[str, Any], base: FieldPath, claims: Mapping[str, FieldPath] | None = None
) -> Iterator[Finding]:
    """The pod template in `spec` (at `base`): its labels, annotations and pod spec."""
    template = _map(spec.get("template"))
    template_meta = _map(template.get("metadata"))
    yield from _check_labels(template_meta.get("labels"), (*base, "template", "metadata", "labels"))
    yield from _check_labels(
        template_meta.get("annotations"), (*base, "template", "metadata", "annotations"), values=False
    )
    yield from _check_pod(_map(template.get("spec")), (*base, "template", "spec"), claims)


def _check_restarts_always(kind: str, body: Mapping[str, Any]) -> Iterator[Finding]:
    path, pod = pod_spec(kind, body)
    restart = pod.get("restartPolicy")
    if restart in ("OnFailure", "Never"):
        yield Finding(
            (*path, "restartPolicy"),
            f'expected "Always" (a {kind} always restarts its pods), got {describe_value(restart)}',
        )


def _check_deployment(body: Mapping[str, Any]) -> Iterator[Finding]:
    yield from _check_metadata(body, dns1035=False)
    spec = _map(body.get("spec"))
    yield from _check_selector(spec)
    yield from _check_strategy(spec)
    yield from _check_template(spec, ("spec",))
    yield from _check_restarts_always("Deployment", body)


# --- statefulsets, daemonsets, jobs, cronjobs ------------------------------------------------


def _check_statefulset(body: Mapping[str, Any]) -> Iterator[Finding]:
    yield from _check_metadata(body, dns1035=False)
    name = _map(body.get("metadata")).get("name")
    if isinstance(name, str) and is_subdomain(name) and "." in name:
        yield Finding(
            ("metadata", "name"),
            "expected a name without '.' (each pod's hostname is <name>-<ordinal>, a DNS-1123 label), "
            f"got {describe_value(name)}",
        )
    spec = _map(body.get("spec"))
    yield from _check_selector(spec)
    claims: dict[str, FieldPath] = {}
    for claim_path, claim in _items(spec.get("volumeClaimTemplates"), ("spec", "volumeClaimTemplates")):
        meta = _map(claim.get("metadata"))
        yield from _check_labels(meta.get("labels"), (*claim_path, "metadata", "labels"))
        claim_name = meta.get("name")
        if not isinstance(claim_name, str) or not claim_name:
            continue
        yield from _check_name(claim_name, (*claim_path, "metadata", "name"), dns1035=False)
        if claim_name in claims:
            yield Finding(
                (*claim_path, "metadata", "name"),
                f'duplicate claim template name "{claim_name}" (also {format_path(claims[claim_name])})',
            )
        claims.setdefault(claim_name, claim_path)
    yield from _check_template(spec, ("spec",), claims)
    yield from _check_restarts_always("StatefulSet", body)
    pod_path, pod = pod_spec("StatefulSet", body)
    for volume_path, volume in _items(pod.get("volumes"), (*pod_path, "volumes")):
        volume_name = volume.get("name")
        if isinstance(volume_name, str) and volume_name in claims:
            yield Finding(
                (*volume_path, "name"),
                f'volume "{volume_name}" has the name of the claim template '
                f"{format_path(claims[volume_name])}, which would replace it in every pod; "
                "expected names distinct from the volumeClaimTemplates",
            )
    strategy = _map(spec.get("updateStrategy"))
    rolling = strategy.get("rollingUpdate")
    if strategy.get("type") == "OnDelete" and rolling is not None:
        yield Finding(
            ("spec", "updateStrategy", "rollingUpdate"),
            'expected no rollingUpdate when type is "OnDelete" (only allowed for type "RollingUpdate")',
        )
    unavailable = _map(rolling).get("maxUnavailable")
    if _is_zero(unavailable):
        yield Finding(
            ("spec", "updateStrategy", "rollingUpdate", "maxUnavailable"),
            "expected an integer >= 1 or a percentage >= 1% (a rolling update takes at least one pod "
            f"down at a time), got {describe_value(unavailable)}",
        )


def _check_daemonset(body: Mapping[str, Any]) -> Iterator[Finding]:
    yield from _check_metadata(body, dns1035=False)
    spec = _map(body.get("spec"))
    yield from _check_selector(spec)
    yield from _check_template(spec, ("spec",))
    yield from _check_restarts_always("DaemonSet", body)
    strategy = _map(spec.get("updateStrategy"))
    rolling = strategy.get("rollingUpdate")
    path: FieldPath = ("spec", "updateStrategy", "rollingUpdate")
    if strategy.get("type") == "OnDelete" and rolling is not None:
        yield Finding(path, f"{IGNORED_FOR} type OnDelete", at_key=True, warning=True)
        return
    rolling = _map(rolling)
    # Kubernetes' defaults for a DaemonSet: maxUnavailable 1, maxSurge 0.
    if _is_zero(rolling.get("maxUnavailable", 1)) and _is_zero(rolling.get("maxSurge", 0)):
        yield Finding(
            (*path, "maxUnavailable"),
            "may not be 0 when `maxSurge` is 0 (expected maxUnavailable > 0, or maxSurge > 0: "
            "the rollout could never replace a pod)",
        )


def _check_replicaset(body: Mapping[str, Any]) -> Iterator[Finding]:
    yield from _check_metadata(body, dns1035=False)
    spec = _map(body.get("spec"))
    yield from _check_selector(spec)
    yield from _check_template(spec, ("spec",))
    yield from _check_restarts_always("ReplicaSet", body)


def _check_replication_controller(body: Mapping[str, Any]) -> Iterator[Finding]:
    yield from _check_metadata(body, dns1035=False)
    spec = _map(body.get("spec"))
    yield from _check_map_selector(spec)
    yield from _check_template(spec, ("spec",))
    yield from _check_restarts_always("ReplicationController", body)


JOB_NAME_MAX = 63
"""A Job's name is the value of its pods' `batch.kubernetes.io/job-name` label."""
CRON_JOB_NAME_MAX = 52
"""A CronJob's Jobs are named `<name>-<11 characters>`, and a Job name has at most 63."""


def _mask_trailing_dash(prefix: str) -> str:
    """A generateName prefix as Kubernetes validates it: its trailing '-' stands for a letter."""
    return prefix[:-1] + "a" if len(prefix) > 1 and prefix.endswith("-") else prefix


def _check_job(body: Mapping[str, Any]) -> Iterator[Finding]:
    yield from _check_metadata(body, dns1035=False)
    metadata = _map(body.get("metadata"))
    name, prefix = metadata.get("name"), metadata.get("generateName")
    if (
        isinstance(body.get("metadata"), Mapping)
        and "name" not in metadata
        and "generateName" not in metadata
    ):
        yield Finding(("metadata", "name"), "required field is missing (or set generateName: a name prefix)")
    if isinstance(name, str) and len(name) > JOB_NAME_MAX:
        yield Finding(
            ("metadata", "name"),
            f"expected at most {JOB_NAME_MAX} characters (the value of its pods' job-name label), "
            f"got {len(name)}",
        )
    if not name and isinstance(prefix, str) and prefix and not is_subdomain(_mask_trailing_dash(prefix)):
        yield Finding(
            ("metadata", "generateName"),
            f"expected the start of {SUBDOMAIN_HELP}; it may end with '-', got {describe_value(prefix)}",
        )
    spec = body.get("spec")
    if isinstance(spec, Mapping):
        yield from _check_job_spec(spec, ("spec",))


def _check_job_spec(spec: Mapping[str, Any], base: FieldPath) -> Iterator[Finding]:
    """The rules of a Job's spec at `base` (a Job's, or a CronJob's job template's)."""
    mode = spec.get("completionMode", "NonIndexed")
    indexed = mode == "Indexed"
    mode_shown = (
        f"this Job's is {describe_value(mode)}"
        if "completionMode" in spec
        else 'this Job\'s is "NonIndexed", the default'
    )
    if indexed and "completions" not in spec:
        yield Finding(
            (*base, "completions"),
            'required field is missing when completionMode is "Indexed" (expected the number of indexes)',
        )
    for field in ("backoffLimitPerIndex", "maxFailedIndexes", "successPolicy"):
        if field in spec and not indexed:
            yield Finding((*base, field), f'requires completionMode "Indexed" ({mode_shown})')
        elif field in spec:
            yield Finding(
                (*base, field),
                "not acted on: gitops counts failures against backoffLimit for the whole Job "
                "and completes it when every index succeeded",
                warning=True,
            )
    if spec.get("podReplacementPolicy") == "Failed":
        yield Finding(
            (*base, "podReplacementPolicy"),
            'not acted on: gitops replaces a pod as soon as it is terminating ("TerminatingOrFailed")',
            warning=True,
        )
    if indexed and "maxFailedIndexes" in spec and "backoffLimitPerIndex" not in spec:
        yield Finding(
            (*base, "backoffLimitPerIndex"), "required field is missing when maxFailedIndexes is set"
        )
    completions, most = spec.get("completions"), spec.get("maxFailedIndexes")
    if indexed and _is_int(completions) and _is_int(most) and most > completions:
        yield Finding(
            (*base, "maxFailedIndexes"), f"expected at most completions ({completions}), got {most}"
        )
    yield from _check_job_selector(spec, base)
    yield from _check_template(spec, base)
    template = _map(spec.get("template"))
    pod = template.get("spec")
    if not isinstance(pod, Mapping):
        return  # the schema says so
    pod_path: FieldPath = (*base, "template", "spec")
    yield from _check_job_restarts(spec, pod, pod_path)
    yield from _check_pod_failure_policy(spec, pod, base)
    for rule_path, rule in _items(
        _map(spec.get("successPolicy")).get("rules"), (*base, "successPolicy", "rules")
    ):
        if "succeededIndexes" not in rule and "succeededCount" not in rule:
            yield Finding(rule_path, "expected at least one of succeededIndexes or succeededCount")
        count = rule.get("succeededCount")
        if _is_int(count) and _is_int(completions) and count > completions:
            yield Finding(
                (*rule_path, "succeededCount"), f"expected at most completions ({completions}), got {count}"
            )


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_job_selector(spec: Mapping[str, Any], base: FieldPath) -> Iterator[Finding]:
    """Kubernetes writes a Job's selector itself (on a label with the Job's uid) unless
    `manualSelector: true` says the one written is meant; it refuses a written selector
    without it ("`selector` not auto-generated")."""
    manual = spec.get("manualSelector") is True
    if "selector" not in spec:
        if manual:
            yield Finding((*base, "selector"), "required field is missing when manualSelector is true")
        return
    if not manual:
        yield Finding(
            (*base, "selector"),
            "expected manualSelector: true with a selector (Kubernetes generates a Job's selector and "
            "refuses one written without it), or no selector",
        )
        return
    yield from _check_selector(spec, base)


def _check_job_restarts(
    spec: Mapping[str, Any], pod: Mapping[str, Any], path: FieldPath
) -> Iterator[Finding]:
    """A Job's pods run to completion: restartPolicy must say so, since the default,
    Always, is not valid for a Job."""
    restart = pod.get("restartPolicy")
    where: FieldPath = (*path, "restartPolicy")
    if restart is None:
        yield Finding(
            where,
            'required field is missing: expected "Never" or "OnFailure" (a Job\'s pods run to '
            'completion; the default, "Always", is not valid for a Job)',
        )
    elif restart == "Always":
        yield Finding(
            where, 'expected "Never" or "OnFailure" (a Job\'s pods run to completion), got "Always"'
        )
    elif restart == "OnFailure" and isinstance(spec.get("podFailurePolicy"), Mapping):
        yield Finding(
            where, 'expected "Never" (the only restartPolicy podFailurePolicy supports), got "OnFailure"'
        )


def _check_pod_failure_policy(
    spec: Mapping[str, Any], pod: Mapping[str, Any], base: FieldPath
) -> Iterator[Finding]:
    policy = spec.get("podFailurePolicy")
    if not isinstance(policy, Mapping):
        return
    replacement = spec.get("podReplacementPolicy")
    if isinstance(replacement, str) and replacement != "Failed":
        yield Finding(
            (*base, "podReplacementPolicy"),
            f'expected "Failed" when podFailurePolicy is set, got {describe_value(replacement)}',
        )
    names = [
        c["name"]
        for field in ("initContainers", "containers")
        for c in _list(pod.get(field))
        if isinstance(c, Mapping) and isinstance(c.get("name"), str)
    ]
    for rule_path, rule in _items(policy.get("rules"), (*base, "podFailurePolicy", "rules")):
        codes = rule.get("onExitCodes")
        conditions = bool(_list(rule.get("onPodConditions")))
        if codes is not None and conditions:
            yield Finding(rule_path, "expected onExitCodes or onPodConditions, not both")
        if codes is None and not conditions:
            yield Finding(rule_path, "expected one of onExitCodes or onPodConditions")
        if conditions and codes is None:
            yield Finding(
                (*rule_path, "onPodConditions"),
                "matches nothing: gitops sets no pod conditions (an evicted or deleted pod is not "
                "counted as a failure at all)",
                warning=True,
            )
        if rule.get("action") == "FailIndex" and "backoffLimitPerIndex" not in spec:
            yield Finding(
                (*rule_path, "action"),
                f'"FailIndex" requires {format_path((*base, "backoffLimitPerIndex"))} to be set',
            )
        if isinstance(codes, Mapping):
            yield from _check_exit_codes(codes, (*rule_path, "onExitCodes"), names)


def _check_exit_codes(codes: Mapping[str, Any], path: FieldPath, names: Sequence[str]) -> Iterator[Finding]:
    container = codes.get("containerName")
    if isinstance(container, str) and container and container not in names:
        yield Finding(
            (*path, "containerName"),
            "expected the name of a container or init container of the pod template "
            f"({', '.join(names) or 'none'}), got {describe_value(container)}",
        )
    values = [v for v in _list(codes.get("values")) if _is_int(v)]
    seen: set[int] = set()
    for index, value in enumerate(_list(codes.get("values"))):
        if not _is_int(value):
            continue  # the schema says so
        if value == 0 and codes.get("operator") == "In":
            yield Finding(
                (*path, "values", index),
                "must not be 0 for the In operator (exit code 0 is success, never a failure); "
                "expected a non-zero exit code",
            )
        if value in seen:
            yield Finding((*path, "values", index), f"duplicate exit code {value}")
        seen.add(value)
    if values != sorted(values):
        yield Finding((*path, "values"), "must be ordered: expected the exit codes in increasing order")


def _check_cronjob(body: Mapping[str, Any]) -> Iterator[Finding]:
    yield from _check_metadata(body, dns1035=False)
    name = _map(body.get("metadata")).get("name")
    if isinstance(name, str) and len(name) > CRON_JOB_NAME_MAX:
        yield Finding(
            ("metadata", "name"),
            f"expected at most {CRON_JOB_NAME_MAX} characters (its Jobs are named after it with an "
            f"11-character suffix, and a Job name has at most {JOB_NAME_MAX}), got {len(name)}",
        )
    spec = _map(body.get("spec"))
    schedule = spec.get("schedule")
    if isinstance(schedule, str) and schedule:
        problem = schedule_problem(schedule)
        if problem is not None:
            yield Finding(
                ("spec", "schedule"), f"{problem}; expected {SCHEDULE_HELP}, got {describe_value(schedule)}"
            )
    zone = spec.get("timeZone")
    if isinstance(zone, str) and zone:
        problem = time_zone_problem(zone)
        if problem is not None:
            yield Finding(("spec", "timeZone"), f"{problem}; expected {TZ_HELP}, got {describe_value(zone)}")
    job_template = _map(spec.get("jobTemplate"))
    job_meta = _map(job_template.get("metadata"))
    base: FieldPath = ("spec", "jobTemplate")
    yield from _check_labels(job_meta.get("labels"), (*base, "metadata", "labels"))
    yield from _check_labels(job_meta.get("annotations"), (*base, "metadata", "annotations"), values=False)
    job_spec = job_template.get("spec")
    if isinstance(job_spec, Mapping):
        yield from _check_job_spec(job_spec, (*base, "spec"))


# --- services, config maps, secrets ---------------------------------------------------------


NODE_PORTS = (30000, 32767)
"""The node port range, as Kubernetes' default `--service-node-port-range`."""
EXPOSED_TYPES = ("NodePort", "LoadBalancer")
"""Service types that answer on every node's addresses: on node ports (LoadBalancer on its
ports too, as k3s's servicelb does without a cloud)."""


@dataclass(frozen=True)
class NodePortClaim:
    """A port a Service takes on every node: a `nodePort`, or a LoadBalancer's `port`."""

    path: FieldPath
    number: int
    protocol: str
    what: str  # "nodePort" or "LoadBalancer port"
    port_index: int  # which entry of spec.ports claims it


def node_port_claims(body: Mapping[str, Any]) -> list[NodePortClaim]:
    """The (port, protocol) pairs a Service takes on every node, as written; a Service of
    another type takes none (its stray nodePorts are errors of `check_document`)."""
    spec = _map(body.get("spec"))
    kind = spec.get("type", "ClusterIP")
    if kind not in EXPOSED_TYPES:
        return []
    claims = []
    for index, (port_path, port) in enumerate(_items(spec.get("ports"), ("spec", "ports"))):
        protocol = port.get("protocol", "TCP")
        if not isinstance(protocol, str):
            continue
        number = port.get("nodePort")
        if isinstance(number, int) and not isinstance(number, bool):
            claims.append(NodePortClaim((*port_path, "nodePort"), number, protocol, "nodePort", index))
        number = port.get("port")
        if kind == "LoadBalancer" and isinstance(number, int) and not isinstance(number, bool):
            claims.append(NodePortClaim((*port_path, "port"), number, protocol, "LoadBalancer port", index))
    return claims


def _check_service_type(spec: Mapping[str, Any]) -> Iterator[Finding]:
    kind = spec.get("type", "ClusterIP")
    if not isinstance(kind, str):
        return
    headless = spec.get("clusterIP") == "None"
    if kind == "ExternalName":
        name = spec.get("externalName")
        if "externalName" not in spec:
            yield Finding(("spec", "externalName"), "required field is missing for type ExternalName")
        elif isinstance(name, str) and name and not is_subdomain(name.removesuffix(".")):
            yield Finding(
                ("spec", "externalName"), f"expected a DNS name: {SUBDOMAIN_HELP}, got {describe_value(name)}"
            )
        if spec.get("clusterIP"):
            yield Finding(
                ("spec", "clusterIP"), "may not be set for type ExternalName (it has no cluster IP)"
            )
        if spec.get("selector"):
            yield Finding(("spec", "selector"), f"{IGNORED_FOR} type ExternalName", at_key=True, warning=True)
    elif "externalName" in spec:
        yield Finding(("spec", "externalName"), f"{IGNORED_FOR} type {kind}", at_key=True, warning=True)
    if kind in EXPOSED_TYPES and headless:
        yield Finding(
            ("spec", "clusterIP"), f'may not be "None" for type {kind} (a headless Service has no node ports)'
        )
    if kind not in EXPOSED_TYPES and "externalTrafficPolicy" in spec:
        yield Finding(
            ("spec", "externalTrafficPolicy"),
            f"may be set only for type NodePort or LoadBalancer (externally reachable), not {kind}",
        )
    affinity = spec.get("sessionAffinity", "None")
    if "sessionAffinityConfig" in spec and affinity != "ClientIP":
        yield Finding(
            ("spec", "sessionAffinityConfig"),
            f'must not be set when sessionAffinity is {describe_value(affinity)} (only with "ClientIP")',
        )
    ports = spec.get("ports")
    if kind != "ExternalName" and not headless and (ports is None or ports == []):
        missing = "required field is missing" if ports is None else "expected at least 1 item(s), got 0"
        yield Finding(
            ("spec", "ports"),
            f"{missing} (only a headless Service, clusterIP: None, or an ExternalName Service "
            "may have no ports)",
        )
    if kind not in EXPOSED_TYPES:
        for port_path, port in _items(ports, ("spec", "ports")):
            if "nodePort" in port:
                yield Finding(
                    (*port_path, "nodePort"),
                    f"may be used only when type is NodePort or LoadBalancer, not {kind}",
                )


def _check_service(body: Mapping[str, Any]) -> Iterator[Finding]:
    yield from _check_metadata(body, dns1035=True)
    spec = _map(body.get("spec"))
    yield from _check_labels(spec.get("selector"), ("spec", "selector"))
    yield from _check_service_type(spec)
    ports = list(_items(spec.get("ports"), ("spec", "ports")))
    names: dict[str, FieldPath] = {}
    numbers: dict[tuple[object, object], FieldPath] = {}
    for port_path, port in ports:
        name = port.get("name")
        if len(ports) > 1 and not name:
            yield Finding(
                port_path, "expected a port name: names are required when a Service has more than one port"
            )
        if isinstance(name, str) and name:
            if name in names:
                yield Finding(
                    (*port_path, "name"), f'duplicate port name "{name}" (also {format_path(names[name])})'
                )
            names.setdefault(name, port_path)
        number = (port.get("port"), port.get("protocol", "TCP"))
        if isinstance(number[0], int) and isinstance(number[1], str):
            if number in numbers:
                yield Finding(
                    (*port_path, "port"),
                    f"duplicate port {number[0]}/{number[1]} (also {format_path(numbers[number])})",
                )
            numbers.setdefault(number, port_path)
    taken: dict[tuple[int, str], NodePortClaim] = {}
    for claim in node_port_claims(body):
        first = taken.setdefault((claim.number, claim.protocol), claim)
        if first is not claim and first.port_index != claim.port_index:
            yield Finding(
                claim.path,
                f"{claim.what} {claim.number}/{claim.protocol} is also the {first.what} of "
                f"{format_path(first.path)}; a port on the nodes leads to one Service port",
            )


def _check_base64(data: object, path: FieldPath) -> Iterator[Finding]:
    for key, value in _map(data).items():
        if not isinstance(value, str):
            continue
        compact = value.replace("\n", "").replace("\r", "")
        try:
            valid = bool(_BASE64.match(compact)) and len(compact) % 4 == 0
            if valid:
                base64.b64decode(compact, validate=True)
        except binascii.Error:
            valid = False
        if not valid:
            yield Finding(
                (*path, key),
                "invalid base64: expected standard base64 (A-Z, a-z, 0-9, '+', '/', padded with '=' "
                f"to a multiple of 4 characters), got {describe_value(value)}",
            )


def _check_configmap(body: Mapping[str, Any]) -> Iterator[Finding]:
    yield from _check_metadata(body, dns1035=False)
    data = _map(body.get("data"))
    for key in _map(body.get("binaryData")):
        if key in data:
            yield Finding(("binaryData", key), f'key "{key}" is also in data; keys must be unique', True)
    yield from _check_base64(body.get("binaryData"), ("binaryData",))


def _check_secret(body: Mapping[str, Any]) -> Iterator[Finding]:
    yield from _check_metadata(body, dns1035=False)
    yield from _check_base64(body.get("data"), ("data",))


def _check_namespace(body: Mapping[str, Any]) -> Iterator[Finding]:
    yield from _check_metadata(body, dns1035=True)


_CHECKS = {
    "Deployment": _check_deployment,
    "StatefulSet": _check_statefulset,
    "DaemonSet": _check_daemonset,
    "ReplicaSet": _check_replicaset,
    "ReplicationController": _check_replication_controller,
    "Job": _check_job,
    "CronJob": _check_cronjob,
    "Service": _check_service,
    "ConfigMap": _check_configmap,
    "Secret": _check_secret,
    "Namespace": _check_namespace,
}


def check_document(kind: str, body: Mapping[str, Any], *, policy: Policy = DEFAULT_POLICY) -> list[Finding]:
    """The errors of one document of a known `kind` beyond what its schema checks, and
    what `policy` (the server's) does not allow."""
    findings = list(_CHECKS[kind](body))
    if kind in WORKLOAD_KINDS:
        findings += check_host_paths(body, policy, kind)
        findings += check_privileged(body, policy, kind)
    return findings

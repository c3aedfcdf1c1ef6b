"""The kinds gitops stores but does not act on, and the rules of their documents.

Real applications ship RBAC, disruption budgets, network policies, quotas, custom resource
definitions and the like beside their Deployments. gitops loads them like every other kind:
each is checked against a JSON Schema of its own (`<kind>.schema.json`, the real Kubernetes
fields), stored, diffed in previews, shown, and pruned when its source drops it. Nothing
runs from most of them (`INERT_KINDS`): no rule is enforced, no traffic routed, nothing
scaled. So that nobody takes a stored NetworkPolicy for an enforced one, each such object
gets one warning (`not_acted_on`), at its `kind:` line.

PersistentVolumeClaims, HorizontalPodAutoscalers, PriorityClasses and PodDisruptionBudgets
are stored the same way but without that warning, since gitops acts on them: a claim is a
local volume that pins its pods (`docs/pods.md`); an autoscaler scales the Deployment,
StatefulSet, ReplicaSet or ReplicationController it names on cpu and memory (Resource and
ContainerResource metrics; Pods, Object and External metrics get a warning: nothing
computes them); a PriorityClass gives the pods that name it (or, with `globalDefault`,
those that name none) their priority (`pod_priority`), which orders scheduling and lets
preemption take the room of lower-priority pods; a PodDisruptionBudget limits how many of
the pods it selects preemption may disrupt (`docs/scheduler.md`). A StorageClass's warning
says that its reclaimPolicy is used. `STORED_KINDS` are the kinds whose only rules beyond
their schema are the ones here (`check_stored`): Kubernetes' name syntax, labels, and a few
rules a schema cannot say. References between these objects (a RoleBinding naming a
ServiceAccount) are not checked: gitops does not act on them, and the objects they name
often live elsewhere; an autoscaler's target, a pod's PriorityClass and the one global
default class are checked across objects, in `validate`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gitops.model import API_VERSIONS

from .checks import (
    DNS1035_HELP,
    LABEL_KEY_HELP,
    LABEL_VALUE_HELP,
    SUBDOMAIN_HELP,
    Finding,
    is_dns1035,
    is_label_key,
    is_label_value,
    is_subdomain,
)
from .loader import FieldPath
from .schema import describe_value

__all__ = [
    "BUILTIN_PRIORITY_CLASSES",
    "HIGHEST_USER_PRIORITY",
    "INERT_KINDS",
    "SCALABLE_KINDS",
    "STORED_KINDS",
    "PodPriority",
    "check_stored",
    "default_priority_class",
    "not_acted_on",
    "pod_priority",
]

INERT_KINDS = frozenset(
    {
        "ServiceAccount",
        "Role",
        "ClusterRole",
        "RoleBinding",
        "ClusterRoleBinding",
        "StorageClass",
        "NetworkPolicy",
        "Ingress",
        "LimitRange",
        "ResourceQuota",
        "CustomResourceDefinition",
        "PersistentVolume",
    }
)
"""Kinds gitops stores, diffs, shows and prunes, and never acts on."""

STORED_KINDS = INERT_KINDS | {
    "PersistentVolumeClaim",
    "HorizontalPodAutoscaler",
    "PriorityClass",
    "PodDisruptionBudget",
}
"""Kinds whose document rules are `check_stored` (`checks.check_document` has none for them)."""

_RBAC_KINDS = frozenset({"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"})
_SEGMENT_HELP = "a name without '/' or '%' that is not \".\" or \"..\""


_ONLY = {
    "StorageClass": (
        "stored; gitops uses only its reclaimPolicy (Retain keeps the volume of a claim that leaves git)"
    ),
    "PersistentVolume": (
        "stored; gitops does not act on PersistentVolume objects: a claim's volume is a local "
        "Docker volume on the node of its first pod"
    ),
}


def not_acted_on(kind: str) -> str:
    """The one warning each object of an inert `kind` gets."""
    return _ONLY.get(kind, f"stored; gitops does not act on {kind} objects")


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _check_metadata(kind: str, body: Mapping[str, Any]) -> Iterator[Finding]:
    metadata = _map(body.get("metadata"))
    name = metadata.get("name")
    if isinstance(name, str) and name:
        if kind in _RBAC_KINDS:
            # RBAC names are path segments: `system:aggregate-to-view` is a valid one.
            if name in (".", "..") or "/" in name or "%" in name:
                yield Finding(("metadata", "name"), f"expected {_SEGMENT_HELP}, got {describe_value(name)}")
        elif not is_subdomain(name):
            yield Finding(("metadata", "name"), f"expected {SUBDOMAIN_HELP}, got {describe_value(name)}")
    namespace = metadata.get("namespace")
    if isinstance(namespace, str) and namespace and not is_dns1035(namespace):
        yield Finding(("metadata", "namespace"), f"expected {DNS1035_HELP}, got {describe_value(namespace)}")
    for field in ("labels", "annotations"):
        for key, value in _map(metadata.get(field)).items():
            path: FieldPath = ("metadata", field, key)
            if not is_label_key(key):
                message = f"invalid key: expected {LABEL_KEY_HELP}, got {describe_value(key)}"
                yield Finding(path, message, at_key=True)
            if field == "labels" and isinstance(value, str) and not is_label_value(value):
                yield Finding(path, f"expected {LABEL_VALUE_HELP}, got {describe_value(value)}")


def _check_disruption_budget(body: Mapping[str, Any]) -> Iterator[Finding]:
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        return  # the schema says so
    if "minAvailable" in spec and "maxUnavailable" in spec:
        yield Finding(("spec", "maxUnavailable"), "expected minAvailable or maxUnavailable, not both")
    elif "minAvailable" not in spec and "maxUnavailable" not in spec:
        yield Finding(
            ("spec",),
            "neither minAvailable nor maxUnavailable: as in Kubernetes, this budget allows no disruption "
            "of the pods it selects",
            at_key=True,
            warning=True,
        )


# --- priorities ---------------------------------------------------------------------------

HIGHEST_USER_PRIORITY = 1_000_000_000
"""The highest value a PriorityClass may have unless its name starts with `system-`."""
_INT32_MAX = 2_147_483_647  # beyond it, the schema says what is wrong
BUILTIN_PRIORITY_CLASSES: Mapping[str, int] = {
    "system-cluster-critical": 2_000_000_000,
    "system-node-critical": 2_000_001_000,
}
"""The classes every Kubernetes cluster has without a manifest, with their values."""

PreemptionPolicy = Literal["PreemptLowerPriority", "Never"]


@dataclass(frozen=True)
class PodPriority:
    """A pod's priority as Kubernetes' admission sets it: the value of its class (`source`,
    "" when it has none) and the preemption policy of the class unless the pod says one."""

    value: int
    preemption_policy: PreemptionPolicy
    source: str


def _policy(value: object) -> PreemptionPolicy:
    return "Never" if value == "Never" else "PreemptLowerPriority"


def default_priority_class(classes: Mapping[str, Mapping[str, Any]]) -> str:
    """The name of the class with `globalDefault: true` among `classes` (bodies by name, in
    source order: the first when several claim it, which `validate` refuses), or ""."""
    return next((name for name, body in classes.items() if body.get("globalDefault") is True), "")


def pod_priority(
    pod: Mapping[str, Any], classes: Mapping[str, Mapping[str, Any]], default: str | None = None
) -> PodPriority | None:
    """The priority of a pod spec `pod` as written, from its `priorityClassName` (a class of
    `classes`, PriorityClass bodies by name, or a built-in one), else the global default
    class (`default`, found in `classes` when None), else 0; None when it names a class
    that does not exist. A `preemptionPolicy` the pod writes wins over its class's."""
    name = pod.get("priorityClassName")
    written = pod.get("preemptionPolicy")
    if isinstance(name, str) and name:
        body = classes.get(name)
        if body is not None:
            value = body.get("value")
            number = value if isinstance(value, int) and not isinstance(value, bool) else 0
            return PodPriority(number, _policy(written or body.get("preemptionPolicy")), name)
        if name in BUILTIN_PRIORITY_CLASSES:
            return PodPriority(BUILTIN_PRIORITY_CLASSES[name], _policy(written), name)
        return None
    fallback = default_priority_class(classes) if default is None else default
    if fallback:
        return pod_priority({**pod, "priorityClassName": fallback}, classes, fallback)
    return PodPriority(0, _policy(written), "")


def _check_priority_class(body: Mapping[str, Any]) -> Iterator[Finding]:
    value = body.get("value")
    name = _map(body.get("metadata")).get("name")
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and HIGHEST_USER_PRIORITY < value <= _INT32_MAX
        and isinstance(name, str)
        and not name.startswith("system-")
    ):
        yield Finding(
            ("value",),
            f"expected at most {HIGHEST_USER_PRIORITY} for a user-defined class (higher values are "
            f"reserved for classes named system-...), got {value}",
        )


def _check_backend(backend: Mapping[str, Any], path: FieldPath) -> Iterator[Finding]:
    if ("service" in backend) == ("resource" in backend):
        yield Finding(path, "expected exactly one of service and resource")
    port = _map(_map(backend.get("service")).get("port"))
    if port and ("number" in port) == ("name" in port):
        yield Finding((*path, "service", "port"), "expected exactly one of number and name")


def _check_ingress(body: Mapping[str, Any]) -> Iterator[Finding]:
    spec = body.get("spec")
    if not isinstance(spec, Mapping):
        return  # the schema says so
    if isinstance(spec.get("defaultBackend"), Mapping):
        yield from _check_backend(spec["defaultBackend"], ("spec", "defaultBackend"))
    rules = spec.get("rules")
    for r_index, rule in enumerate(rules if isinstance(rules, list) else []):
        paths = _map(_map(rule).get("http")).get("paths")
        for p_index, item in enumerate(paths if isinstance(paths, list) else []):
            backend = _map(item).get("backend")
            if isinstance(backend, Mapping):
                path: FieldPath = ("spec", "rules", r_index, "http", "paths", p_index, "backend")
                yield from _check_backend(backend, path)
    if not spec.get("rules") and "defaultBackend" not in spec:
        yield Finding(("spec",), "expected rules or a defaultBackend")


def _check_custom_resource_definition(body: Mapping[str, Any]) -> Iterator[Finding]:
    spec = _map(body.get("spec"))
    plural, group = _map(spec.get("names")).get("plural"), spec.get("group")
    name = _map(body.get("metadata")).get("name")
    if isinstance(plural, str) and isinstance(group, str) and isinstance(name, str):
        expected = f"{plural}.{group}"
        if name != expected:
            yield Finding(
                ("metadata", "name"),
                f'expected "{expected}" (spec.names.plural and spec.group), got {describe_value(name)}',
            )
    versions = spec.get("versions")
    storage = [v for v in versions if _map(v).get("storage") is True] if isinstance(versions, list) else []
    if isinstance(versions, list) and versions and len(storage) != 1:
        yield Finding(
            ("spec", "versions"), f"expected exactly one version with storage: true, got {len(storage)}"
        )


SCALABLE_KINDS = ("Deployment", "StatefulSet", "ReplicaSet", "ReplicationController")
"""The kinds an autoscaler may name in scaleTargetRef (those with a scale subresource that
gitops runs), each with its apiVersion (`API_VERSIONS`)."""
_SCALABLE_HELP = ", ".join(f'"{k}"' for k in SCALABLE_KINDS[:-1]) + f' or "{SCALABLE_KINDS[-1]}"'

_METRIC_SOURCES = {
    "Resource": "resource",
    "ContainerResource": "containerResource",
    "Pods": "pods",
    "Object": "object",
    "External": "external",
}
_MEASURED = ("cpu", "memory")


def _check_autoscaler(body: Mapping[str, Any]) -> Iterator[Finding]:
    spec = _map(body.get("spec"))
    low, high = spec.get("minReplicas"), spec.get("maxReplicas")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        yield Finding(("spec", "maxReplicas"), f"expected at least minReplicas ({low}), got {high}")
    target = _map(spec.get("scaleTargetRef"))
    kind, api_version = target.get("kind"), target.get("apiVersion")
    if isinstance(kind, str) and kind and kind not in SCALABLE_KINDS:
        yield Finding(
            ("spec", "scaleTargetRef", "kind"),
            f"expected {_SCALABLE_HELP} (the kinds gitops scales), got {describe_value(kind)}",
        )
    elif kind in SCALABLE_KINDS and isinstance(api_version, str) and api_version != API_VERSIONS[kind]:
        yield Finding(
            ("spec", "scaleTargetRef", "apiVersion"),
            f'expected "{API_VERSIONS[kind]}" for {kind}, got {describe_value(api_version)}',
        )
    metrics = spec.get("metrics")
    for index, written in enumerate(metrics if isinstance(metrics, list) else []):
        if isinstance(written, Mapping):
            yield from _check_metric(written, ("spec", "metrics", index))


def _check_metric(metric: Mapping[str, Any], path: FieldPath) -> Iterator[Finding]:
    kind = metric.get("type")
    source = _METRIC_SOURCES.get(kind) if isinstance(kind, str) else None
    if source is None:
        return  # the schema says so
    if source not in metric:
        yield Finding((*path, source), f"required field is missing for type {kind}")
    for other in _METRIC_SOURCES.values():
        if other != source and other in metric:
            yield Finding(
                (*path, other),
                f'a field of another metric type: expected only "{source}" for type {kind}',
                at_key=True,
            )
    if kind not in ("Resource", "ContainerResource"):
        yield Finding(
            (*path, "type"),
            f"not computed by gitops: only Resource and ContainerResource cpu and memory metrics are; "
            f"this {kind} metric is ignored",
            warning=True,
        )
        return
    written = _map(metric.get(source))
    name = written.get("name")
    if isinstance(name, str) and name and name not in _MEASURED:
        yield Finding(
            (*path, source, "name"),
            f'expected "cpu" or "memory" (the resources gitops measures), got {describe_value(name)}',
        )
    target = _map(written.get("target"))
    target_path: FieldPath = (*path, source, "target")
    aim = target.get("type")
    if aim == "Value":
        yield Finding(
            (*target_path, "type"),
            'expected "Utilization" or "AverageValue" (a resource metric is averaged over the pods), '
            'got "Value"',
        )
    for aim_type, field in (("Utilization", "averageUtilization"), ("AverageValue", "averageValue")):
        if aim == aim_type and field not in target:
            yield Finding((*target_path, field), f'required field is missing for type "{aim_type}"')


_RULES = {
    "PodDisruptionBudget": _check_disruption_budget,
    "PriorityClass": _check_priority_class,
    "Ingress": _check_ingress,
    "CustomResourceDefinition": _check_custom_resource_definition,
    "HorizontalPodAutoscaler": _check_autoscaler,
}


def check_stored(kind: str, body: Mapping[str, Any]) -> list[Finding]:
    """The errors of one document of a `STORED_KINDS` kind beyond what its schema checks."""
    if kind not in STORED_KINDS:
        raise ValueError(f"{kind} is not a stored-only kind")
    findings = list(_check_metadata(kind, body))
    rules = _RULES.get(kind)
    if rules is not None:
        findings += rules(body)
    return findings

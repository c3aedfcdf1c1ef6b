"""A pod template's scheduling fields, resolved the way Kubernetes resolves them.

In comes the pod spec as written (`spec.template.spec`, already validated) with the pod's
namespace and template labels; out come the model's values (`Affinity`,
`TopologySpreadConstraint`, priority) that the scheduler reads without ever looking at a
manifest again:

- `matchLabelKeys` are merged into their selector as the API server does when it creates a
  pod: for each key the pod's labels have, `key In (value)`; `mismatchLabelKeys` add
  `key NotIn (value)`; keys the labels lack are left out.
- A pod affinity term that names neither `namespaces` nor a `namespaceSelector` is about
  the pod's own namespace; `namespaceSelector: {}` is every namespace.
- A missing `labelSelector` is None: it matches no pod.
- `priorityClassName` becomes the number it stands for (`gitops.schemas.kinds.pod_priority`):
  the class of the source or a built-in one, else the global default class, else 0.

Lists keep the order of the manifest, so the same template always resolves the same.
`namespace_labels` gives each namespace's labels, as the scheduler matches a term's
`namespaceSelector` against them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, cast

from gitops.model import (
    REQUIREMENT_OPERATORS,
    Affinity,
    LabelSelector,
    Manifest,
    NodeSelectorTerm,
    PodAffinityTerm,
    PreferredNodeTerm,
    Requirement,
    TopologySpreadConstraint,
    WeightedPodAffinityTerm,
)
from gitops.schemas.kinds import PodPriority, pod_priority

__all__ = [
    "NAMESPACE_NAME_LABEL",
    "affinity_of",
    "label_selector",
    "namespace_labels",
    "node_selector_term",
    "priority_of",
    "topology_spread_of",
]

_REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
_PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""The label every namespace has, its own name (set by Kubernetes, here from the key)."""

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _requirement(written: Mapping[str, Any]) -> Requirement:
    operator = str(written.get("operator"))
    if operator not in REQUIREMENT_OPERATORS:
        raise ValueError(f"unknown operator {operator!r}")  # the schema refuses it
    values = tuple(str(v) for v in _list(written.get("values")))
    return Requirement(str(written.get("key", "")), cast(Operator, operator), values)


def label_selector(written: object) -> LabelSelector | None:
    """A LabelSelector as written (`matchLabels`, `matchExpressions`); None when absent."""
    if not isinstance(written, Mapping):
        return None
    return LabelSelector(
        match_labels=tuple((str(k), str(v)) for k, v in _map(written.get("matchLabels")).items()),
        expressions=tuple(_requirement(_map(e)) for e in _list(written.get("matchExpressions"))),
    )


def node_selector_term(written: object) -> NodeSelectorTerm:
    term = _map(written)
    return NodeSelectorTerm(
        expressions=tuple(_requirement(_map(e)) for e in _list(term.get("matchExpressions"))),
        fields=tuple(_requirement(_map(e)) for e in _list(term.get("matchFields"))),
    )


def _with_label_keys(
    selector: LabelSelector | None,
    match: Iterable[object],
    mismatch: Iterable[object],
    labels: Mapping[str, str],
) -> LabelSelector | None:
    """`selector` with the pod's own values of `match` keys required (In) and of `mismatch`
    keys excluded (NotIn), as Kubernetes merges them; keys the pod lacks are ignored."""
    if selector is None:
        return None  # validation refuses label keys without a selector
    added = [Requirement(str(k), "In", (labels[str(k)],)) for k in match if str(k) in labels]
    added += [Requirement(str(k), "NotIn", (labels[str(k)],)) for k in mismatch if str(k) in labels]
    if not added:
        return selector
    return LabelSelector(selector.match_labels, (*selector.expressions, *added))


def _pod_term(written: object, namespace: str, labels: Mapping[str, str]) -> PodAffinityTerm:
    term = _map(written)
    namespaces = tuple(str(n) for n in _list(term.get("namespaces")))
    namespace_selector = label_selector(term.get("namespaceSelector"))
    if not namespaces and namespace_selector is None:
        namespaces = (namespace,)
    selector = _with_label_keys(
        label_selector(term.get("labelSelector")),
        _list(term.get("matchLabelKeys")),
        _list(term.get("mismatchLabelKeys")),
        labels,
    )
    return PodAffinityTerm(
        selector=selector,
        topology_key=str(term.get("topologyKey", "")),
        namespaces=namespaces,
        namespace_selector=namespace_selector,
    )


def _pod_terms(
    written: Mapping[str, Any], namespace: str, labels: Mapping[str, str]
) -> tuple[tuple[PodAffinityTerm, ...], tuple[WeightedPodAffinityTerm, ...]]:
    required = tuple(_pod_term(t, namespace, labels) for t in _list(written.get(_REQUIRED)))
    preferred = tuple(
        WeightedPodAffinityTerm(
            int(_map(t).get("weight", 1)), _pod_term(_map(t).get("podAffinityTerm"), namespace, labels)
        )
        for t in _list(written.get(_PREFERRED))
    )
    return required, preferred


def affinity_of(pod: Mapping[str, Any], *, namespace: str, labels: Mapping[str, str]) -> Affinity:
    """`pod.affinity` resolved for a pod of `namespace` with template `labels`."""
    written = _map(pod.get("affinity"))
    if not written:
        return Affinity()
    node = _map(written.get("nodeAffinity"))
    required = node.get(_REQUIRED)
    pod_required, pod_preferred = _pod_terms(_map(written.get("podAffinity")), namespace, labels)
    anti_required, anti_preferred = _pod_terms(_map(written.get("podAntiAffinity")), namespace, labels)
    return Affinity(
        node_required=tuple(node_selector_term(t) for t in _list(_map(required).get("nodeSelectorTerms")))
        if isinstance(required, Mapping)
        else None,
        node_preferred=tuple(
            PreferredNodeTerm(int(_map(t).get("weight", 1)), node_selector_term(_map(t).get("preference")))
            for t in _list(node.get(_PREFERRED))
        ),
        pod_required=pod_required,
        pod_preferred=pod_preferred,
        anti_required=anti_required,
        anti_preferred=anti_preferred,
    )


def topology_spread_of(
    pod: Mapping[str, Any], *, labels: Mapping[str, str]
) -> tuple[TopologySpreadConstraint, ...]:
    """`pod.topologySpreadConstraints` resolved for a pod with template `labels`."""
    result = []
    for item in _list(pod.get("topologySpreadConstraints")):
        written = _map(item)
        when: Literal["DoNotSchedule", "ScheduleAnyway"] = (
            "ScheduleAnyway" if written.get("whenUnsatisfiable") == "ScheduleAnyway" else "DoNotSchedule"
        )
        result.append(
            TopologySpreadConstraint(
                max_skew=int(written.get("maxSkew", 1)),
                topology_key=str(written.get("topologyKey", "")),
                when_unsatisfiable=when,
                selector=_with_label_keys(
                    label_selector(written.get("labelSelector")),
                    _list(written.get("matchLabelKeys")),
                    (),
                    labels,
                ),
                min_domains=int(written.get("minDomains", 1)),
                node_affinity_policy="Ignore" if written.get("nodeAffinityPolicy") == "Ignore" else "Honor",
                node_taints_policy="Honor" if written.get("nodeTaintsPolicy") == "Honor" else "Ignore",
            )
        )
    return tuple(result)


def priority_of(
    pod: Mapping[str, Any], classes: Mapping[str, Mapping[str, Any]], default: str | None = None
) -> PodPriority:
    """The priority a pod spec as written gets from `classes` (PriorityClass bodies by name;
    `default`: the global default class's name, found in `classes` when None). A class that
    does not exist is an error, as Kubernetes refuses such a pod (validation says where)."""
    priority = pod_priority(pod, classes, default)
    if priority is None:
        raise ValueError(f'PriorityClass "{pod.get("priorityClassName")}" does not exist')
    return priority


def namespace_labels(desired: Sequence[Manifest]) -> dict[str, tuple[tuple[str, str], ...]]:
    """The labels of each namespace that has a Namespace manifest, plus the name label
    Kubernetes gives every namespace (`kubernetes.io/metadata.name: <name>`), sorted."""
    result = {}
    for manifest in desired:
        if manifest.key.kind != "Namespace":
            continue
        name = manifest.key.name
        labels = {str(k): str(v) for k, v in manifest.labels.items()}
        labels[NAMESPACE_NAME_LABEL] = name
        result[name] = tuple(sorted(labels.items()))
    return result

"""A pod template's scheduling fields resolve as Kubernetes resolves them when it creates a
pod: matchLabelKeys merged into their selector, a term's namespaces made explicit, the
priority of its PriorityClass (or of the global default, or a built-in class); the
template hash of a template without them is what it was."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gitops.model import (
    Affinity,
    LabelSelector,
    Manifest,
    Node,
    NodeName,
    NodeSelectorTerm,
    ObjectKey,
    PodAffinityTerm,
    PodSpec,
    PreferredNodeTerm,
    Requirement,
    SourceLocation,
    TopologySpreadConstraint,
    WeightedPodAffinityTerm,
)
from gitops.planner.affinity import affinity_of, namespace_labels, topology_spread_of
from gitops.planner.daemonset import ineligible
from gitops.planner.plan import configs_of
from gitops.planner.podspec import resolve_template
from tests.planner.factories import manifest
from tests.planner.test_template_hash import CONFIG, RICH, SIMPLE, deployment

LABELS = {"app": "web", "version": "v2", "tier": "front"}


def workload(
    pod: dict[str, Any], *, namespace: str = "shop", labels: dict[str, str] | None = None
) -> Manifest:
    labels = labels if labels is not None else LABELS
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": labels}, "spec": {**SIMPLE, **pod}},
        },
    }
    return Manifest(ObjectKey("Deployment", namespace, "web"), "apps/v1", body, SourceLocation("a.yaml"))


def priority_class(name: str, value: int, **fields: Any) -> Manifest:
    body = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}}
    return Manifest(
        ObjectKey("PriorityClass", "", name),
        "scheduling.k8s.io/v1",
        {**body, "value": value, **fields},
        SourceLocation("c.yaml"),
    )


def resolved(pod: dict[str, Any], *classes: Manifest) -> PodSpec:
    return resolve_template(workload(pod), configs_of(classes)).spec


def expression(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": operator, **({"values": list(values)} if values else {})}


# --- node affinity --------------------------------------------------------------------------


def test_node_affinity_resolves_terms_and_preferences_in_manifest_order() -> None:
    pod = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                expression("zone", "In", "a", "b"),
                                expression("cores", "Gt", "8"),
                            ]
                        },
                        {"matchFields": [expression("metadata.name", "NotIn", "n3")]},
                        {},
                    ]
                },
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 40, "preference": {"matchExpressions": [expression("disk", "Exists")]}},
                    {"weight": 5, "preference": {"matchExpressions": [expression("spot", "DoesNotExist")]}},
                ],
            }
        }
    }
    assert affinity_of(pod, namespace="shop", labels=LABELS) == Affinity(
        node_required=(
            NodeSelectorTerm(
                expressions=(Requirement("zone", "In", ("a", "b")), Requirement("cores", "Gt", ("8",)))
            ),
            NodeSelectorTerm(fields=(Requirement("metadata.name", "NotIn", ("n3",)),)),
            NodeSelectorTerm(),
        ),
        node_preferred=(
            PreferredNodeTerm(40, NodeSelectorTerm(expressions=(Requirement("disk", "Exists"),))),
            PreferredNodeTerm(5, NodeSelectorTerm(expressions=(Requirement("spot", "DoesNotExist"),))),
        ),
    )


def test_no_affinity_is_the_empty_affinity_and_no_node_requirement_is_none() -> None:
    assert affinity_of({}, namespace="shop", labels=LABELS) == Affinity()
    preferred_only = {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}}
    assert affinity_of(preferred_only, namespace="shop", labels=LABELS).node_required is None


# --- pod affinity and anti-affinity -----------------------------------------------------------


def test_a_term_without_namespaces_is_about_the_pods_own_namespace() -> None:
    pod = {
        "affinity": {
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "zone"}
                ]
            }
        }
    }
    (term,) = affinity_of(pod, namespace="shop", labels=LABELS).pod_required
    assert term == PodAffinityTerm(LabelSelector((("app", "cache"),)), "zone", namespaces=("shop",))


def test_namespaces_and_a_namespace_selector_are_kept_and_an_empty_selector_is_every_namespace() -> None:
    terms = [
        {"labelSelector": {}, "topologyKey": "zone", "namespaces": ["a", "b"]},
        {"labelSelector": {}, "topologyKey": "zone", "namespaceSelector": {}},
        {"labelSelector": {}, "topologyKey": "zone", "namespaceSelector": {"matchLabels": {"team": "x"}}},
        {"labelSelector": {}, "topologyKey": "zone", "namespaces": ["a"], "namespaceSelector": {}},
    ]
    pod = {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": terms}}}
    resolved_terms = affinity_of(pod, namespace="shop", labels=LABELS).anti_required
    assert [(t.namespaces, t.namespace_selector) for t in resolved_terms] == [
        (("a", "b"), None),
        ((), LabelSelector()),
        ((), LabelSelector((("team", "x"),))),
        (("a",), LabelSelector()),
    ]


def test_a_term_without_a_label_selector_matches_no_pod() -> None:
    pod = {
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}
                ]
            }
        }
    }
    affinity = affinity_of(pod, namespace="shop", labels=LABELS)
    assert affinity.anti_preferred == (
        WeightedPodAffinityTerm(100, PodAffinityTerm(None, "kubernetes.io/hostname", namespaces=("shop",))),
    )
    assert str(affinity.anti_preferred[0].term) == "no pods on kubernetes.io/hostname"


def test_match_label_keys_add_the_pods_own_values_and_keys_it_lacks_are_ignored() -> None:
    term = {
        "labelSelector": {"matchExpressions": [expression("app", "Exists")]},
        "topologyKey": "zone",
        "matchLabelKeys": ["version", "missing"],
        "mismatchLabelKeys": ["tier", "absent"],
    }
    pod = {
        "affinity": {
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [term],
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 7, "podAffinityTerm": term}],
            }
        }
    }
    affinity = affinity_of(pod, namespace="shop", labels=LABELS)
    selector = LabelSelector(
        expressions=(
            Requirement("app", "Exists"),
            Requirement("version", "In", ("v2",)),
            Requirement("tier", "NotIn", ("front",)),
        )
    )
    assert affinity.pod_required == (PodAffinityTerm(selector, "zone", namespaces=("shop",)),)
    assert affinity.pod_preferred == (WeightedPodAffinityTerm(7, affinity.pod_required[0]),)
    assert selector.matches({"app": "web", "version": "v2", "tier": "back"})
    assert not selector.matches({"app": "web", "version": "v1", "tier": "back"})
    assert not selector.matches({"app": "web", "version": "v2", "tier": "front"})


# --- topology spread ----------------------------------------------------------------------------


def test_topology_spread_constraints_resolve_with_kubernetes_defaults_in_order() -> None:
    pod = {
        "topologySpreadConstraints": [
            {
                "maxSkew": 2,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": "web"}},
                "minDomains": 3,
                "nodeAffinityPolicy": "Ignore",
                "nodeTaintsPolicy": "Honor",
                "matchLabelKeys": ["version", "missing"],
            },
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"},
        ]
    }
    assert topology_spread_of(pod, labels=LABELS) == (
        TopologySpreadConstraint(
            max_skew=2,
            topology_key="topology.kubernetes.io/zone",
            when_unsatisfiable="DoNotSchedule",
            selector=LabelSelector((("app", "web"),), (Requirement("version", "In", ("v2",)),)),
            min_domains=3,
            node_affinity_policy="Ignore",
            node_taints_policy="Honor",
        ),
        TopologySpreadConstraint(1, "kubernetes.io/hostname", "ScheduleAnyway"),
    )
    assert topology_spread_of({}, labels=LABELS) == ()


def test_the_resolved_spec_carries_the_scheduling_fields() -> None:
    pod = {
        "affinity": {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "labelSelector": {"matchLabels": {"app": "web"}},
                        "topologyKey": "kubernetes.io/hostname",
                    }
                ]
            }
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {},
                "matchLabelKeys": ["version"],
            }
        ],
    }
    spec = resolved(pod)
    assert spec.affinity.anti_required == (
        PodAffinityTerm(LabelSelector((("app", "web"),)), "kubernetes.io/hostname", namespaces=("shop",)),
    )
    assert spec.topology_spread[0].selector == LabelSelector(
        expressions=(Requirement("version", "In", ("v2",)),)
    )


# --- priority -------------------------------------------------------------------------------------


def test_a_pod_without_a_class_has_priority_0_and_preempts() -> None:
    spec = resolved({})
    assert (spec.priority, spec.priority_class_name, spec.preemption_policy) == (
        0,
        "",
        "PreemptLowerPriority",
    )


def test_a_pod_gets_the_value_and_preemption_policy_of_its_class() -> None:
    batch = priority_class("batch", 500, preemptionPolicy="Never")
    spec = resolved({"priorityClassName": "batch"}, batch)
    assert (spec.priority, spec.priority_class_name, spec.preemption_policy) == (500, "batch", "Never")


def test_the_pods_own_preemption_policy_wins_over_its_class() -> None:
    batch = priority_class("batch", 500, preemptionPolicy="Never")
    spec = resolved({"priorityClassName": "batch", "preemptionPolicy": "PreemptLowerPriority"}, batch)
    assert spec.preemption_policy == "PreemptLowerPriority"
    assert resolved({"preemptionPolicy": "Never"}).preemption_policy == "Never"


def test_a_pod_without_a_class_gets_the_global_default() -> None:
    everyone = priority_class("everyone", 70, globalDefault=True, preemptionPolicy="Never")
    others = priority_class("other", 9, globalDefault=False)
    spec = resolved({}, others, everyone)
    assert (spec.priority, spec.priority_class_name, spec.preemption_policy) == (70, "", "Never")
    assert resolved({"priorityClassName": "other"}, others, everyone).priority == 9


@pytest.mark.parametrize(
    ("name", "value"), [("system-cluster-critical", 2000000000), ("system-node-critical", 2000001000)]
)
def test_the_built_in_classes_need_no_manifest(name: str, value: int) -> None:
    spec = resolved({"priorityClassName": name})
    assert (spec.priority, spec.priority_class_name, spec.preemption_policy) == (
        value,
        name,
        "PreemptLowerPriority",
    )


def test_a_class_that_does_not_exist_is_an_error_as_kubernetes_refuses_the_pod() -> None:
    with pytest.raises(ValueError, match='PriorityClass "batch" does not exist'):
        resolved({"priorityClassName": "batch"})


def test_a_memoised_template_follows_its_classes() -> None:
    deployment = manifest(  # with a content hash: its resolved template is memoised
        "Deployment",
        "web",
        spec={
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {**SIMPLE, "priorityClassName": "batch"},
            },
        },
    )
    low, high = (dataclasses.replace(priority_class("batch", v), hash=f"h{v}") for v in (5, 6))
    assert [resolve_template(deployment, configs_of([c])).spec.priority for c in (low, high, low)] == [
        5,
        6,
        5,
    ]


# --- the template hash ----------------------------------------------------------------------


def test_a_template_without_scheduling_fields_hashes_as_before() -> None:
    everyone = priority_class("all", 50, globalDefault=True)
    # Computed by release 0.2 (`test_template_hash`), before pods had scheduling fields.
    assert resolve_template(deployment(SIMPLE), configs_of([CONFIG, everyone])).hash == "2f4701385a"
    assert resolve_template(deployment(RICH), configs_of([CONFIG, everyone])).hash == "8ac42c81b3"
    plain = resolve_template(workload({}), {})
    with_default_class = resolve_template(
        workload({}), configs_of([priority_class("all", 50, globalDefault=True)])
    )
    assert with_default_class.spec.priority == 50
    assert with_default_class.hash == plain.hash  # a new default class replaces no pod


def test_scheduling_fields_change_the_hash() -> None:
    base = resolve_template(workload({}), {}).hash
    affinity = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [expression("zone", "In", "a")]}]
                }
            }
        }
    }
    spread = {
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}
        ]
    }
    batch = priority_class("batch", 5)
    hashes = {
        resolve_template(workload(affinity), {}).hash,
        resolve_template(workload(spread), {}).hash,
        resolve_template(workload({"priorityClassName": "batch"}), configs_of([batch])).hash,
        resolve_template(workload({"preemptionPolicy": "Never"}), {}).hash,
    }
    assert base not in hashes and len(hashes) == 4


def test_a_class_whose_value_or_policy_changes_replaces_no_pod() -> None:
    pod = {"priorityClassName": "batch"}
    before = resolve_template(workload(pod), configs_of([priority_class("batch", 5)]))
    after = resolve_template(
        workload(pod), configs_of([priority_class("batch", 9, preemptionPolicy="Never")])
    )
    assert (before.spec.priority, after.spec.priority) == (5, 9)
    assert after.spec.preemption_policy == "Never"
    assert before.hash == after.hash


# --- namespaces -------------------------------------------------------------------------------


def test_namespace_labels_are_the_manifests_plus_the_name_label() -> None:
    desired = [
        manifest("Namespace", "shop", metadata={"name": "shop", "labels": {"team": "payments"}}),
        manifest("Namespace", "plain"),
        manifest("ConfigMap", "cfg"),
    ]
    assert namespace_labels(desired) == {
        "shop": (("kubernetes.io/metadata.name", "shop"), ("team", "payments")),
        "plain": (("kubernetes.io/metadata.name", "plain"),),
    }


# --- DaemonSets use the resolved node affinity --------------------------------------------------


def test_a_daemon_sets_eligibility_reads_the_resolved_spec() -> None:
    spec = PodSpec(
        containers=resolved({}).containers,
        node_selector=(("disk", "ssd"),),
        affinity=Affinity(
            node_required=(NodeSelectorTerm(fields=(Requirement("metadata.name", "In", ("n1",)),)),)
        ),
    )
    n1 = Node(NodeName("n1"), labels=(("disk", "ssd"),))
    n2 = Node(NodeName("n2"), labels=(("disk", "ssd"),))
    hdd = Node(NodeName("n1"), labels=(("disk", "hdd"),))
    assert ineligible(spec, (), n1) == ""
    assert ineligible(spec, (), n2) == "required node affinity does not match"
    assert ineligible(spec, (), hdd) == "node selector disk=ssd does not match"

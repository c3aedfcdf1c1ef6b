"""A PodDisruptionBudget allows as many disruptions as its selected pods' healthy count
exceeds what must stay healthy, as Kubernetes' disruption controller counts them."""

from __future__ import annotations

from typing import Any

import pytest

from gitops.model import (
    Container,
    DisruptionBudget,
    LabelSelector,
    Manifest,
    ObjectKey,
    Phase,
    Pod,
    PodName,
    PodSpec,
    Requirement,
)
from gitops.planner.budgets import disruption_budgets
from tests.planner.factories import manifest

SPEC = PodSpec(containers=(Container("main", "web:1"),))
OWNER = ObjectKey("Deployment", "default", "web")


def budget(name: str = "web", namespace: str = "default", **spec: Any) -> Manifest:
    found = manifest("PodDisruptionBudget", name, namespace, spec=spec)
    return Manifest(found.key, "policy/v1", found.body, found.location, found.hash)


def pod(
    name: str,
    *,
    ready: bool = True,
    app: str = "web",
    namespace: str = "default",
    phase: Phase = "Running",
    terminating: bool = False,
) -> Pod:
    return Pod(
        namespace=namespace,
        name=PodName(name),
        owner=OWNER,
        template_hash="h",
        spec=SPEC,
        labels=(("app", app),),
        phase=phase,
        ready=ready,
        terminating_at=5.0 if terminating else None,
    )


WEB = {"matchLabels": {"app": "web"}}
FOUR = [pod("a"), pod("b"), pod("c"), pod("d", ready=False)]  # 4 expected, 3 healthy


@pytest.mark.parametrize(
    ("spec", "allowed"),
    [
        ({"minAvailable": 2}, 1),
        ({"minAvailable": 3}, 0),
        ({"minAvailable": 5}, 0),  # never below 0
        ({"minAvailable": "50%"}, 1),  # 2 of 4
        ({"minAvailable": "60%"}, 0),  # 2.4 rounds up to 3
        ({"maxUnavailable": 1}, 0),  # 3 must stay healthy, 3 are
        ({"maxUnavailable": 2}, 1),
        ({"maxUnavailable": "25%"}, 0),  # 1 of 4
        ({"maxUnavailable": "30%"}, 1),  # 1.2 rounds up to 2: 2 must stay healthy
        ({"maxUnavailable": 9}, 3),  # nothing must stay healthy: every healthy pod may go
        ({"maxUnavailable": "100%"}, 3),
        ({}, 0),  # neither: Kubernetes counts no expected pods, and allows nothing
    ],
)
def test_allowed_disruptions_follow_min_available_or_max_unavailable(
    spec: dict[str, Any], allowed: int
) -> None:
    [found] = disruption_budgets([budget(selector=WEB, **spec)], FOUR)
    assert found == DisruptionBudget("default", "web", LabelSelector((("app", "web"),)), allowed)


def test_only_live_pods_of_its_namespace_that_its_selector_matches_count() -> None:
    pods = [
        pod("a"),
        pod("b"),
        pod("c", app="db"),
        pod("d", namespace="other"),
        pod("e", terminating=True),
        pod("f", phase="Succeeded"),
        pod("g", phase="Failed", ready=False),
    ]
    [found] = disruption_budgets([budget(selector=WEB, minAvailable=1)], pods)
    assert found.allowed == 1  # a and b
    [found] = disruption_budgets([budget(selector=WEB, maxUnavailable="50%")], pods)
    assert found.allowed == 1  # of a and b, 1 must stay


def test_a_budget_selecting_no_pod_allows_nothing_and_an_empty_selector_selects_all() -> None:
    pods = [pod("a"), pod("b", app="db")]
    no_selector, everything, nothing = disruption_budgets(
        [
            budget("a-none", maxUnavailable=1),
            budget("b-all", selector={}, maxUnavailable=1),
            budget("c-nothing", selector={"matchLabels": {"app": "cache"}}, maxUnavailable=1),
        ],
        pods,
    )
    assert (no_selector.selector, no_selector.allowed) == (None, 0)
    assert (everything.selector, everything.allowed) == (LabelSelector(), 1)
    assert nothing.allowed == 0


def test_budgets_come_in_key_order_with_expressions_resolved() -> None:
    selector = {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]}
    found = disruption_budgets(
        [budget("z", selector=selector, minAvailable=0), budget("a", "shop", selector=WEB, minAvailable=0)],
        [pod("a"), pod("b", app="db", ready=False)],
    )
    assert [(b.namespace, b.name, b.allowed) for b in found] == [("default", "z", 1), ("shop", "a", 0)]
    assert found[0].selector == LabelSelector(expressions=(Requirement("app", "In", ("web", "db")),))
    assert disruption_budgets([manifest("ConfigMap", "cfg")], [pod("a")]) == []

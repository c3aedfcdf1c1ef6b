"""PodDisruptionBudgets as preemption weighs them: how many disruptions each allows now.

In come the desired manifests and the pods that exist; out comes one `DisruptionBudget`
per PodDisruptionBudget manifest, in key order, as Kubernetes' disruption controller
computes its status:

- the budget's pods are those of its namespace that its selector matches (a missing
  selector matches none; `{}` every pod) and that are neither terminating nor finished;
  `expected` is their number, `healthy` the number of them that are ready;
- `minAvailable` (a number, or a percentage of `expected` rounded up) is the number that
  must stay healthy; `maxUnavailable` (the same) leaves `expected` minus it (at least 0);
  a budget with neither protects every pod (Kubernetes counts no expected pods then);
- `allowed = max(0, healthy - desired)`, and 0 when it selects no pod.

Kubernetes takes `expected` from the replicas of the pods' controllers for a percentage or
`maxUnavailable`; here it is the pods that exist, which is the same once a workload has
converged, and errs on the side of fewer disruptions while pods are missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from gitops.model import DisruptionBudget, Manifest, Pod
from gitops.planner.affinity import label_selector

__all__ = ["disruption_budgets"]


def _amount(value: object, expected: int) -> int:
    """An int-or-percent as Kubernetes scales it (percentages rounded up)."""
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * expected / 100)
    return int(str(value))


def _desired(spec: Mapping[str, Any], expected: int) -> int | None:
    """How many of `expected` pods must stay healthy; None for a budget with neither field."""
    if "minAvailable" in spec:
        return _amount(spec["minAvailable"], expected)
    if "maxUnavailable" in spec:
        return max(0, expected - _amount(spec["maxUnavailable"], expected))
    return None


def disruption_budgets(desired: Sequence[Manifest], pods: Sequence[Pod]) -> list[DisruptionBudget]:
    """One `DisruptionBudget` per PodDisruptionBudget in `desired`, with the disruptions it
    allows given `pods` (see the module docstring)."""
    result = []
    for manifest in sorted((m for m in desired if m.key.kind == "PodDisruptionBudget"), key=lambda m: m.key):
        namespace = manifest.key.namespace
        selector = label_selector(manifest.spec.get("selector"))
        selected = (
            [
                p
                for p in pods
                if p.namespace == namespace
                and p.terminating_at is None
                and p.phase not in ("Succeeded", "Failed")
                and selector.matches(p.label_map)
            ]
            if selector is not None
            else []
        )
        expected = len(selected)
        healthy = sum(1 for p in selected if p.ready)
        desired_healthy = _desired(manifest.spec, expected)
        allowed = 0 if desired_healthy is None or not expected else max(0, healthy - desired_healthy)
        result.append(DisruptionBudget(namespace, manifest.key.name, selector, allowed))
    return result

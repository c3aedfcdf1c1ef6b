"""Node failure: pods on a node that stopped reporting are replaced elsewhere, in time.

A node is NotReady once its heartbeat is older than the grace period; the caller passes
when each NotReady node became so. A pod stays bound to such a node for as long as it
tolerates the `node.kubernetes.io/not-ready` or `node.kubernetes.io/unreachable` NoExecute
taint (`tolerationSeconds`), or the cluster default; after that it is stopped, and the
planner creates its replacement on a ready node. A toleration without `tolerationSeconds`
keeps the pod forever, as in Kubernetes.

A StatefulSet's pod is never evicted: as in Kubernetes, it stays bound to its node until
the node reports again or is deleted (`gitops node delete`), because a node that only lost
its network may still run it, and two pods of one ordinal must never run at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gitops.model import NodeName, Pod, Taint
from gitops.planner.plan import Action
from gitops.scheduler import tolerates

NOT_READY_TAINTS = (
    Taint("node.kubernetes.io/not-ready", "", "NoExecute"),
    Taint("node.kubernetes.io/unreachable", "", "NoExecute"),
)


def tolerated_seconds(pod: Pod, default: float) -> float | None:
    """How long `pod` stays on a NotReady node; None for ever."""
    matching = [
        t
        for t in pod.spec.tolerations
        if t.effect in ("", "NoExecute") and any(tolerates([t], taint) for taint in NOT_READY_TAINTS)
    ]
    if not matching:
        return default
    if any(t.toleration_seconds is None for t in matching):
        return None
    return float(max(max(t.toleration_seconds or 0, 0) for t in matching))


def evictions(
    pods: Sequence[Pod], not_ready_since: Mapping[NodeName, float], *, now: float, default_toleration: float
) -> list[Action]:
    """Pods to stop because their node has been NotReady longer than they tolerate."""
    if not not_ready_since:
        return []
    actions = []
    # Only the pods of NotReady nodes are sorted: the others are many, and none is evicted.
    held = [(p, p.node) for p in pods if p.node is not None and p.node in not_ready_since]
    for pod, node in sorted(held, key=lambda held: held[0].id):
        if pod.owner.kind == "StatefulSet":
            continue
        tolerated = tolerated_seconds(pod, default_toleration)
        since = not_ready_since[node]
        if tolerated is None or now < since + tolerated:
            continue
        actions.append(
            Action(
                pod,
                f"node {pod.node} has been NotReady for {now - since:.0f}s "
                f"(the pod tolerates {tolerated:.0f}s): replaced on another node",
            )
        )
    return actions

"""DaemonSets: one pod on every eligible node, as Kubernetes' DaemonSet controller runs them.

A node is eligible when it has the labels of the template's `nodeSelector`, matches its
required node affinity (`nodeSelectorTerms`: In, NotIn, Exists, DoesNotExist, Gt, Lt on
labels; `matchFields` on `metadata.name`), and every NoSchedule/NoExecute taint of it is
tolerated. Like Kubernetes, the controller adds tolerations to every pod: of the
`not-ready` and `unreachable` NoExecute taints (so a pod stays on its node through an
outage, for as long as the node is registered) and of the disk-, memory- and PID-pressure
and `unschedulable` NoSchedule taints.

Each pod names its node (`PodSpec.node_name`): the scheduler places it there or explains
why it cannot (resources, a hostPort). A node that joins gets its pod in the next pass; a
node that leaves, or stops matching the selector or affinity, or gains a NoExecute taint the
pod does not tolerate, has its pod stopped. A new NoSchedule taint only keeps new pods off:
the pod already there stays (and is not updated), as in Kubernetes.

`updateStrategy: RollingUpdate` replaces outdated pods node by node: with `maxSurge` 0 (the
default) it stops up to `maxUnavailable` (default 1) old pods while the others serve, and
the next pass starts their replacements; with `maxSurge` it starts a new pod beside the old
one on up to that many nodes, and stops the old one once the new one is available (a node
keeps at most one old pod beside the new one). Both round percentages of the eligible nodes
up. `OnDelete` replaces a pod only once it is gone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from gitops.model import Manifest, Node, NodeName, Pod, PodName, PodSpec, Toleration
from gitops.planner.actions import Action, Plan, Workloads, pod_suffix
from gitops.planner.podspec import Template, describe_change
from gitops.planner.rollout import RolloutStatus
from gitops.scheduler import tolerates

# The tolerations Kubernetes' DaemonSet controller adds to every pod it makes.
DEFAULT_TOLERATIONS = (
    Toleration("node.kubernetes.io/not-ready", "Exists", "", "NoExecute"),
    Toleration("node.kubernetes.io/unreachable", "Exists", "", "NoExecute"),
    Toleration("node.kubernetes.io/disk-pressure", "Exists", "", "NoSchedule"),
    Toleration("node.kubernetes.io/memory-pressure", "Exists", "", "NoSchedule"),
    Toleration("node.kubernetes.io/pid-pressure", "Exists", "", "NoSchedule"),
    Toleration("node.kubernetes.io/unschedulable", "Exists", "", "NoSchedule"),
)


def ineligible(
    spec: PodSpec,
    tolerations: Sequence[Toleration],
    node: Node,
    *,
    effects: Sequence[str] = ("NoSchedule", "NoExecute"),
) -> str:
    """Why a DaemonSet's pod of the resolved `spec` does not belong on `node` ("" when it
    does). With `effects` ("NoExecute" only), why a pod already there must go: as in
    Kubernetes, a NoSchedule taint keeps new pods off a node but lets the one running there
    stay."""
    labels = node.label_map
    for key, value in spec.node_selector:
        if labels.get(key) != value:
            return f"node selector {key}={value} does not match"
    terms = spec.affinity.node_required
    if terms is not None and not any(t.matches(node.name, labels) for t in terms):
        return "required node affinity does not match"
    for taint in node.taints:
        if taint.effect in effects and not tolerates(tolerations, taint):
            return f"taint {taint} is not tolerated"
    return ""


def _budget(value: object, nodes: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * nodes / 100)
    return int(str(value))


def _new_pod(manifest: Manifest, template: Template, node: NodeName, avoid: set[str], now: float) -> Pod:
    slot = 0
    while True:
        name = PodName(f"{manifest.key.name}-{pod_suffix(f'{template.hash}/{node}', slot)}")
        if name not in avoid:
            break
        slot += 1
    avoid.add(name)
    return _pod(manifest, template, name, node, now)


def adopted(
    manifest: Manifest, template: Template, name: str, *, node: Node, owned: Sequence[Pod], now: float
) -> Pod | None:
    """The pod `name` is, when a container of it is found running on `node` that the store
    does not know (a control plane that lost its database): the set's pod of an eligible node
    that has none."""
    if ineligible(template.spec, (*template.spec.tolerations, *DEFAULT_TOLERATIONS), node):
        return None
    if any(node_of(p) == node.name for p in owned):
        return None
    return _pod(manifest, template, PodName(name), node.name, now)


def _pod(manifest: Manifest, template: Template, name: PodName, node: NodeName, now: float) -> Pod:
    spec = dataclasses.replace(
        template.spec,
        node_name=node,
        tolerations=(*template.spec.tolerations, *DEFAULT_TOLERATIONS),
    )
    return Pod(
        namespace=manifest.key.namespace,
        name=name,
        owner=manifest.key,
        template_hash=template.hash,
        spec=spec,
        labels=template.labels,
        reason="waiting to be scheduled",
        created_at=now,
    )


def node_of(pod: Pod) -> str:
    return pod.spec.node_name or pod.node or ""


def plan_daemonset(manifest: Manifest, template: Template, owned: Sequence[Pod], ctx: Workloads) -> Plan:
    spec = manifest.spec
    tolerations = (*template.spec.tolerations, *DEFAULT_TOLERATIONS)
    min_ready = int(spec.get("minReadySeconds", 0))
    now = ctx.now
    strategy = spec.get("updateStrategy") or {}
    on_delete = strategy.get("type") == "OnDelete"
    eligible = [n for n in ctx.nodes if not ineligible(template.spec, tolerations, n)]
    rolling = strategy.get("rollingUpdate") or {}
    surge = _budget(rolling.get("maxSurge"), len(eligible), 0)
    max_unavailable = _budget(rolling.get("maxUnavailable"), len(eligible), 1 if not surge else 0)
    if surge == 0 and max_unavailable == 0:
        max_unavailable = 1
    known = {n.name: n for n in ctx.nodes}
    names = {p.name for p in owned} | set(ctx.avoid)
    by_node: dict[str, list[Pod]] = {}
    stop: list[Action] = []
    create: list[Action] = []
    for pod in owned:
        by_node.setdefault(node_of(pod), []).append(pod)
    wanted = {n.name for n in eligible}
    for held, pods in sorted(by_node.items()):
        if held in wanted:
            continue
        if NodeName(held) in known:
            node = known[NodeName(held)]
            if not ineligible(template.spec, tolerations, node, effects=("NoExecute",)):
                continue  # a NoSchedule taint only: the pod there stays, none is made
            why = f"node {held} is no longer eligible: {ineligible(template.spec, tolerations, node)}"
        else:
            why = f"node {held} left the cluster"
        stop += [Action(p, why) for p in pods]

    def available(pod: Pod) -> bool:
        return pod.phase == "Running" and pod.available(min_ready, now)

    # Per eligible node: its current pod, its outdated ones.
    outdated_nodes: list[tuple[NodeName, Pod | None, list[Pod]]] = []
    unavailable = 0
    for node in eligible:
        pods = by_node.get(node.name, [])
        failed = [p for p in pods if p.phase == "Failed"]
        stop += [Action(p, f"pod failed ({p.reason or 'Failed'}): replaced on {node.name}") for p in failed]
        pods = [p for p in pods if p.phase != "Failed"]
        new = sorted(
            (p for p in pods if p.template_hash == template.hash),
            key=lambda p: (not available(p), not p.ready, p.name),
        )
        # At most one old pod beside the current one (templates changed during a surge):
        # the one that serves stays.
        old = sorted(
            (p for p in pods if p.template_hash != template.hash),
            key=lambda p: (not available(p), p.created_at, p.name),
        )
        stop += [Action(p, f"more than one pod on node {node.name}") for p in (*new[1:], *old[1:])]
        old = old[:1]
        current = new[0] if new else None
        if current is None and not old:
            create.append(
                Action(
                    _new_pod(manifest, template, node.name, names, now),
                    f"{manifest.key} runs a pod on every eligible node: none on {node.name}",
                )
            )
            unavailable += 1
            continue
        if not any(p is not None and available(p) for p in (current, *old)):
            unavailable += 1  # no pod serves on this node (an old one still serving counts)
        if old:
            outdated_nodes.append((node.name, current, old))
    if not on_delete:
        how = f"rolling update, maxUnavailable {max_unavailable}, maxSurge {surge}"
        surging = sum(1 for _, current, _ in outdated_nodes if current is not None)
        for node_name, current, old in outdated_nodes:
            change = describe_change(
                old[0].spec,
                dataclasses.replace(template.spec, node_name=node_name, tolerations=tolerations),
                template.uses,
                labels_changed=old[0].labels != template.labels,
            )
            old_available = any(available(p) for p in old)
            if current is not None:
                if available(current):  # the surge pod serves: the old one goes
                    stop += [Action(p, f"template changed: {change} ({how}: replaced)") for p in old]
                continue
            if not old_available:
                # Serves nothing: replaced at once.
                stop += [Action(p, f"template changed: {change} ({how}: old pod not ready)") for p in old]
            elif surge and surging < surge:
                surging += 1
                create.append(
                    Action(
                        _new_pod(manifest, template, node_name, names, now),
                        f"template changed: {change} ({how}: new pod beside the old on {node_name})",
                    )
                )
            elif unavailable < max_unavailable:
                unavailable += 1
                stop += [Action(p, f"template changed: {change} ({how}: old pod replaced)") for p in old]
    stopped = {a.pod.id for a in stop}
    keep = tuple(sorted((p for p in owned if p.id not in stopped), key=lambda p: p.name))
    return Plan(tuple(create), tuple(stop), keep)


def daemonset_counts(
    manifest: Manifest, template: Template, pods: Sequence[Pod], nodes: Sequence[Node], *, now: float
) -> dict[str, int]:
    """Kubernetes' DaemonSet status counters: desired, current, ready, updated, available."""
    template_hash = template.hash
    tolerations = (*template.spec.tolerations, *DEFAULT_TOLERATIONS)
    eligible = {n.name for n in nodes if not ineligible(template.spec, tolerations, n)}
    live = [p for p in pods if p.terminating_at is None and node_of(p) in eligible]
    min_ready = int(manifest.spec.get("minReadySeconds", 0))
    return {
        "desired": len(eligible),
        "current": len({node_of(p) for p in live}),
        "ready": sum(1 for p in live if p.ready),
        "updated": sum(1 for p in live if p.template_hash == template_hash),
        "available": sum(1 for p in live if p.available(min_ready, now)),
    }


def daemonset_status(
    manifest: Manifest, template: Template, pods: Sequence[Pod], nodes: Sequence[Node], *, now: float
) -> RolloutStatus:
    """Where a DaemonSet's rollout stands, in the shape of a Deployment's."""
    template_hash = template.hash
    counts = daemonset_counts(manifest, template, pods, nodes, now=now)
    desired = counts["desired"]
    live = [p for p in pods if p.terminating_at is None]
    min_ready = int(manifest.spec.get("minReadySeconds", 0))
    updated_available = sum(
        1 for p in live if p.template_hash == template_hash and p.available(min_ready, now)
    )
    complete = (
        counts["updated"] == desired == counts["available"] == updated_available and len(live) == desired
    )
    on_delete = (manifest.spec.get("updateStrategy") or {}).get("type") == "OnDelete"
    if complete:
        step = f"complete: {desired}/{desired} nodes run {template_hash}"
    elif counts["current"] < desired:
        step = f"starting pods: {counts['current']}/{desired} eligible nodes have one"
    elif counts["updated"] < desired:
        step = f"rolling out {template_hash}: {counts['updated']}/{desired} nodes updated" + (
            " (OnDelete: old pods are replaced once deleted)" if on_delete else ""
        )
    else:
        step = f"waiting for {desired - counts['available']} pod(s) to become available"
    return RolloutStatus(
        deployment=manifest.key.ref,
        strategy="OnDelete" if on_delete else "rolling update, node by node",
        template_hash=template_hash,
        desired=desired,
        total=len(live),
        updated=counts["updated"],
        ready=counts["ready"],
        available=counts["available"],
        updated_available=updated_available,
        complete=complete,
        step=step,
    )

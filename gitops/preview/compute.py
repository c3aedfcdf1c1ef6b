"""A preview: what applying a branch would do, computed by the real control loop.

`preview` validates the branch's files (errors end it), diffs its objects against the base
revision, then runs `gitops.reconcile.decide`, the very function the controller runs, on
a copy of the cluster state whose desired objects are the branch's. Its decisions are
recorded, never applied. Pass 0 is exactly what the controller's next pass will do (same
pods, same names, same nodes, same reasons) as long as the state does not change first;
the preview carries the state's version so a stale one can be recognised.

To show a whole rollout, the preview then lets `settle` play the agents (bound pods start
and become ready, stopped pods go) and runs the next pass, until nothing is left to do.
Later passes assume every pod becomes ready at once: they show where pods would land and
how many steps a rollout takes, not how long. Every pass runs at the same time, `now`, so
the preview shows what the branch does, not what time does: no schedule comes due, no
deadline or toleration runs out. The pods `settle` starts are ready since a time set back
by the longest `minReadySeconds` of the workloads, so that they count as available at
once. Pods never finish: a Job shows the pods it starts first (`gitops.preview.workloads`
says what each kind does besides its pod actions).

A cluster described only by its nodes holds no pods; the preview first settles the base
revision on it, so the branch is compared with a cluster running the base.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gitops.keyed import seal, secret_data
from gitops.model import (
    ClusterState,
    CronRun,
    CronState,
    Manifest,
    NodeName,
    ObjectKey,
    PodId,
    PodSpec,
    Preemption,
    ScaleState,
)
from gitops.planner.cron import job_manifest
from gitops.planner.plan import PLANNERS, configs_of
from gitops.planner.podspec import Template, resolve_template
from gitops.preview.diff import ObjectChange, diff_objects
from gitops.preview.state import unredact
from gitops.preview.workloads import CronPlan, JobPlan, RolloutPlan, ScalePlan, summarise
from gitops.reconcile import ROLLED_OUT, Decision, decide, settle
from gitops.schemas.loader import SourceFile
from gitops.schemas.validate import DEFAULT_POLICY, Policy, validate_files

MAX_PASSES = 500
Kind = Literal["create", "replace", "stop", "place"]


@dataclass(frozen=True)
class RevisionInfo:
    id: str
    message: str = ""
    author: str = ""


@dataclass(frozen=True)
class PodAction:
    """One pod the branch creates, stops or places, in which pass, on which node, and why."""

    pass_: int
    action: Literal["create", "stop", "place"]
    # create: a new pod; replace: new or old side of a template change; stop: removal;
    # place: a pod pending since an earlier pass (one that waited for preemption's victims) lands
    kind: Kind
    pod: str
    owner: str
    node: str | None  # where a new pod lands (None: unschedulable), or where a stopped one ran
    reason: str
    # A pod of several containers: (name, "init" | "sidecar" | "app") in the order they start.
    containers: tuple[tuple[str, str], ...] = ()
    # Why that node: what pins it there (a claim's volume), its score against the runner-up.
    placement: str = ""


@dataclass(frozen=True)
class Unschedulable:
    owner: str
    pods: int
    reason: str  # per node group: "0/4 nodes: 2 insufficient memory, 2 untolerated taint ..."


@dataclass(frozen=True)
class Preview:
    head: RevisionInfo
    base: RevisionInfo | None
    state_version: str
    state_source: str
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    objects: tuple[ObjectChange, ...] = ()
    actions: tuple[PodAction, ...] = ()
    unschedulable: tuple[Unschedulable, ...] = ()
    rollouts: tuple[RolloutPlan, ...] = ()
    jobs: tuple[JobPlan, ...] = ()
    cronjobs: tuple[CronPlan, ...] = ()
    autoscalers: tuple[ScalePlan, ...] = ()
    passes: int = 0
    converged: bool = True
    notes: tuple[str, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return bool(self.objects or self.actions)

    @property
    def exit_code(self) -> int:
        """Terraform's detailed exit code: 1 error, 2 changes, 0 nothing to do."""
        if self.errors:
            return 1
        return 2 if self.changes else 0

    @property
    def first_pass(self) -> tuple[PodAction, ...]:
        return tuple(a for a in self.actions if a.pass_ == 0)


def min_ready(desired: Sequence[Manifest]) -> int:
    """The longest `minReadySeconds` of the workloads that wait for it."""
    values = (m.spec.get("minReadySeconds", 0) for m in desired if m.key.kind in ROLLED_OUT)
    return max((v for v in values if isinstance(v, int) and not isinstance(v, bool)), default=0)


def converge(state: ClusterState, now: float, *, toleration: float = 60.0) -> ClusterState:
    """`state` once every pass has run (all at `now`) and every placed pod is available."""
    ready_at = now - min_ready(state.desired)
    for _ in range(MAX_PASSES):
        decision = decide(state, now, not_ready_toleration=toleration)
        if decision.empty:
            return dataclasses.replace(state, rollouts=dict(decision.rollouts))
        state = settle(state, decision, ready_at)
    return state


def _is_template_change(reason: str) -> bool:
    return reason.startswith("template changed")


def _containers(spec: PodSpec) -> tuple[tuple[str, str], ...]:
    if len(spec.all_containers) == 1:
        return ()
    kinds = [(c.name, "sidecar" if c.restart_policy == "Always" else "init") for c in spec.init_containers]
    return (*kinds, *((c.name, "app") for c in spec.containers))


def _placement(spec: PodSpec, node: NodeName | None, held: dict[str, NodeName]) -> str:
    """Why a pod lands on `node` when a claim pins it: where the claim's volume is (`held`:
    each claim's node so far; a claim first used here is added)."""
    reasons = []
    for claim in spec.claims:
        if claim in held:
            reasons.append(f"claim {claim}'s volume is on {held[claim]}")
        elif node is not None:
            held[claim] = node
            reasons.append(f"claim {claim} is first used here: its volume will be on {node}")
    return "; ".join(reasons)


def _actions(
    decision: Decision,
    n: int,
    nodes_of: Mapping[PodId, NodeName | None],
    state: ClusterState,
    replaced: set[tuple[str, str]],
) -> list[PodAction]:
    """Pass `n`'s pod actions. `replaced` holds the places (a StatefulSet's pod name, a
    DaemonSet's node) of pods stopped for a template change in earlier passes; a pod that
    later starts in that place is their replacement, whatever its own reason says."""
    result = []
    held = dict(state.claims)
    for pod in state.pods:
        if pod.node is not None:
            for claim in pod.spec.claims:
                held.setdefault(claim, pod.node)
    placements = decision.placements
    for a in decision.plan.create:
        node = placements.assigned.get(a.pod.id)
        place = _place(str(a.pod.owner), a.pod.id, a.pod.spec.node_name)
        kind: Kind = "replace" if _is_template_change(a.reason) or place in replaced else "create"
        replaced.discard(place)
        result.append(
            PodAction(
                n,
                "create",
                kind,
                a.pod.id,
                str(a.pod.owner),
                node,
                a.reason,
                _containers(a.pod.spec),
                "; ".join(
                    why
                    for why in (
                        _placement(a.pod.spec, node, held),
                        placements.why.get(a.pod.id, ""),
                        _waiting(placements.preemptions.get(a.pod.id)),
                    )
                    if why
                ),
            )
        )
    for pod in state.pods:  # pending pods of earlier passes this pass places
        node = placements.assigned.get(pod.id) if pod.node is None else None
        if node is not None:
            why = "; ".join(
                w for w in (_placement(pod.spec, node, held), placements.why.get(pod.id, "")) if w
            )
            reason = f"was pending: {pod.reason}" if pod.reason else "was pending"
            result.append(PodAction(n, "place", "place", pod.id, str(pod.owner), node, reason, placement=why))
    for a in (*decision.evicted, *decision.preempted, *decision.plan.stop):
        kind = "replace" if _is_template_change(a.reason) else "stop"
        if kind == "replace":
            replaced.add(_place(str(a.pod.owner), a.pod.id, nodes_of.get(a.pod.id) or a.pod.spec.node_name))
        result.append(
            PodAction(n, "stop", kind, a.pod.id, str(a.pod.owner), nodes_of.get(a.pod.id), a.reason)
        )
    return result


def _waiting(preemption: Preemption | None) -> str:
    """Where a pod that preempts will land, and whom it waits for."""
    if preemption is None:
        return ""
    if not preemption.victims:
        return f"to land on {preemption.node} once its terminating pods are gone"
    verb = "is" if len(preemption.victims) == 1 else "are"
    return f"to land on {preemption.node} once {', '.join(preemption.victims)} {verb} gone (preempted)"


def _place(owner: str, pod: PodId, node: str | None) -> tuple[str, str]:
    """Where a pod runs, as its replacement takes it over: a DaemonSet's node, else its name."""
    return (owner, f"node {node}") if owner.startswith("DaemonSet ") else (owner, pod)


def _templates(head: Sequence[Manifest]) -> dict[ObjectKey, Template]:
    """The pod template of every workload, a CronJob's as its runs' Jobs have it."""
    configs = configs_of(head)
    templates = {}
    for m in head:
        workload = job_manifest(m, CronRun(m.key.name, 0.0)) if m.key.kind == "CronJob" else m
        if workload.key.kind in PLANNERS:
            try:
                templates[m.key] = resolve_template(workload, configs)
            except Exception:  # noqa: S112 - the planner reports it on the workload
                continue
    return templates


def _warnings(head: Sequence[Manifest]) -> list[str]:
    templates = _templates(head)
    used = {k for t in templates.values() for k in t.uses}
    # (namespace, label, value) -> workloads whose pods carry it: a selector intersects.
    carrying: dict[tuple[str, str, str], set[ObjectKey]] = defaultdict(set)
    for key, template in templates.items():
        for label, value in template.labels:
            carrying[(key.namespace, label, value)].add(key)
    warnings = []
    for m in head:
        if m.key.kind == "Service" and m.spec.get("type") != "ExternalName":  # it selects nothing
            selector = {str(k): str(v) for k, v in (m.spec.get("selector") or {}).items()}
            matched: set[ObjectKey] | None = None
            for label, value in selector.items():
                found = carrying.get((m.key.namespace, label, value), set())
                matched = found if matched is None else matched & found
            if not matched:
                shown = ", ".join(f"{k}={v}" for k, v in sorted(selector.items())) or "(empty)"
                warnings.append(f"{m.location}: {m.key}: spec.selector: selects no pods ({shown})")
        elif m.key.kind == "ConfigMap" and m.key not in used:
            warnings.append(f"{m.location}: {m.key}: no workload uses this ConfigMap")
    return warnings


def _unschedulable(state: ClusterState, decision: Decision) -> list[Unschedulable]:
    owners = {p.id: str(p.owner) for p in (*state.pods, *(a.pod for a in decision.plan.create))}
    groups: Counter[tuple[str, str]] = Counter(
        (owners.get(pod, pod), reason) for pod, reason in decision.placements.unschedulable.items()
    )
    return [Unschedulable(owner, n, reason) for (owner, reason), n in sorted(groups.items())]


def seal_secrets(
    manifests: Sequence[Manifest],
    base: Sequence[Manifest],
    running: Sequence[Manifest],
    key: bytes,
    *,
    cluster_key: bool,
) -> list[Manifest]:
    """`manifests` with their Secrets sealed under `key`, as the store seals what it stores.

    With the cluster's own key (a server's preview) the result is exactly what the store
    would hold. Without it (`gitops plan` on a copy of the state, which carries only keyed
    digests), a Secret value the branch leaves as the base had it is taken to be the one
    that runs, and gets the running digest; a changed value gets a digest under `key` (a
    one-time key), so its pods show as replaced and nothing can be learnt from it.
    """
    if cluster_key:
        return [seal(m, key) for m in manifests]
    runs = {m.key: m for m in running if m.key.kind == "Secret"}
    before = {m.key: m for m in base if m.key.kind == "Secret"}
    result = []
    for m in manifests:
        sealed = seal(m, key)
        live, old = runs.get(m.key), before.get(m.key)
        if m.key.kind != "Secret" or live is None or old is None:
            result.append(sealed)
            continue
        old_values, new_values = secret_data(old.body), secret_data(m.body)
        digests = {
            name: live.digests[name]
            if name in live.digests and old_values.get(name) == value
            else sealed.digests[name]
            for name, value in new_values.items()
        }
        same = old.hash == m.hash and bool(m.hash)
        result.append(dataclasses.replace(sealed, hash=live.hash if same else sealed.hash, digests=digests))
    return result


def preview(
    files: Sequence[SourceFile],
    base: Sequence[Manifest],
    state: ClusterState,
    *,
    head: RevisionInfo,
    secret_key: bytes,
    cluster_key: bool = False,
    base_info: RevisionInfo | None = None,
    state_source: str = "",
    now: float,
    settle_base: bool = False,
    not_ready_toleration: float = 60.0,
    problems: Sequence[str] = (),
    policy: Policy = DEFAULT_POLICY,
) -> Preview:
    """Preview applying `files` (the branch) to `state`; `base` is what the diff compares with.

    Secrets of the branch and the base are sealed under `secret_key` (`seal_secrets`;
    `cluster_key` says whether it is the cluster's own). `problems` are errors found while
    reading the files (refused links, oversized files). With `settle_base`, `state` holds
    only nodes and the base revision is settled first. `policy` is the server's, which its
    sync validates under (`gitops.schemas.validate.Policy`).
    """
    result = validate_files(files, policy=policy)
    info = Preview(head=head, base=base_info, state_version=state.version, state_source=state_source)
    errors = (*problems, *(str(e) for e in result.errors))
    if errors:
        return dataclasses.replace(
            info, errors=tuple(errors), warnings=tuple(str(w) for w in result.warnings)
        )
    running = state.desired
    manifests = seal_secrets(result.manifests, base, running, secret_key, cluster_key=cluster_key)
    base = seal_secrets(base, base, running, secret_key, cluster_key=cluster_key)
    objects = diff_objects(base, manifests)
    notes = []
    if settle_base:
        current = converge(
            dataclasses.replace(state, desired=tuple(base)), now, toleration=not_ready_toleration
        )
    else:
        current = state
        versions = {m.key: m.hash for m in state.desired}
        if versions != {m.key: m.hash for m in base}:
            differ = len(set(versions.items()) ^ {(m.key, m.hash) for m in base})
            notes.append(
                "the cluster does not run the base revision "
                f"({differ} object versions differ); pod actions are computed from what it runs"
            )
    current = unredact(dataclasses.replace(current, desired=tuple(manifests)), manifests)
    start = current
    actions: list[PodAction] = []
    replaced: set[tuple[str, str]] = set()
    crons: list[Mapping[ObjectKey, CronState]] = []
    scales: list[Mapping[ObjectKey, ScaleState]] = []
    last: Decision | None = None
    last_state = current
    converged = False
    passes = 0
    ready_at = now - min_ready(manifests)
    for n in range(MAX_PASSES):
        decision = decide(current, now, not_ready_toleration=not_ready_toleration)
        last, last_state = decision, current
        crons.append(decision.crons)
        scales.append(decision.scales)
        nodes_of = {p.id: p.node for p in current.pods}
        actions += _actions(decision, n, nodes_of, current, replaced)
        if decision.empty:
            converged = True
            passes = n
            break
        current = settle(current, decision, ready_at)
    else:
        passes = MAX_PASSES
        notes.append(f"the rollout did not settle within {MAX_PASSES} passes; later passes are not shown")
    assert last is not None
    unschedulable = _unschedulable(last_state, last)
    changed = {o.key for o in objects if o.change != "deleted"}
    summaries = summarise(
        manifests,
        actions,
        changed=changed,
        before=start,
        after=last_state,
        last=last,
        crons=crons,
        scales=scales,
        now=now,
    )
    counts = {
        "objects_created": sum(1 for o in objects if o.change == "created"),
        "objects_changed": sum(1 for o in objects if o.change == "changed"),
        "objects_deleted": sum(1 for o in objects if o.change == "deleted"),
        "pods_created": sum(1 for a in actions if a.kind == "create"),
        "pods_replaced": sum(1 for a in actions if a.kind == "replace" and a.action == "stop"),
        "pods_stopped": sum(1 for a in actions if a.kind == "stop"),
        "pods_unschedulable": sum(u.pods for u in unschedulable),
        "pods_placed": sum(1 for a in actions if a.kind == "place"),
    }
    return dataclasses.replace(
        info,
        warnings=(*(str(w) for w in result.warnings), *_warnings(manifests)),
        objects=tuple(objects),
        actions=tuple(actions),
        unschedulable=tuple(unschedulable),
        rollouts=summaries.rollouts,
        jobs=summaries.jobs,
        cronjobs=summaries.cronjobs,
        autoscalers=summaries.autoscalers,
        passes=passes,
        converged=converged,
        notes=tuple(notes),
        counts=counts,
    )


__all__ = [
    "CronPlan",
    "JobPlan",
    "PodAction",
    "Preview",
    "RevisionInfo",
    "RolloutPlan",
    "ScalePlan",
    "Unschedulable",
    "converge",
    "preview",
]

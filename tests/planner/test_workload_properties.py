"""Invariants of StatefulSets, DaemonSets and Jobs over many control passes.

Each example runs the real control pass (`decide`) pass after pass against a small pure
model of the agents: pods start, become ready or never do, lose readiness, fail, succeed,
restart; stopped pods linger a while (their names draining) and then go; nodes join, leave
and change labels; the source scales, changes templates, suspends. Hypothesis draws the
workload's fixed fields and the seed of the agents' and the source's choices, so a failing
example replays exactly. After every pass the invariants below must hold, and once the
agents calm down every workload must converge (nothing left to do, every pod where it
belongs).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitops.model import ClusterState, ContainerStatus, JobState, Manifest, Node, NodeName, Pod
from gitops.planner.job import backoff_delay, index_of
from gitops.planner.plan import configs_of
from gitops.planner.podspec import resolve_template
from gitops.planner.statefulset import ordinal_of
from gitops.reconcile import Decision, decide
from tests.planner.test_daemonset import daemonset, rolling
from tests.planner.test_job import job
from tests.planner.test_statefulset import statefulset

START = 100_000.0
PROPERTIES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def big_node(name: str, **labels: str) -> Node:
    """A node with room for every pod of an example: placement is not what is tested."""
    return Node(
        NodeName(name), cpu_milli=256_000, memory_bytes=1 << 40, max_pods=1000, labels=tuple(labels.items())
    )


def template_hash(manifest: Manifest) -> str:
    return resolve_template(manifest, configs_of([manifest])).hash


def available(pod: Pod, min_ready: int, now: float) -> bool:
    return pod.terminating_at is None and pod.phase == "Running" and pod.available(min_ready, now)


def apply(state: ClusterState, decision: Decision, now: float) -> ClusterState:
    """The control plane writes the decision: stopped pods start terminating, new ones are
    pending until bound."""
    stopped = {a.pod.id for a in decision.plan.stop}
    evicted = {a.pod.id for a in decision.evicted}
    assigned = decision.placements.assigned
    pods: list[Pod] = []
    for known in [*state.pods, *(a.pod for a in decision.plan.create)]:
        pod = known
        if pod.id in evicted:
            continue
        if pod.id in stopped and pod.terminating_at is None:
            pod = dataclasses.replace(pod, terminating_at=now, ready=False)
        if pod.node is None and pod.id in assigned:
            pod = dataclasses.replace(pod, node=assigned[pod.id])
        pods.append(pod)
    return dataclasses.replace(
        state, pods=tuple(pods), rollouts=dict(decision.rollouts), jobs=dict(decision.jobs), version=""
    )


def agents(
    state: ClusterState, rng: random.Random, now: float, *, calm: bool, batch: bool = False
) -> ClusterState:
    """What the agents report by the next pass. Calm agents start every bound pod, make it
    ready (a Job's pod succeeds) and let stopped pods go; the others do as `rng` says."""
    nodes = {n.name for n in state.nodes}
    pods: list[Pod] = []
    for reported in state.pods:
        pod = reported
        chance = rng.random()
        if pod.terminating_at is not None or (pod.node is not None and pod.node not in nodes):
            if calm or chance < 0.5:
                continue  # gone
        elif pod.node is None or pod.phase in ("Succeeded", "Failed"):
            pass
        elif pod.phase == "Pending":
            if calm or chance < 0.7:
                pod = dataclasses.replace(pod, phase="Running")
        elif batch:
            pod = _batch(pod, rng, chance, calm=calm)
        elif not pod.ready:
            if calm or chance < 0.6:
                pod = dataclasses.replace(pod, ready=True, ready_since=now)
        elif not calm and chance < 0.05:
            pod = dataclasses.replace(pod, ready=False)
        elif not calm and chance < 0.1:
            pod = dataclasses.replace(pod, phase="Failed", ready=False, reason="Error")
        pods.append(pod)
    return dataclasses.replace(state, pods=tuple(pods))


def _batch(pod: Pod, rng: random.Random, chance: float, *, calm: bool) -> Pod:
    """A Job's running pod: succeeds, fails with some exit code, restarts, or runs on."""
    if calm or chance < 0.3:
        status = ContainerStatus("work", state="terminated", exit_code=0)
        return dataclasses.replace(pod, phase="Succeeded", exit_code=0, containers=(status,))
    if chance < 0.5:
        code = rng.choice([1, 2, 42, 137])
        if pod.spec.restart_policy == "OnFailure":
            return dataclasses.replace(pod, restarts=pod.restarts + 1)
        status = ContainerStatus("work", state="terminated", exit_code=code)
        return dataclasses.replace(pod, phase="Failed", exit_code=code, containers=(status,))
    return pod


def live(state: ClusterState, owner: Manifest) -> list[Pod]:
    return [p for p in state.pods if p.owner == owner.key and p.terminating_at is None]


def reasons_given(decision: Decision) -> None:
    for action in (*decision.plan.create, *decision.plan.stop):
        assert action.reason, f"no reason for {action.pod.id}"


def names_are_fresh(state: ClusterState, decision: Decision) -> None:
    """A new pod never takes the name of a pod that exists, running or still terminating."""
    existing = {p.name for p in state.pods}
    created = [a.pod.name for a in decision.plan.create]
    assert len(set(created)) == len(created)
    assert not existing & set(created), existing & set(created)


# --- StatefulSets ------------------------------------------------------------------------------


@st.composite
def statefulsets(draw: st.DrawFn) -> dict[str, Any]:
    """The fields of a StatefulSet that stay fixed for one example."""
    spec: dict[str, Any] = {
        "podManagementPolicy": draw(st.sampled_from(["OrderedReady", "Parallel"])),
        "minReadySeconds": draw(st.sampled_from([0, 15])),
        "ordinals": {"start": draw(st.sampled_from([0, 3]))},
    }
    if draw(st.booleans()):
        spec["updateStrategy"] = {"type": "OnDelete"}
    else:
        rolling_update = {
            "maxUnavailable": draw(st.sampled_from([1, 2, "50%"])),
            "partition": draw(st.sampled_from([0, 0, 1, 2])),
        }
        spec["updateStrategy"] = {"type": "RollingUpdate", "rollingUpdate": rolling_update}
    return spec


def _budget(spec: Mapping[str, Any], replicas: int) -> int:
    value = (spec["updateStrategy"].get("rollingUpdate") or {}).get("maxUnavailable", 1)
    if isinstance(value, str):
        return max(1, math.ceil(int(value[:-1]) * replicas / 100))
    return max(1, int(value))


def check_statefulset_pass(manifest: Manifest, state: ClusterState, decision: Decision, now: float) -> None:
    spec = manifest.spec
    name = manifest.key.name
    start = spec["ordinals"]["start"]
    wanted = range(start, start + int(spec["replicas"]))
    ordered = spec["podManagementPolicy"] == "OrderedReady"
    min_ready = int(spec["minReadySeconds"])
    update = spec["updateStrategy"]
    partition = (update.get("rollingUpdate") or {}).get("partition", 0)
    pods = live(state, manifest)
    before = {ordinal_of(name, p.name): p for p in pods}
    assert None not in before
    assert len(before) == len(pods), "two live pods of one ordinal"
    stopped = {a.pod.name for a in decision.plan.stop}
    terminating = any(p.terminating_at is not None and p.owner == manifest.key for p in state.pods)

    def healthy(ordinal: int) -> bool:
        pod = before.get(ordinal)
        return pod is not None and pod.name not in stopped and available(pod, min_ready, now)

    reasons_given(decision)
    names_are_fresh(state, decision)
    for action in decision.plan.create:
        ordinal = ordinal_of(name, action.pod.name)
        assert ordinal is not None and ordinal in wanted and ordinal not in before
        if ordered:  # pod i+1 only once pods start..i are Running and ready
            assert all(healthy(o) for o in range(start, ordinal)), (action.pod.name, before)

    condemned = [a for a in decision.plan.stop if ordinal_of(name, a.pod.name) not in wanted]
    if ordered and condemned:
        # One at a time, the highest first, once every pod kept is ready and none is terminating.
        assert len(condemned) == 1
        top = max(o for o in before if o is not None and o not in wanted)
        assert condemned[0].pod.name == f"{name}-{top}"
        assert not terminating
        assert all(healthy(o) for o in wanted)

    target = template_hash(manifest)
    for action in decision.plan.stop:
        ordinal = ordinal_of(name, action.pod.name)
        if ordinal not in wanted or action.pod.phase == "Failed":
            continue
        # Replaced for the update: only RollingUpdate, at or above the partition, outdated.
        assert update["type"] == "RollingUpdate", action
        assert ordinal is not None and ordinal >= partition, action
        assert action.pod.template_hash != target, action

    if update["type"] == "RollingUpdate":
        lacking_before = sum(1 for o in wanted if not (o in before and available(before[o], min_ready, now)))
        lacking_after = sum(1 for o in wanted if not healthy(o))
        assert lacking_after <= max(lacking_before, _budget(spec, len(wanted))), (
            lacking_before,
            lacking_after,
        )


def check_statefulset_converged(manifest: Manifest, state: ClusterState, now: float) -> None:
    spec = manifest.spec
    start = spec["ordinals"]["start"]
    pods = {p.name: p for p in live(state, manifest)}
    assert sorted(pods) == sorted(f"{manifest.key.name}-{o}" for o in range(start, start + spec["replicas"]))
    assert all(available(p, spec["minReadySeconds"], now) for p in pods.values())
    update = spec["updateStrategy"]
    if update["type"] == "RollingUpdate":
        partition = update["rollingUpdate"]["partition"]
        target = template_hash(manifest)
        for pod in pods.values():
            ordinal = ordinal_of(manifest.key.name, pod.name)
            assert ordinal is not None
            assert ordinal < partition or pod.template_hash == target, pod.name


def run(
    state: ClusterState,
    rng: random.Random,
    passes: int,
    change: Callable[[ClusterState, random.Random], ClusterState],
    check: Callable[[ClusterState, Decision, float], None],
    *,
    calm: bool,
    now: float,
    batch: bool = False,
) -> tuple[ClusterState, float, Decision | None]:
    """`passes` control passes, each followed by `change` (the source and the nodes, unless
    calm) and the agents; `check` sees each pass's input and decision."""
    decision = None
    for _ in range(passes):
        now += rng.choice([1.0, 5.0, 20.0]) if not calm else 60.0
        if not calm:
            state = change(state, rng)
        decision = decide(state, now)
        check(state, decision, now)
        state = agents(apply(state, decision, now), rng, now, calm=calm, batch=batch)
    return state, now, decision


@PROPERTIES
@given(statefulsets(), st.integers(0, 2**32).map(random.Random))
def test_statefulset_invariants_hold_through_chaos_and_it_converges_after(
    fixed: dict[str, Any], rng: random.Random
) -> None:
    nodes = (big_node("n1"), big_node("n2"))
    manifests = {
        (replicas, image): statefulset(replicas=replicas, image=image, claims=(), **fixed)
        for replicas in range(5)
        for image in ("db:1", "db:2", "db:3")
    }
    current = manifests[(3, "db:1")]

    def change(state: ClusterState, rng: random.Random) -> ClusterState:
        nonlocal current
        replicas, image = current.spec["replicas"], current.spec["template"]["spec"]["containers"][0]["image"]
        if rng.random() < 0.15:
            replicas = rng.randrange(5)
        if rng.random() < 0.1:
            image = rng.choice(["db:1", "db:2", "db:3"])
        current = manifests[(replicas, image)]
        return dataclasses.replace(state, desired=(current,))

    def check(state: ClusterState, decision: Decision, now: float) -> None:
        check_statefulset_pass(current, state, decision, now)

    state = ClusterState(desired=(current,), pods=(), nodes=nodes)
    state, now, _ = run(state, rng, 40, change, check, calm=False, now=START)
    state, now, last = run(state, rng, 30, change, check, calm=True, now=now)
    assert last is not None and last.plan.empty, last.plan.describe() if last else None
    check_statefulset_converged(current, state, now)


# --- DaemonSets ------------------------------------------------------------------------------


@st.composite
def daemonset_updates(draw: st.DrawFn) -> tuple[dict[str, Any], int, int]:
    """An update strategy with its maxSurge and maxUnavailable, absolute numbers so that
    the bounds do not move as nodes come and go."""
    kind = draw(st.sampled_from(["OnDelete", "classic", "surge"]))
    if kind == "OnDelete":
        return {"type": "OnDelete"}, 0, 1
    if kind == "classic":
        unavailable = draw(st.sampled_from([1, 2]))
        return rolling(maxUnavailable=unavailable), 0, unavailable
    surge = draw(st.sampled_from([1, 2]))
    unavailable = draw(st.sampled_from([0, 1]))
    return rolling(maxSurge=surge, maxUnavailable=unavailable), surge, unavailable


def worker(name: str, *, role: str = "worker") -> Node:
    return big_node(name, role=role)


def check_daemonset_pass(
    manifest: Manifest, state: ClusterState, decision: Decision, now: float, *, surge: int, budget: int
) -> None:
    min_ready = int(manifest.spec.get("minReadySeconds", 0))
    eligible = {n.name for n in state.nodes if n.label_map.get("role") == "worker"}
    before = live(state, manifest)
    stopped = {a.pod.id for a in decision.plan.stop}
    after = [p for p in before if p.id not in stopped] + [a.pod for a in decision.plan.create]
    reasons_given(decision)
    names_are_fresh(state, decision)

    on_node: dict[str, list[Pod]] = {}
    for pod in after:
        on_node.setdefault(pod.spec.node_name, []).append(pod)
    for node, pods in on_node.items():
        assert node in eligible, f"a pod is left on {node}, which is gone or not eligible"
        templates = Counter(p.template_hash for p in pods)
        assert max(templates.values()) == 1, f"two pods of one template on {node}"
        assert len(pods) <= 2, f"{len(pods)} pods on {node}"
    doubled = sum(1 for pods in on_node.values() if len(pods) == 2)
    assert doubled <= surge, f"{doubled} nodes with two pods, maxSurge {surge}"

    def lacking(pods: Sequence[Pod]) -> int:
        served = {p.spec.node_name for p in pods if available(p, min_ready, now)}
        return len(eligible - served)

    assert lacking(after) <= max(lacking(before), budget), (lacking(before), lacking(after))


@PROPERTIES
@given(daemonset_updates(), st.sampled_from([0, 15]), st.integers(0, 2**32).map(random.Random))
def test_daemonset_invariants_hold_through_chaos_and_it_converges_after(
    update: tuple[dict[str, Any], int, int], min_ready: int, rng: random.Random
) -> None:
    strategy, surge, budget = update
    manifests = {
        image: daemonset(
            image, update=strategy, pod={"nodeSelector": {"role": "worker"}}, minReadySeconds=min_ready
        )
        for image in ("agent:1", "agent:2", "agent:3")
    }
    current = manifests["agent:1"]
    joined = 4

    def change(state: ClusterState, rng: random.Random) -> ClusterState:
        nonlocal current, joined
        if rng.random() < 0.1:
            current = manifests[rng.choice(sorted(manifests))]
        nodes = list(state.nodes)
        chance = rng.random()
        if chance < 0.05 and len(nodes) < 6:
            joined += 1
            nodes.append(worker(f"n{joined}"))
        elif chance < 0.1 and len(nodes) > 1:
            nodes.pop(rng.randrange(len(nodes)))
        elif chance < 0.15:
            i = rng.randrange(len(nodes))
            role = "worker" if nodes[i].label_map.get("role") != "worker" else "edge"
            nodes[i] = worker(nodes[i].name, role=role)
        return dataclasses.replace(state, desired=(current,), nodes=tuple(nodes))

    def check(state: ClusterState, decision: Decision, now: float) -> None:
        check_daemonset_pass(current, state, decision, now, surge=surge, budget=budget)

    state = ClusterState(desired=(current,), pods=(), nodes=tuple(worker(f"n{i}") for i in range(1, 5)))
    state, now, _ = run(state, rng, 40, change, check, calm=False, now=START)
    state, now, last = run(state, rng, 30, change, check, calm=True, now=now)
    assert last is not None and last.plan.empty, last.plan.describe() if last else None
    eligible = sorted(n.name for n in state.nodes if n.label_map.get("role") == "worker")
    pods = live(state, current)
    assert sorted(p.spec.node_name for p in pods) == eligible
    assert all(available(p, min_ready, now) for p in pods)
    if strategy["type"] == "RollingUpdate":
        assert {p.template_hash for p in pods} <= {template_hash(current)}


# --- Jobs ------------------------------------------------------------------------------------


@st.composite
def jobs(draw: st.DrawFn) -> dict[str, Any]:
    """The fields of a Job that stay fixed for one example."""
    restart = draw(st.sampled_from(["Never", "OnFailure"]))
    spec: dict[str, Any] = {"restart": restart, "backoffLimit": draw(st.integers(0, 4))}
    mode = draw(st.sampled_from(["NonIndexed", "Indexed", "WorkQueue"]))
    if mode != "WorkQueue":
        spec["completions"] = draw(st.integers(1, 6))
    if mode == "Indexed":
        spec["completionMode"] = "Indexed"
    if draw(st.booleans()):
        spec["activeDeadlineSeconds"] = draw(st.sampled_from([60, 600]))
    if draw(st.booleans()):
        spec["ttlSecondsAfterFinished"] = draw(st.sampled_from([0, 100]))
    if restart == "Never" and draw(st.booleans()):  # podFailurePolicy needs restartPolicy Never
        spec["podFailurePolicy"] = {
            "rules": [
                {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
                {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [137]}},
            ]
        }
    return spec


def check_job_pass(
    manifest: Manifest, state: ClusterState, decision: Decision, now: float, created: set[str]
) -> None:
    spec = manifest.spec
    parallelism = int(spec.get("parallelism", 1))
    completions = spec.get("completions")
    indexed = spec.get("completionMode") == "Indexed"
    previous = state.jobs.get(manifest.key)
    after_state: JobState = decision.jobs[manifest.key]
    stopped = {a.pod.id for a in decision.plan.stop}
    reasons_given(decision)
    names_are_fresh(state, decision)
    new = [a.pod.name for a in decision.plan.create]
    assert not created & set(new), "a pod name came back"
    created.update(new)

    active = [p for p in live(state, manifest) if p.phase in ("Pending", "Running") and p.id not in stopped]
    active += [a.pod for a in decision.plan.create]
    assert len(active) <= parallelism, (len(active), parallelism)
    if completions is not None and not indexed:
        assert after_state.succeeded + len(active) <= completions
    if indexed and completions is not None:
        indexes = [index_of(p) for p in active]
        assert len(set(indexes)) == len(indexes), "two pods of one index"
        assert not set(indexes) & set(after_state.succeeded_indexes), "a pod for an index that succeeded"
        assert all(i is not None and 0 <= i < completions for i in indexes)
    if decision.plan.create:
        assert not after_state.finished
        assert spec.get("suspend") is not True
        if after_state.failed:
            assert now >= after_state.last_failure_at + backoff_delay(after_state.failed)
    if previous is not None and previous.finished and previous.template == after_state.template:
        assert not decision.plan.create, "a finished Job started a pod"
        assert after_state.condition == previous.condition
    if after_state.finished:
        assert not active, "a finished Job left pods running"
    elif spec.get("suspend") is not True:
        # Running pods are stopped only above parallelism, or above the completions left.
        running = [p for p in live(state, manifest) if p.phase in ("Pending", "Running")]
        left = parallelism
        if completions is not None:
            done = len(after_state.succeeded_indexes) if indexed else after_state.succeeded
            left = min(parallelism, completions - done)
        stopped_running = [p for p in running if p.id in stopped]
        assert len(stopped_running) <= max(0, len(running) - left), "a running pod was stopped"
    if after_state.condition == "Complete" and completions is not None:
        done = len(after_state.succeeded_indexes) if indexed else after_state.succeeded
        assert done >= completions


@PROPERTIES
@given(
    jobs(),
    st.lists(st.integers(1, 4), min_size=1, max_size=4),
    st.integers(0, 2**32).map(random.Random),
)
def test_job_invariants_hold_through_chaos_and_it_finishes_after(
    fixed: dict[str, Any], parallelisms: list[int], rng: random.Random
) -> None:
    manifests = {
        (parallelism, suspend): job(parallelism=parallelism, suspend=suspend, **fixed)
        for parallelism in set(parallelisms)
        for suspend in (False, True)
    }
    current = manifests[(parallelisms[0], False)]
    created: set[str] = set()

    def change(state: ClusterState, rng: random.Random) -> ClusterState:
        nonlocal current
        parallelism, suspend = current.spec["parallelism"], current.spec["suspend"]
        if rng.random() < 0.1:
            parallelism = rng.choice(parallelisms)
        if rng.random() < 0.05:
            suspend = not suspend
        current = manifests[(parallelism, suspend)]
        return dataclasses.replace(state, desired=(current,))

    def check(state: ClusterState, decision: Decision, now: float) -> None:
        check_job_pass(current, state, decision, now, created)

    nodes = (big_node("n1"), big_node("n2"))
    state = ClusterState(desired=(current,), pods=(), nodes=nodes)
    state, now, _ = run(state, rng, 40, change, check, calm=False, now=START, batch=True)
    current = manifests[(current.spec["parallelism"], False)]
    state = dataclasses.replace(state, desired=(current,))
    state, now, last = run(state, rng, 30, change, check, calm=True, now=now, batch=True)
    assert last is not None
    final = last.jobs[current.key]
    assert final.finished, final
    assert not [p for p in live(state, current) if p.phase in ("Pending", "Running")]

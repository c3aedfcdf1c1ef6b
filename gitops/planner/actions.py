"""The planner's output shapes and the helpers every workload kind's planner shares.

A `Plan` is Nomad-style buckets: pods to create (pending, not yet placed), pods to stop and
pods to keep, each action with the reason a person would ask for. `Workloads` is what a
kind's planner may read besides its own manifest and pods: the clock, the nodes, the names
of pods still draining, replica counts set by autoscalers, rollout and Job states. Pod
names are deterministic (`pod_suffix`), so planning is reproducible and the same plan run
twice creates nothing the second time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from itertools import chain

from gitops.model import JobState, Manifest, Node, ObjectKey, Pod, PodName, RolloutState
from gitops.planner.podspec import Template

_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' safe alphabet: no vowels, no 0/1/3
# byte b -> `_ALPHABET[b % len(_ALPHABET)]`, for `bytes.translate`: a plan names 150,000 pods.
_SUFFIX_TABLE = bytes(ord(_ALPHABET[b % len(_ALPHABET)]) for b in range(256))


@dataclass(frozen=True)
class Action:
    pod: Pod
    reason: str


BURST = 500  # new pods one workload asks for in one pass


@dataclass(frozen=True)
class Plan:
    create: tuple[Action, ...] = ()
    stop: tuple[Action, ...] = ()
    keep: tuple[Pod, ...] = ()
    failed: Mapping[ObjectKey, str] = field(default_factory=dict)  # workloads that could not be planned
    more: bool = False  # a workload wanted more than BURST new pods: plan again soon
    jobs: Mapping[ObjectKey, JobState] = field(
        default_factory=dict
    )  # every desired Job's state after this pass

    @property
    def empty(self) -> bool:
        return not self.create and not self.stop

    def describe(self) -> list[str]:
        lines = [f"create {a.pod.id}: {a.reason}" for a in self.create]
        lines += [f"stop {a.pod.id}: {a.reason}" for a in self.stop]
        return lines


@dataclass(frozen=True)
class Workloads:
    """What a workload's planner reads besides its manifest and its pods."""

    now: float = 0.0
    avoid: AbstractSet[str] = frozenset()  # names of pods being stopped outside this plan
    nodes: Sequence[Node] = ()
    replicas: Mapping[ObjectKey, int] = field(default_factory=dict)  # set by autoscalers
    rollouts: Mapping[ObjectKey, RolloutState] = field(default_factory=dict)
    jobs: Mapping[ObjectKey, JobState] = field(default_factory=dict)
    # Why a workload that left the desired set did (a CronJob ended the run, say); the
    # default is "removed from the source".
    removed: Mapping[ObjectKey, str] = field(default_factory=dict)
    # ConfigMaps, Secrets and PriorityClasses: what templates refer to.
    configs: Mapping[ObjectKey, Manifest] = field(default_factory=dict)

    def replicas_of(self, manifest: Manifest) -> int:
        """The replica count to run: an autoscaler's, else the manifest's (default 1)."""
        scaled = self.replicas.get(manifest.key)
        return scaled if scaled is not None else int(manifest.spec.get("replicas", 1))


def pod_suffix(template_hash: str, slot: int) -> str:
    digest = hashlib.sha256(f"{template_hash}/{slot}".encode()).digest()
    return digest[:5].translate(_SUFFIX_TABLE).decode("ascii")


def pod_name(deployment: str, template_hash: str, slot: int) -> PodName:
    return PodName(f"{deployment}-{template_hash}-{pod_suffix(template_hash, slot)}")


def new_pods(
    workload: Manifest,
    template: Template,
    owned: Sequence[Pod],
    count: int,
    *,
    now: float,
    avoid: AbstractSet[str],
    name_of: Callable[[int], PodName],
) -> list[Pod]:
    """Up to `count` (at most `BURST`) new pods of `template`, named by `name_of(slot)` for
    slots 0, 1, ..., skipping names taken by `owned` pods or in `avoid`. `avoid` is looked
    in, not copied: it holds every stopping pod's name, thousands while a rollout goes, and
    copying it for each workload of a pass was 7% of the leader's time in one."""
    used = {p.name for p in owned}
    pods: list[Pod] = []
    slot = 0
    while len(pods) < min(count, BURST):
        name = name_of(slot)
        slot += 1
        if name in used or name in avoid:
            continue
        used.add(name)
        pods.append(
            Pod(
                namespace=workload.key.namespace,
                name=name,
                owner=workload.key,
                template_hash=template.hash,
                spec=template.spec,
                labels=template.labels,
                reason="waiting to be scheduled",
                created_at=now,
            )
        )
    return pods


def stop_order(pod: Pod) -> tuple[int, int, float, str]:
    """Pods least worth keeping first: unplaced, then not ready, then newest."""
    return (pod.node is not None, pod.ready, -pod.created_at, pod.name)


def group_by_owner(pods: Iterable[Pod]) -> dict[ObjectKey, tuple[Pod, ...]]:
    """The pods of each owner, in the order given, as tuples (which a `Settled` compares by
    identity). Consecutive pods with the very same owner object (the store gives a
    workload's pods one) skip hashing it: at 150,000 pods the dataclass's hash was a third
    of grouping them."""
    groups: dict[ObjectKey, list[Pod]] = {}
    owner: ObjectKey | None = None
    group: list[Pod] = []
    for pod in pods:
        if pod.owner is not owner:
            owner = pod.owner
            found = groups.get(owner)
            group = groups[owner] = [] if found is None else found
        group.append(pod)
    return {owner: tuple(group) for owner, group in groups.items()}


def merge(parts: Sequence[Plan]) -> Plan:
    """One plan of several workloads' plans."""
    return Plan(
        create=tuple(chain.from_iterable(p.create for p in parts)),
        stop=tuple(chain.from_iterable(p.stop for p in parts)),
        keep=tuple(chain.from_iterable(p.keep for p in parts)),
        failed={k: v for p in parts for k, v in p.failed.items()},
        more=any(p.more for p in parts),
        jobs={k: v for p in parts for k, v in p.jobs.items()},
    )


def finished(pod: Pod) -> bool:
    """The pod ran to its end (restartPolicy Never or OnFailure): Succeeded or Failed."""
    return pod.phase in ("Succeeded", "Failed")

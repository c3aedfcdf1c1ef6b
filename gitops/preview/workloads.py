"""What a preview says about each workload besides its pod actions.

The pod actions say which pods each pass creates and stops, where and why. These summaries
say, a line each, how the workloads the branch touches run, read from the same decisions
(`gitops.reconcile.decide`) and the planner's own descriptions:

- A rollout: a Deployment's new template, or a StatefulSet's or DaemonSet's pods starting
  or being replaced. Its strategy and its steps (the passes that start pods); for a
  StatefulSet its pods in the order they start (ordinal order, an update highest ordinal
  first), for a DaemonSet the nodes it starts them on and the nodes it leaves out, and why.
- A Job: how many pods it runs and how many at a time, and the pods the preview starts.
  A preview never lets a pod finish (`settle` makes pods Running and ready, and no more),
  so a Job shows the pods it starts first; the rest start as those succeed.
- A CronJob: its schedule, time zone and next three run times. Every pass of a preview
  runs at the same time, so no schedule comes due in it: a change starts no run by itself
  (a run already due in the state it runs on does start, as the next pass would start it).
- An autoscaler: its target, bounds and metrics, and the replicas it holds the target at,
  with the reason of the pass that set them. A preview has no load of its own: the pods it
  starts have no usage sample, and with no sample the autoscaler keeps what it runs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gitops.model import ClusterState, CronState, Manifest, ObjectKey, ScaleState
from gitops.planner import rollouts as rollout_statuses
from gitops.planner.autoscale import SpecError, read_spec
from gitops.planner.cron import describe_time, job_manifest, next_runs
from gitops.planner.daemonset import DEFAULT_TOLERATIONS, ineligible
from gitops.planner.plan import configs_of
from gitops.planner.podspec import resolve_template
from gitops.reconcile import ROLLED_OUT, Decision
from gitops.schemas.cron import read_time_zone

if TYPE_CHECKING:
    from gitops.preview.compute import PodAction

NEXT_RUNS = 3  # the run times a CronJob's summary shows


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class RolloutPlan:
    """A workload whose pods the branch starts or replaces, step by step."""

    deployment: str  # the workload, any kind ("StatefulSet default/db"); so named in format 1
    replicas: int  # a DaemonSet: the nodes it runs on
    strategy: str
    steps: int  # passes that start pods
    order: tuple[str, ...] = ()  # a StatefulSet: pods as they start; a DaemonSet: their nodes
    skipped: tuple[str, ...] = ()  # a DaemonSet: "node: why it runs no pod there"

    @property
    def summary(self) -> str:
        unit = "node" if self.deployment.startswith("DaemonSet ") else "replica"
        text = f"{_plural(self.replicas, unit)}, {self.strategy}: {_plural(self.steps, 'step')}"
        if self.order:
            text += ": " + ", ".join(self.order)
        if self.skipped:
            text += "; no pod on " + "; ".join(self.skipped)
        return text


@dataclass(frozen=True)
class JobPlan:
    """A Job the branch adds, changes or starts pods for."""

    job: str
    completions: int | None  # None: a work queue
    parallelism: int
    indexed: bool
    started: tuple[str, ...]  # the pods the preview starts, in order
    status: str = ""  # how the Job stands after the passes: "Suspended: suspend: true"
    cronjob: str = ""  # the CronJob whose run this is

    @property
    def summary(self) -> str:
        at_a_time = f"{self.parallelism} at a time"
        if self.completions is None:
            text = f"runs {_plural(self.parallelism, 'pod')} as a work queue, until one succeeds"
        elif self.indexed:
            text = f"runs indexes 0 to {self.completions - 1} to completion, {at_a_time}"
        else:
            text = f"runs {_plural(self.completions, 'pod')} to completion, {at_a_time}"
        if self.cronjob:
            text = f"a run of {self.cronjob}: {text}"
        if self.status:
            return f"{text}; {self.status}"
        text += f"; starts {len(self.started)} now"
        left = (self.completions or 0) - len(self.started)
        if left > 0:
            text += f", {left} more as these succeed (pods do not finish in a preview)"
        return text


@dataclass(frozen=True)
class CronPlan:
    """A CronJob the branch adds or changes, or whose runs start in the preview."""

    cronjob: str
    schedule: str
    zone: str
    next_runs: tuple[str, ...]  # the next run times after the preview's time, in `zone`
    started: tuple[str, ...] = ()  # runs (Jobs) that start in the preview
    suspended: bool = False
    reason: str = ""  # the CronJob's pass: why it started a run, or did not
    error: str = ""

    @property
    def summary(self) -> str:
        if self.error:
            return f"cannot run: {self.error}"
        text = f"schedule {self.schedule} ({self.zone})"
        if self.suspended:
            text += ": suspended, starts no run"
        elif self.next_runs:
            text += ": next runs " + ", ".join(self.next_runs)
        if self.started:
            return f"{text}; starts {', '.join(self.started)}: {self.reason}"
        if not self.suspended:
            text += "; the change starts no run by itself"
        return text


@dataclass(frozen=True)
class ScalePlan:
    """An autoscaler the branch adds or changes, or whose target's pods it changes."""

    hpa: str
    target: str
    min_replicas: int | None  # None: the spec cannot be read (see `error`)
    max_replicas: int | None
    metrics: tuple[tuple[str, str, str], ...]  # (metric, target, current reading or "")
    unsupported: tuple[str, ...]
    replicas: int  # what it holds the target at after the passes
    before: int | None  # what it held the target at before (None: first sight)
    reason: str
    error: str = ""

    @property
    def summary(self) -> str:
        if self.min_replicas is None:
            return f"{self.target}: cannot autoscale: {self.error}"
        metrics = ", ".join(
            f"{name} target {target}" + (f" (now {current})" if current and current != "unknown" else "")
            for name, target, current in self.metrics
        )
        text = f"{self.target} between {self.min_replicas} and {self.max_replicas} replicas"
        if metrics:
            text += f", {metrics}"
        if self.unsupported:
            text += f" ({', '.join(self.unsupported)}: not supported)"
        held = f"holds it at {self.replicas}"
        if self.before is not None and self.before != self.replicas:
            held = f"takes it from {self.before} to {self.replicas}"
        return f"{text}; {held}: {self.reason}"


@dataclass(frozen=True)
class Summaries:
    rollouts: tuple[RolloutPlan, ...] = ()
    jobs: tuple[JobPlan, ...] = ()
    cronjobs: tuple[CronPlan, ...] = ()
    autoscalers: tuple[ScalePlan, ...] = ()


def summarise(
    head: Sequence[Manifest],
    actions: Sequence[PodAction],
    *,
    changed: Set[ObjectKey],
    before: ClusterState,
    after: ClusterState,
    last: Decision,
    crons: Sequence[Mapping[ObjectKey, CronState]],
    scales: Sequence[Mapping[ObjectKey, ScaleState]],
    now: float,
) -> Summaries:
    """The summaries of a preview: `changed` are the objects the branch adds or changes,
    `before` the state the passes start from, `after` the state they end at (`last` its
    decision, which changes nothing), `crons` and `scales` each pass's CronJob and
    autoscaler states."""
    by_owner: dict[str, list[PodAction]] = defaultdict(list)
    for a in actions:
        by_owner[a.owner].append(a)
    return Summaries(
        tuple(_rollouts(head, by_owner, after, last, now)),
        tuple(_jobs(head, changed, by_owner, last)),
        tuple(_cronjobs(head, changed, before, crons, now)),
        tuple(_autoscalers(head, changed, by_owner, before, scales)),
    )


def _name(pod: str) -> str:
    return pod.split("/", 1)[-1]


def _rollouts(
    head: Sequence[Manifest],
    by_owner: Mapping[str, Sequence[PodAction]],
    after: ClusterState,
    last: Decision,
    now: float,
) -> list[RolloutPlan]:
    """Deployments whose template changes; StatefulSets and DaemonSets the preview starts
    pods for, whose order (ordinals, nodes) is the point."""
    rolled = sorted((m for m in head if m.key.kind in ROLLED_OUT), key=lambda m: m.key)
    replicas = {s.target: s.replicas for s in last.scales.values()}
    found = rollout_statuses(head, after.pods, now=now, nodes=after.nodes, replicas=replicas)
    statuses = {m.key: s for m, s in zip(rolled, found, strict=True)}
    result = []
    for m in rolled:
        mine = by_owner.get(str(m.key), ())
        update = any(a.kind == "replace" for a in mine)
        starts = [a for a in mine if a.action == "create"]
        if not update and (not starts or m.key.kind == "Deployment"):
            continue
        status = statuses[m.key]
        steps = len({a.pass_ for a in starts})
        count = replicas.get(m.key, _int(m.spec.get("replicas"), 1))
        order: tuple[str, ...] = ()
        skipped: tuple[str, ...] = ()
        strategy = status.strategy
        if m.key.kind == "StatefulSet":
            policy = str(m.spec.get("podManagementPolicy", "OrderedReady"))
            order = tuple(_name(a.pod) for a in starts)
            if update:
                strategy = f"{policy}, {status.strategy}"
            elif policy == "Parallel":
                strategy = "Parallel (all at once)"
            else:
                strategy = "OrderedReady (one at a time, each once the one before is Running and ready)"
        elif m.key.kind == "DaemonSet":
            count = status.desired
            order = tuple(a.node or "unschedulable" for a in starts)
            skipped = _ineligible(m, head, after)
            if not update:
                strategy = "one pod per eligible node"
        result.append(RolloutPlan(str(m.key), count, strategy, steps, order, skipped))
    return result


def _ineligible(daemonset: Manifest, head: Sequence[Manifest], state: ClusterState) -> tuple[str, ...]:
    """The nodes a DaemonSet runs no pod on, each with why (the planner's own test)."""
    try:
        template = resolve_template(daemonset, configs_of(head))
    except Exception:  # the planner reports it on the workload
        return ()
    tolerations = (*template.spec.tolerations, *DEFAULT_TOLERATIONS)
    skipped = []
    for node in sorted(state.nodes, key=lambda n: n.name):
        why = ineligible(template.spec, tolerations, node)
        if why:
            skipped.append(f"{node.name} ({why})")
    return tuple(skipped)


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _jobs(
    head: Sequence[Manifest],
    changed: Set[ObjectKey],
    by_owner: Mapping[str, Sequence[PodAction]],
    last: Decision,
) -> list[JobPlan]:
    """Jobs of the branch that it adds or changes or that start pods, and CronJob runs that
    start pods in the preview."""
    runs: list[tuple[Manifest, str]] = [(m, "") for m in head if m.key.kind == "Job"]
    cronjobs = {m.key: m for m in head if m.key.kind == "CronJob"}
    for key, cron in sorted(last.crons.items()):
        if key in cronjobs:
            runs += [(job_manifest(cronjobs[key], run), str(key)) for run in cron.runs]
    result = []
    for job, cronjob in sorted(runs, key=lambda r: r[0].key):
        started = tuple(_name(a.pod) for a in by_owner.get(str(job.key), ()) if a.action == "create")
        if not started and (cronjob or job.key not in changed):
            continue
        spec = job.spec
        completions = spec.get("completions")
        state = last.jobs.get(job.key)
        status = f"{state.condition}: {state.reason}" if state is not None and state.condition else ""
        result.append(
            JobPlan(
                str(job.key),
                None if completions is None else _int(completions, 1),
                _int(spec.get("parallelism"), 1),
                spec.get("completionMode") == "Indexed" and completions is not None,
                started,
                status,
                cronjob,
            )
        )
    return result


def _cronjobs(
    head: Sequence[Manifest],
    changed: Set[ObjectKey],
    before: ClusterState,
    crons: Sequence[Mapping[ObjectKey, CronState]],
    now: float,
) -> list[CronPlan]:
    result = []
    for cronjob in sorted((m for m in head if m.key.kind == "CronJob"), key=lambda m: m.key):
        passes = [c[cronjob.key] for c in crons if cronjob.key in c]
        previous = before.crons.get(cronjob.key)
        had = {r.name for r in previous.runs} if previous is not None else set()
        started: list[str] = []
        state = passes[-1] if passes else None
        for step in passes:  # the reason of the pass that started a run, else the last one's
            new = [r.name for r in step.runs if r.name not in had and r.name not in started]
            if new:
                started += new
                state = step
        if cronjob.key not in changed and not started:
            continue
        spec = cronjob.spec
        schedule = str(spec.get("schedule", ""))
        try:
            zone = read_time_zone(spec.get("timeZone"))
            times = tuple(describe_time(t, zone) for t in next_runs(spec, now, NEXT_RUNS))
        except ValueError as error:
            result.append(CronPlan(str(cronjob.key), schedule, "", (), error=str(error)))
            continue
        result.append(
            CronPlan(
                str(cronjob.key),
                schedule,
                zone,
                times,
                tuple(started),
                spec.get("suspend") is True,
                state.reason if state is not None else "",
                state.error if state is not None else "",
            )
        )
    return result


def _autoscalers(
    head: Sequence[Manifest],
    changed: Set[ObjectKey],
    by_owner: Mapping[str, Sequence[PodAction]],
    before: ClusterState,
    scales: Sequence[Mapping[ObjectKey, ScaleState]],
) -> list[ScalePlan]:
    result = []
    for hpa in sorted((m for m in head if m.key.kind == "HorizontalPodAutoscaler"), key=lambda m: m.key):
        passes = [s[hpa.key] for s in scales if hpa.key in s]
        if not passes:
            continue
        final = passes[-1]
        previous = before.scales.get(hpa.key)
        held = previous.replicas if previous is not None and previous.target == final.target else None
        if hpa.key not in changed and str(final.target) not in by_owner and held == final.replicas:
            continue
        # The reason of the last pass that moved the replicas; else the first pass's.
        deciding, prior = passes[0], held
        for step in passes:
            if prior is not None and step.replicas != prior:
                deciding = step
            prior = step.replicas
        readings = {m.name: m.current for p in passes for m in p.metrics}
        try:
            spec = read_spec(hpa)
        except SpecError as error:
            result.append(
                ScalePlan(
                    str(hpa.key), str(final.target), None, None, (), (), final.replicas, held, "", str(error)
                )
            )
            continue
        result.append(
            ScalePlan(
                str(hpa.key),
                str(final.target),
                spec.min_replicas,
                spec.max_replicas,
                tuple((m.name, m.target, readings.get(m.name, "")) for m in spec.metrics),
                spec.unsupported,
                final.replicas,
                held,
                deciding.reason,
                final.error,
            )
        )
    return result


__all__ = ["CronPlan", "JobPlan", "RolloutPlan", "ScalePlan", "Summaries", "summarise"]

"""What an agent does on its node, decided as a pure function.

`plan_node(pods, containers, memory, verdicts, now, ...) -> NodeActions` looks at the pods
the control plane bound to this node, the containers the runtime has, what the agent
remembers of each pod (`PodMemory`: backoff, the exit it has already accounted for, a
drain in progress) and this tick's probe verdicts, and says what to do, each action with
its reason: start a container, kill one (a failed liveness probe), remove one, report a
terminating pod gone. `gitops.agents.agent` carries the actions out. No Docker, no clock,
no I/O here, so every fault case is a fast unit test of this function.

The rules, as kubelet has them:

- **Every run is a fresh container.** A restart never reuses the exited container (its
  writable layer would keep files of the previous run, such as a readiness marker); the
  new container carries the next restart number (`ContainerInfo.restart`), and the
  previous one is kept, exited, for its logs, until the next restart.
- **One backoff for every restart.** An exit (of any cause: the process ended, a failed
  liveness probe killed it) waits 10 s, doubling per exit up to 5 min; a container that
  ran 10 minutes starts again from 10 s. A failed liveness probe only kills the container;
  the restart then goes through the same backoff.
- **The runtime's outage is not a crash.** A container that stopped while the runtime was
  unreachable (a Docker engine stopped or restarted) starts again at once when it is back,
  without counting toward the backoff.
- **Adopt, never recreate.** A running container of an assigned pod with the pod's
  template is kept as it is, whatever the agent remembers.
- **Only an authoritative assignment removes.** Containers of pods the control plane does
  not assign to this node are removed only when it says its assignment is authoritative (a
  control plane that has just started may not have read its sources or heard from its
  agents yet, and must be given the chance to adopt them).
- **Terminating pods drain first.** A terminating pod's container keeps running for
  `drain_seconds` (every node drops it from its endpoints meanwhile), then is stopped with
  the pod's grace period; when no container is left the pod is reported gone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gitops.agents.runtime import ContainerInfo
from gitops.model import Pod, PodId

BACKOFF_START = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET_AFTER = 600.0
UNASSIGNED_GRACE = 10  # seconds a container of a pod gone from this node gets to stop


@dataclass(frozen=True)
class PodMemory:
    """What the agent remembers of one pod between ticks."""

    backoff: int = 0  # exits counted toward the crash backoff since the pod last ran long enough
    next_attempt: float = 0.0  # no start before this (a crash backoff, or a failed start)
    exit_seen: tuple[str, float] = ("", 0.0)  # (container, finished_at) of the exit accounted for
    failed_starts: int = 0
    last_error: str = ""  # why the last start failed, as reported
    draining_since: float | None = None


@dataclass(frozen=True)
class Outage:
    """A time the runtime was unreachable; containers that stopped then did not crash."""

    start: float
    end: float

    def covers(self, moment: float, slack: float) -> bool:
        return self.start - slack <= moment <= self.end + slack


@dataclass(frozen=True)
class Start:
    """Create and start a fresh container for `pod`, carrying restart number `restart`."""

    pod: Pod
    restart: int
    reason: str


@dataclass(frozen=True)
class Kill:
    """Stop a running container without removing it (its restart follows the backoff)."""

    container: ContainerInfo
    grace: int
    reason: str


@dataclass(frozen=True)
class Remove:
    """Stop (with `grace`) and remove a container."""

    container: ContainerInfo
    grace: int
    reason: str


@dataclass(frozen=True)
class NodeActions:
    start: tuple[Start, ...] = ()
    kill: tuple[Kill, ...] = ()
    remove: tuple[Remove, ...] = ()
    stopped: tuple[PodId, ...] = ()  # terminating pods whose containers are all gone
    waiting: Mapping[PodId, str] = field(default_factory=dict)  # why a pod is not (re)started now
    memory: Mapping[PodId, PodMemory] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return bool(self.start or self.kill or self.remove)

    def describe(self) -> list[str]:
        lines = [f"start {a.pod.id} (run {a.restart}): {a.reason}" for a in self.start]
        lines += [f"kill {a.container.pod} {a.container.id[:12]}: {a.reason}" for a in self.kill]
        lines += [f"remove {a.container.pod} {a.container.id[:12]}: {a.reason}" for a in self.remove]
        lines += [f"gone {p}" for p in self.stopped]
        return lines


def runs(containers: Iterable[ContainerInfo]) -> dict[PodId, list[ContainerInfo]]:
    """A pod's containers, newest run last (by restart number, then start time)."""
    by_pod: dict[PodId, list[ContainerInfo]] = {}
    for c in containers:
        by_pod.setdefault(c.pod, []).append(c)
    for found in by_pod.values():
        found.sort(key=lambda c: (c.restart, c.running, c.started_at, c.id))
    return by_pod


def current_run(containers: Sequence[ContainerInfo], template_hash: str) -> ContainerInfo | None:
    """The container that is the pod's current run: its newest with the pod's template."""
    matching = [c for c in containers if c.template_hash == template_hash]
    return matching[-1] if matching else None


def should_restart(pod: Pod, container: ContainerInfo) -> bool:
    policy = pod.spec.restart_policy
    return policy == "Always" or (policy == "OnFailure" and container.exit_code != 0)


def crash_delay(backoff: int) -> float:
    return min(BACKOFF_START * 2.0**backoff, BACKOFF_MAX)


def crash_loop(container: ContainerInfo, state: PodMemory, now: float) -> str:
    """What a pod whose container exited waits for: `CrashLoopBackOff: exited with code 1;
    restarting in 20s`, for an exit the plan has accounted for or is about to."""
    if state.exit_seen == (container.id, container.finished_at):
        wait = max(0.0, state.next_attempt - now)
    else:
        ran_long = container.finished_at - container.started_at > BACKOFF_RESET_AFTER
        wait = crash_delay(0 if ran_long else state.backoff)
    why = f" ({state.last_error})" if state.last_error else ""
    return f"CrashLoopBackOff: exited with code {container.exit_code}{why}; restarting in {wait:.0f}s"


def plan_node(
    pods: Sequence[Pod],
    containers: Sequence[ContainerInfo],
    memory: Mapping[PodId, PodMemory],
    *,
    now: float,
    verdicts: Mapping[PodId, str] | None = None,
    outages: Sequence[Outage] = (),
    authoritative: bool = True,
    drain_seconds: float = 2.0,
    outage_slack: float = 2.0,
) -> NodeActions:
    """What to do on this node now. `verdicts` maps a pod whose liveness (or startup) probe
    gave up to the probe's reason; `outages` are recent times the runtime was unreachable."""
    verdicts = verdicts or {}
    wanted = {p.id: p for p in pods}
    by_pod = runs(containers)
    start: list[Start] = []
    kill: list[Kill] = []
    remove: list[Remove] = []
    stopped: list[PodId] = []
    waiting: dict[PodId, str] = {}
    remembered: dict[PodId, PodMemory] = {}

    for pod_id in sorted(set(by_pod) - set(wanted)):
        if authoritative:
            for c in by_pod[pod_id]:
                remove.append(Remove(c, UNASSIGNED_GRACE, "the pod is no longer assigned to this node"))

    for pod in sorted(pods, key=lambda p: p.id):
        state = memory.get(pod.id, PodMemory())
        found = by_pod.get(pod.id, [])
        current = current_run(found, pod.template_hash)
        for c in found:
            if c.template_hash != pod.template_hash:
                remove.append(Remove(c, pod.spec.termination_grace_period_seconds, "its template differs"))
        mine = [c for c in found if c.template_hash == pod.template_hash]
        previous = [c for c in mine if c is not current]
        # A pod runs one container at a time; the run before the current one is kept (exited)
        # for its logs until the next restart.
        for c in previous:
            if c.running:
                remove.append(Remove(c, 0, "a second container of the pod"))
        for c in [c for c in previous if not c.running][:-1]:
            remove.append(Remove(c, 0, "an older run than the previous one"))

        if pod.terminating_at is not None:
            if not found:
                stopped.append(pod.id)
                continue
            since = state.draining_since if state.draining_since is not None else now
            state = dataclasses.replace(state, draining_since=since)
            if now >= since + drain_seconds:
                for c in mine:
                    grace = pod.spec.termination_grace_period_seconds
                    remove.append(Remove(c, grace, f"the pod is terminating ({pod.reason})"))
            else:
                waiting[pod.id] = "draining: leaving every Service's endpoints before it stops"
            remembered[pod.id] = state
            continue

        if current is None:
            if now < state.next_attempt:
                waiting[pod.id] = state.last_error or f"starting in {state.next_attempt - now:.0f}s"
            else:
                start.append(Start(pod, 0, "the pod has no container yet"))
            remembered[pod.id] = state
            continue

        if current.running:
            probe = verdicts.get(pod.id)
            if probe:
                grace = pod.spec.termination_grace_period_seconds
                kill.append(Kill(current, grace, probe))
            remembered[pod.id] = state
            continue

        if not should_restart(pod, current):
            remembered[pod.id] = state  # Succeeded or Failed for good (restartPolicy)
            continue
        exit_key = (current.id, current.finished_at)
        if state.exit_seen != exit_key:
            if any(o.covers(current.finished_at, outage_slack) for o in outages):
                state = dataclasses.replace(state, exit_seen=exit_key, next_attempt=now)
            else:
                backoff = (
                    0 if current.finished_at - current.started_at > BACKOFF_RESET_AFTER else state.backoff
                )
                state = dataclasses.replace(
                    state, exit_seen=exit_key, backoff=backoff + 1, next_attempt=now + crash_delay(backoff)
                )
        if now < state.next_attempt:
            waiting[pod.id] = crash_loop(current, state, now)
        else:
            for c in previous:
                if not c.running:
                    remove.append(Remove(c, 0, "replaced by a newer run"))
            start.append(Start(pod, current.restart + 1, f"restart after exit code {current.exit_code}"))
        remembered[pod.id] = state

    return NodeActions(
        start=tuple(start),
        kill=tuple(kill),
        remove=tuple(_unique(remove)),
        stopped=tuple(stopped),
        waiting=waiting,
        memory=remembered,
    )


def _unique(actions: Iterable[Remove]) -> list[Remove]:
    seen: set[str] = set()
    result = []
    for a in actions:
        if a.container.id not in seen:
            seen.add(a.container.id)
            result.append(a)
    return result

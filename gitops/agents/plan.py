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
- **Terminating pods drain first.** A terminating pod's containers keep running for
  `drain_seconds` (every node drops it from its endpoints meanwhile), then its app
  containers are stopped with the pod's grace period, then its sidecars and network
  container; when no container is left the pod is reported gone.

A pod of several containers (init containers included) gets an infra container first
(`INFRA`, which holds the pod's network: address, hostname, published ports); its other
containers join that network. Then, in order and one at a time, each init container runs
to success (a failure is retried per the pod's restartPolicy with the same backoff, or
fails the pod under Never); a sidecar (an init container with restartPolicy Always) is
started and left running. Then the app containers start. Backoff and probes are kept per
container (`RunKey`). An infra container that exits takes the pod with it: every
container is removed and the pod starts again from its init containers, as kubelet does
when a pod's sandbox changes. A pod of one container runs in a network of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gitops.agents.podconf import needs_pod_ip
from gitops.agents.runtime import INFRA, ContainerInfo, RunKey
from gitops.model import Container, Pod, PodId

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
    """Create and start a fresh container for the pod's `container` (`INFRA`: the container
    holding its network), carrying restart number `restart`."""

    pod: Pod
    restart: int
    reason: str
    container: str = ""  # "" for the pod's first container


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
    memory: Mapping[RunKey, PodMemory] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return bool(self.start or self.kill or self.remove)

    def describe(self) -> list[str]:
        lines = [
            f"start {a.pod.id}{'/' + a.container if a.container else ''} (run {a.restart}): {a.reason}"
            for a in self.start
        ]
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


def has_infra(pod: Pod) -> bool:
    """Whether the pod's network is held by an infra container: a pod of several containers
    (init ones included), or one told its own address (known before it starts only so). A
    pod of one container has the network of its container."""
    return len(pod.spec.all_containers) > 1 or needs_pod_ip(pod.spec)


def name_of(container: ContainerInfo, pod: Pod) -> str:
    """The pod's container `container` runs (one made before pods had several runs the first)."""
    return container.container or pod.spec.main.name


def current_run(containers: Sequence[ContainerInfo], template_hash: str) -> ContainerInfo | None:
    """The container that is the pod's current run: its newest with the pod's template."""
    matching = [c for c in containers if c.template_hash == template_hash]
    return matching[-1] if matching else None


def container_runs(pod: Pod, containers: Sequence[ContainerInfo]) -> dict[str, list[ContainerInfo]]:
    """The runs of each of the pod's containers with its template (by name; `INFRA` too), oldest first."""
    result: dict[str, list[ContainerInfo]] = {}
    for c in containers:
        if c.template_hash == pod.template_hash:
            result.setdefault(name_of(c, pod), []).append(c)
    return result


def should_restart(pod: Pod, container: ContainerInfo, spec: Container | None = None) -> bool:
    """Whether an exited container runs again: a sidecar always, others per the pod's
    restartPolicy (an init container that succeeded never)."""
    if spec is not None and spec.restart_policy == "Always":
        return True
    if spec is not None and spec in pod.spec.init_containers and container.exit_code == 0:
        return False
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
    return f"CrashLoopBackOff: {exit_text(container)}{why}; restarting in {wait:.0f}s"


def exit_text(container: ContainerInfo) -> str:
    """How a container ended: `OOMKilled (exit code 137)` or `exited with code 1`."""
    if container.oom_killed:
        return f"OOMKilled (exit code {container.exit_code})"
    return f"exited with code {container.exit_code}"


@dataclass
class _Planner:
    """One `plan_node` call's working state."""

    now: float
    memory: Mapping[RunKey, PodMemory]
    verdicts: Mapping[RunKey, str]
    outages: Sequence[Outage]
    outage_slack: float
    start: list[Start] = field(default_factory=list)
    kill: list[Kill] = field(default_factory=list)
    remove: list[Remove] = field(default_factory=list)
    waiting: dict[PodId, str] = field(default_factory=dict)
    remembered: dict[RunKey, PodMemory] = field(default_factory=dict)

    def state(self, key: RunKey) -> PodMemory:
        return self.remembered.get(key) or self.memory.get(key, PodMemory())

    def prune(self, found: Sequence[ContainerInfo]) -> ContainerInfo | None:
        """Keep a container's current run and the exited run before it (for its logs); the
        current run, if any."""
        if not found:
            return None
        current, previous = found[-1], found[:-1]
        for c in previous:
            if c.running:
                self.remove.append(Remove(c, 0, "a second run of the container"))
        for c in [c for c in previous if not c.running][:-1]:
            self.remove.append(Remove(c, 0, "an older run than the previous one"))
        return current

    def run(self, pod: Pod, spec: Container, found: Sequence[ContainerInfo], label: str) -> str:
        """Converge one container of a running pod; its state: "running", "done" (exited
        for good), or "waiting" (being started, or backing off)."""
        key = (pod.id, spec.name)
        state = self.state(key)
        current = self.prune(found)
        name = "" if label == "" else spec.name
        if current is None:
            if self.now < state.next_attempt:
                self.waiting.setdefault(
                    pod.id, state.last_error or f"starting in {state.next_attempt - self.now:.0f}s"
                )
            else:
                reason = (
                    "the pod has no container yet"
                    if not label
                    else f"{label} {spec.name} has no container yet"
                )
                self.start.append(Start(pod, 0, reason, name))
            self.remembered[key] = state
            return "waiting"
        if current.running:
            probe = self.verdicts.get(key)
            if probe:
                self.kill.append(Kill(current, pod.spec.termination_grace_period_seconds, probe))
            self.remembered[key] = state
            return "running"
        if not should_restart(pod, current, spec):
            self.remembered[key] = state  # Succeeded or Failed for good (restartPolicy)
            return "done"
        exit_key = (current.id, current.finished_at)
        if state.exit_seen != exit_key:
            if any(o.covers(current.finished_at, self.outage_slack) for o in self.outages):
                state = dataclasses.replace(state, exit_seen=exit_key, next_attempt=self.now)
            else:
                ran_long = current.finished_at - current.started_at > BACKOFF_RESET_AFTER
                backoff = 0 if ran_long else state.backoff
                state = dataclasses.replace(
                    state,
                    exit_seen=exit_key,
                    backoff=backoff + 1,
                    next_attempt=self.now + crash_delay(backoff),
                )
        if self.now < state.next_attempt:
            self.waiting.setdefault(pod.id, crash_loop(current, state, self.now))
        else:
            for c in found[:-1]:
                if not c.running:
                    self.remove.append(Remove(c, 0, "replaced by a newer run"))
            what = f"{label} {spec.name}: " if label else ""
            self.start.append(
                Start(
                    pod,
                    current.restart + 1,
                    f"{what}restart after exit code {current.exit_code}"
                    + (" (OOMKilled)" if current.oom_killed else ""),
                    name,
                )
            )
        self.remembered[key] = state
        return "waiting"

    def pod(self, pod: Pod, found: Sequence[ContainerInfo]) -> None:
        """Converge a pod that is not terminating."""
        by_name = container_runs(pod, found)
        if not has_infra(pod):
            self.run(pod, pod.spec.main, by_name.get(pod.spec.main.name, []), "")
            return
        infra = self.prune(by_name.get(INFRA, []))
        infra_state = self.state((pod.id, INFRA))
        self.remembered[(pod.id, INFRA)] = infra_state
        if (infra is None or not infra.running) and self.now < infra_state.next_attempt:
            self.waiting.setdefault(pod.id, infra_state.last_error or "starting the pod's network container")
            return
        if infra is None or not infra.running:
            if infra is not None:
                # The pod's network is gone: every container of the pod starts again, init
                # containers first, as kubelet does when a pod's sandbox changes.
                for c in found:
                    if c.template_hash == pod.template_hash:
                        self.remove.append(Remove(c, 0, "the pod's network container exited"))
            restart = infra.restart + 1 if infra is not None else 0
            self.start.append(Start(pod, restart, "the pod has no network container yet", INFRA))
            return
        started_app = any(by_name.get(c.name) for c in pod.spec.containers)
        for index, init in enumerate(pod.spec.init_containers, start=1):
            label = "sidecar" if init.restart_policy == "Always" else "init container"
            runs_of = by_name.get(init.name, [])
            if started_app and init.restart_policy != "Always":
                self.prune(runs_of)
                continue  # the app containers run: init containers never run again
            state = self.run(pod, init, runs_of, label)
            if state == "running" and init.restart_policy == "Always":
                continue
            if state == "done" and runs_of and runs_of[-1].exit_code == 0:
                continue
            if state == "done":
                return  # failed for good (restartPolicy Never): the pod has failed
            self.waiting.setdefault(pod.id, f"Init:{index - 1}/{len(pod.spec.init_containers)}")
            return
        for container in pod.spec.containers:
            self.run(pod, container, by_name.get(container.name, []), "container")

    def terminating(self, pod: Pod, found: Sequence[ContainerInfo], drain_seconds: float) -> bool:
        """Drain, then stop a terminating pod: its app containers first, then its sidecars
        and network container. True when nothing of it is left."""
        if not found:
            return True
        key: RunKey = (pod.id, "")
        state = self.state(key)
        since = state.draining_since if state.draining_since is not None else self.now
        self.remembered[key] = dataclasses.replace(state, draining_since=since)
        if self.now < since + drain_seconds:
            self.waiting[pod.id] = "draining: leaving every Service's endpoints before it stops"
            return False
        grace = pod.spec.termination_grace_period_seconds
        apps = {c.name for c in pod.spec.containers}
        first = [c for c in found if c.template_hash != pod.template_hash or name_of(c, pod) in apps]
        for c in first or found:
            self.remove.append(Remove(c, grace if c.running else 0, f"the pod is terminating ({pod.reason})"))
        return False


def plan_node(
    pods: Sequence[Pod],
    containers: Sequence[ContainerInfo],
    memory: Mapping[RunKey, PodMemory],
    *,
    now: float,
    verdicts: Mapping[RunKey, str] | None = None,
    outages: Sequence[Outage] = (),
    authoritative: bool = True,
    drain_seconds: float = 2.0,
    outage_slack: float = 2.0,
) -> NodeActions:
    """What to do on this node now. `verdicts` maps a container whose liveness (or startup)
    probe gave up to the probe's reason; `outages` are recent times the runtime was unreachable."""
    wanted = {p.id: p for p in pods}
    by_pod = runs(containers)
    planner = _Planner(now, memory, verdicts or {}, outages, outage_slack)
    stopped: list[PodId] = []

    for pod_id in sorted(set(by_pod) - set(wanted)):
        if authoritative:
            for c in by_pod[pod_id]:
                planner.remove.append(
                    Remove(c, UNASSIGNED_GRACE, "the pod is no longer assigned to this node")
                )

    for pod in sorted(pods, key=lambda p: p.id):
        found = by_pod.get(pod.id, [])
        if pod.terminating_at is not None:
            if planner.terminating(pod, found, drain_seconds):
                stopped.append(pod.id)
            continue
        for c in found:
            if c.template_hash != pod.template_hash:
                planner.remove.append(
                    Remove(c, pod.spec.termination_grace_period_seconds, "its template differs")
                )
        planner.pod(pod, found)

    return NodeActions(
        start=tuple(planner.start),
        kill=tuple(planner.kill),
        remove=tuple(_unique(planner.remove)),
        stopped=tuple(stopped),
        waiting=planner.waiting,
        memory=planner.remembered,
    )


def _unique(actions: Iterable[Remove]) -> list[Remove]:
    seen: set[str] = set()
    result = []
    for a in actions:
        if a.container.id not in seen:
            seen.add(a.container.id)
            result.append(a)
    return result

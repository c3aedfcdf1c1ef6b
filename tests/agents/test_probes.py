"""Probes decide readiness and restarts like Kubernetes, on a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gitops.agents.agent import Agent, AgentConfig
from gitops.agents.probes import Prober
from gitops.agents.runtime import ContainerInfo
from gitops.model import NodeName, ObjectKey, Pod, PodId, PodName, Probe
from tests.agents.fakes import MemoryRuntime
from tests.specs import pod_spec

POD = PodId("default/a")
CONTAINER = ContainerInfo("c1", POD, "h", True, None, "172.17.0.2", (), 100.0, 0.0)


@dataclass
class Script:
    """Answers probes from a list of results per handler, and counts the calls."""

    results: dict[str, list[bool]]
    calls: dict[str, int] = field(default_factory=dict)

    def __call__(self, container: ContainerInfo, probe: Probe) -> tuple[bool, str]:
        key = " ".join(probe.command)
        n = self.calls.get(key, 0)
        self.calls[key] = n + 1
        answers = self.results[key]
        ok = answers[min(n, len(answers) - 1)]
        return ok, "exit code 0" if ok else "exit code 1"


def exec_probe(name: str, **timing: int) -> Probe:
    return Probe("exec", command=(name,), **timing)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(prober: Prober, clock: Clock, seconds: int, **probes: Probe | None) -> list[tuple[bool, bool, str]]:
    seen = []
    for _ in range(seconds):
        v = prober.check(
            [(POD, CONTAINER, probes.get("startup"), probes.get("liveness"), probes.get("readiness"))]
        )[POD]
        seen.append((v.ready, v.restart, v.reason))
        clock.now += 1
    return seen


def test_readiness_starts_false_and_follows_the_thresholds() -> None:
    clock = Clock()
    script = Script({"ready": [False, True, True, False, False, False, True]})
    prober = Prober(script, clock)
    probe = exec_probe("ready", period_seconds=1, success_threshold=2, failure_threshold=3)
    seen = [ready for ready, _, _ in run(prober, clock, 8, readiness=probe)]
    assert seen == [False, False, True, True, True, False, False, True]


def test_initial_delay_and_period_space_out_the_probes() -> None:
    clock = Clock()
    script = Script({"ready": [True]})
    prober = Prober(script, clock)
    run(prober, clock, 20, readiness=exec_probe("ready", initial_delay_seconds=5, period_seconds=5))
    assert script.calls["ready"] == 3  # at 5, 10 and 15 seconds after the start


def test_a_failing_liveness_probe_restarts_after_the_failure_threshold() -> None:
    clock = Clock()
    prober = Prober(Script({"alive": [True, False, False, False]}), clock)
    seen = run(prober, clock, 4, liveness=exec_probe("alive", period_seconds=1, failure_threshold=3))
    assert [restart for _, restart, _ in seen] == [False, False, False, True]
    assert seen[-1][2] == "Liveness probe failed (exec alive): exit code 1; restarting"
    assert all(ready for ready, _, _ in seen[:3])  # no readiness probe: running means ready


def test_the_startup_probe_holds_back_the_others_until_it_passes() -> None:
    clock = Clock()
    script = Script({"started": [False, False, True], "alive": [False], "ready": [True]})
    prober = Prober(script, clock)
    seen = run(
        prober,
        clock,
        4,
        startup=exec_probe("started", period_seconds=1, failure_threshold=5),
        liveness=exec_probe("alive", period_seconds=1, failure_threshold=10),
        readiness=exec_probe("ready", period_seconds=1),
    )
    assert script.calls["alive"] == 1  # liveness starts the pass after startup succeeded
    assert [ready for ready, _, _ in seen] == [False, False, False, True]
    assert seen[0][2] == "Startup probe failed (exec started): exit code 1"


def test_a_startup_probe_that_never_passes_restarts_the_container() -> None:
    clock = Clock()
    prober = Prober(Script({"started": [False]}), clock)
    seen = run(prober, clock, 3, startup=exec_probe("started", period_seconds=1, failure_threshold=3))
    assert [restart for _, restart, _ in seen] == [False, False, True]


def test_the_agent_reports_readiness_and_restarts_on_liveness(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    clock = Clock()
    rt.now = clock.now
    agent = Agent(AgentConfig("http://127.0.0.1:9", NodeName("n1"), "t", tmp_path), rt, clock=clock)
    spec = pod_spec(
        image="web:1",
        readiness_probe=exec_probe("ready", period_seconds=1),
        liveness_probe=exec_probe("alive", period_seconds=1, failure_threshold=2),
    )
    pod = Pod(
        "default", PodName("a"), ObjectKey("Deployment", "default", "web"), "h", spec, node=NodeName("n1")
    )
    rt.exec_results[("ready",)] = (1, "")
    agent.converge([pod], [])
    agent.probe([pod], rt.list(NodeName("n1")))
    (status,) = agent._statuses(rt.list(NodeName("n1")), {pod.id: pod})
    assert (status.ready, status.reason) == (False, "Readiness probe failed (exec ready): exit code 1")
    rt.exec_results[("ready",)] = (0, "")
    clock.now += 1
    agent.probe([pod], rt.list(NodeName("n1")))
    (status,) = agent._statuses(rt.list(NodeName("n1")), {pod.id: pod})
    assert (status.ready, status.reason) == (True, "")
    rt.exec_results[("alive",)] = (1, "")
    for _ in range(2):
        clock.now += 1
        agent.probe([pod], rt.list(NodeName("n1")))
    agent.converge([pod], rt.list(NodeName("n1")))
    agent.wait_removals()
    assert rt.log[-1] == "stop default/a"  # killed, not restarted in place: the backoff decides when
    agent.converge([pod], rt.list(NodeName("n1")))
    (status,) = agent._statuses(rt.list(NodeName("n1")), {pod.id: pod})
    assert status.reason == (
        "CrashLoopBackOff: exited with code 137 (Liveness probe failed (exec alive): exit code 1); "
        "restarting in 10s"
    )
    clock.now += 10
    rt.now = clock.now
    agent.converge([pod], rt.list(NodeName("n1")))
    assert rt.log[-1] == "run default/a #1"  # a fresh container
    (status,) = agent._statuses(rt.list(NodeName("n1")), {pod.id: pod})
    assert (status.phase, status.restarts) == ("Running", 1)

"""Containers' CPU and memory use: rates from two readings of a fake runtime, and readings of
real containers on a real Docker engine."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from gitops.agents.runtime import ContainerInfo, DockerRuntime, UsageSample, usage_from_stats
from gitops.agents.usage import ContainerUsage, UsageSampler, cpu_rate
from gitops.model import NodeName, ObjectKey, Pod, PodId, PodName
from tests.agents.fakes import MemoryRuntime
from tests.conftest import docker_available, require
from tests.e2e.cluster import IMAGE, build_image
from tests.specs import pod_spec

NODE = NodeName("n1")


def start(rt: MemoryRuntime, name: str) -> ContainerInfo:
    pod = Pod("default", PodName(name), ObjectKey("Deployment", "default", "web"), "h", pod_spec(), node=NODE)
    return rt.run(NODE, pod, [])


def ref(info: ContainerInfo) -> tuple[PodId, str, str]:
    return (info.pod, info.container, info.id)


@pytest.fixture
def rt() -> MemoryRuntime:
    return MemoryRuntime()


@pytest.fixture
def sampler(rt: MemoryRuntime) -> Iterator[UsageSampler]:
    sampler = UsageSampler(rt, lambda: rt.now)
    yield sampler
    sampler.close()


def test_cpu_rate_is_cpu_time_over_wall_time_in_millicores() -> None:
    figure = cpu_rate(UsageSample(2_000_000_000, 100.0, 10), UsageSample(9_500_000_000, 115.0, 20))
    assert figure == ContainerUsage(cpu_milli=500.0, memory_bytes=20, at=115.0, window=15.0)


def test_readings_at_one_instant_or_counters_going_back_make_no_rate() -> None:
    assert cpu_rate(UsageSample(5, 100.0, 1), UsageSample(9, 100.0, 1)) is None
    assert cpu_rate(UsageSample(9, 100.0, 1), UsageSample(5, 115.0, 1)) is None


def test_a_container_has_figures_from_its_second_reading(rt: MemoryRuntime, sampler: UsageSampler) -> None:
    web = start(rt, "web-1")
    rt.cpu_ns[web.id], rt.working_set[web.id] = 1_000_000_000, 50_000_000
    assert sampler.sample([ref(web)]) == {}

    rt.now += 15
    rt.cpu_ns[web.id] += 3_000_000_000  # 3 s of CPU in 15 s: a fifth of a CPU
    rt.working_set[web.id] = 60_000_000
    figures = sampler.sample([ref(web)])

    assert figures == {(web.pod, "main"): ContainerUsage(200.0, 60_000_000, rt.now, 15.0)}
    assert sampler.latest == figures


def test_containers_not_given_are_forgotten(rt: MemoryRuntime, sampler: UsageSampler) -> None:
    web, db = start(rt, "web-1"), start(rt, "db-1")
    sampler.sample([ref(web), ref(db)])
    rt.now += 15
    assert set(sampler.sample([ref(web)])) == {(web.pod, "main")}

    rt.now += 15
    rt.cpu_ns[db.id] = 15_000_000_000
    # Its reading of two passes ago is gone: a rate over it would span a time it was not watched.
    assert set(sampler.sample([ref(web), ref(db)])) == {(web.pod, "main")}
    rt.now += 15
    assert set(sampler.sample([ref(web), ref(db)])) == {(web.pod, "main"), (db.pod, "main")}


def test_a_gone_container_is_left_out_and_the_others_measured(
    rt: MemoryRuntime, sampler: UsageSampler
) -> None:
    web, db = start(rt, "web-1"), start(rt, "db-1")
    sampler.sample([ref(web), ref(db)])
    rt.remove(db.id, 0)
    rt.now += 15

    assert set(sampler.sample([ref(web), ref(db)])) == {(web.pod, "main")}
    assert rt.usage(db.id) is None


def test_a_container_started_again_starts_over(rt: MemoryRuntime, sampler: UsageSampler) -> None:
    first = start(rt, "web-1")
    rt.cpu_ns[first.id] = 40_000_000_000
    sampler.sample([ref(first)])
    rt.remove(first.id, 0)
    again = start(rt, "web-1")
    rt.now += 15
    rt.cpu_ns[again.id] = 1_000_000_000

    assert sampler.sample([ref(again)]) == {}
    rt.now += 15
    rt.cpu_ns[again.id] += 1_500_000_000
    assert sampler.sample([ref(again)])[(again.pod, "main")].cpu_milli == pytest.approx(100.0)


def test_an_unreachable_engine_gives_no_figures_and_keeps_the_readings(
    rt: MemoryRuntime, sampler: UsageSampler
) -> None:
    web = start(rt, "web-1")
    sampler.sample([ref(web)])
    rt.down, rt.now = True, rt.now + 15
    assert sampler.sample([ref(web)]) == {}

    rt.down, rt.now = False, rt.now + 15
    rt.cpu_ns[web.id] = 3_000_000_000
    assert sampler.sample([ref(web)]) == {(web.pod, "main"): ContainerUsage(100.0, 0, rt.now, 30.0)}


def test_poll_measures_in_the_background_once_per_interval(rt: MemoryRuntime, sampler: UsageSampler) -> None:
    web = start(rt, "web-1")
    assert sampler.poll([ref(web)]) == {}
    assert sampler.wait(5)
    rt.now += 10
    rt.cpu_ns[web.id] = 5_000_000_000
    assert not sampler.due()
    assert sampler.poll([ref(web)]) == {}
    assert sampler.wait(5)
    assert sampler.latest == {}  # no pass was due: still one reading

    rt.now += 5
    sampler.poll([ref(web)])
    assert sampler.wait(5)
    assert sampler.latest[(web.pod, "main")].cpu_milli == pytest.approx(5_000 / 15)


def _stats(memory: dict[str, Any]) -> dict[str, Any]:
    return {
        "read": "2025-03-01T10:00:00.123456789Z",
        "cpu_stats": {"cpu_usage": {"total_usage": 123_000_000}},
        "memory_stats": memory,
    }


def test_the_working_set_is_use_less_inactive_file_pages_under_cgroup_v1_and_v2() -> None:
    v1 = _stats({"usage": 10_000, "stats": {"inactive_file": 500, "total_inactive_file": 3_000}})
    v2 = _stats({"usage": 10_000, "stats": {"inactive_file": 4_000, "anon": 6_000}})
    assert usage_from_stats(v1) == UsageSample(123_000_000, 1740823200.123456, 7_000)
    assert usage_from_stats(v2) == UsageSample(123_000_000, 1740823200.123456, 6_000)
    assert usage_from_stats(_stats({"usage": 100, "stats": {"inactive_file": 300}})) == UsageSample(
        123_000_000, 1740823200.123456, 0
    )


def test_a_container_that_is_not_running_has_no_reading() -> None:
    stopped = {
        "read": "0001-01-01T00:00:00Z",
        "cpu_stats": {"cpu_usage": {"total_usage": 0}},
        "memory_stats": {},
    }
    assert usage_from_stats(stopped) is None


@pytest.fixture
def docker_runtime() -> Iterator[tuple[DockerRuntime, NodeName]]:
    require(docker_available(), "a running Docker engine")
    build_image()
    node = NodeName("usage-" + uuid.uuid4().hex[:6])
    runtime = DockerRuntime()
    try:
        yield runtime, node
    finally:
        for c in runtime.list(node):
            runtime.remove(c.id, 0)


@pytest.mark.docker
def test_real_containers_are_measured_as_kubelet_would(
    docker_runtime: tuple[DockerRuntime, NodeName],
) -> None:
    """A container burning CPU under a limit of half a CPU uses about 500 millicores, an idle
    one next to nothing; both have a working set."""
    docker, node = docker_runtime
    owner = ObjectKey("Deployment", "default", "usage")

    def run(name: str, command: tuple[str, ...], **limits: Any) -> ContainerInfo:
        pod = Pod(
            "default", PodName(name), owner, "h", pod_spec(image=IMAGE, command=command, **limits), node=node
        )
        return docker.run(node, pod, [])

    burner = run("burner", ("sh", "-c", "while :; do :; done"), cpu_limit_milli=500)
    idle = run("idle", ("sleep", "300"))
    assert docker.client.api.inspect_container(burner.id)["HostConfig"]["NanoCpus"] == 500_000_000

    sampler = UsageSampler(docker, interval=0)
    try:
        refs = [(burner.pod, "main", burner.id), (idle.pod, "main", idle.id)]
        assert sampler.sample(refs) == {}
        time.sleep(3)
        figures = sampler.sample(refs)
    finally:
        sampler.close()

    burning, resting = figures[(burner.pod, "main")], figures[(idle.pod, "main")]
    assert 300 <= burning.cpu_milli <= 600, burning
    assert resting.cpu_milli < 50, resting
    assert burning.memory_bytes > 0 and resting.memory_bytes > 0
    assert burning.window >= 2 and abs(burning.at - time.time()) < 60

    docker.remove(idle.id, 0)
    assert docker.usage(idle.id) is None  # gone: no reading, no error

"""Pods of several containers on a node: an infra container holds the pod's network, init
containers run one at a time to success, sidecars run beside the app, volumes are shared,
and the downward API tells each container about its pod (with an in-memory runtime)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gitops.agents.agent import Agent, AgentConfig
from gitops.agents.plan import BACKOFF_START
from gitops.model import (
    Container,
    MountedFile,
    NodeName,
    ObjectKey,
    Pod,
    PodName,
    PodSpec,
    Volume,
    VolumeMount,
)
from tests.agents.fakes import MemoryRuntime

NODE = NodeName("n1")
WORK = VolumeMount("work", "/work")


def shop(*, restart_policy: str = "Always", init_image: str = "web:1") -> Pod:
    spec = PodSpec(
        containers=(
            Container(
                "app",
                "web:1",
                mounts=(WORK,),
                field_env=(("POD_IP", "status.podIP"), ("ME", "metadata.name")),
            ),
            Container("metrics", "web:2", mounts=(VolumeMount("work", "/data", read_only=True),)),
        ),
        init_containers=(
            Container("fetch", init_image, mounts=(WORK,)),
            Container("shipper", "web:1", restart_policy="Always"),
        ),
        volumes=(Volume("work"),),
        restart_policy=restart_policy,  # type: ignore[arg-type]
    )
    return Pod(
        "default",
        PodName("shop-1"),
        ObjectKey("Deployment", "default", "shop"),
        "h1",
        spec,
        labels=(("app", "shop"),),
        node=NODE,
        created_at=5.0,
    )


def agent(tmp_path: Path, rt: MemoryRuntime) -> Agent:
    config = AgentConfig(
        iptables="/nonexistent/iptables",
        server="http://127.0.0.1:9",
        node=NODE,
        join_token="t",
        state_dir=tmp_path,
    )
    return Agent(config, rt, clock=lambda: rt.now)


def started(rt: MemoryRuntime) -> list[str]:
    return [line.removeprefix("run default/shop-1") for line in rt.log if line.startswith("run ")]


def exit_container(rt: MemoryRuntime, name: str, code: int) -> None:
    for cid, (node, info) in rt.containers.items():
        if info.container == name and info.running:
            rt.containers[cid] = (
                node,
                dataclasses.replace(info, running=False, exit_code=code, finished_at=rt.now),
            )


def step(a: Agent, rt: MemoryRuntime, pod: Pod) -> None:
    a.converge([pod], rt.list(NODE))


def test_the_network_container_comes_first_then_init_containers_in_order_then_the_app(tmp_path: Path) -> None:
    rt, p = MemoryRuntime(), shop()
    a = agent(tmp_path, rt)
    step(a, rt, p)
    assert started(rt) == ["/POD"]
    step(a, rt, p)
    assert started(rt) == ["/POD", "/fetch"]  # one init container at a time
    (status,) = a._statuses(rt.list(NODE), {p.id: p})
    assert (status.phase, status.reason) == ("Pending", "Init:0/2")
    step(a, rt, p)
    assert started(rt) == ["/POD", "/fetch"]  # still running: the next waits
    exit_container(rt, "fetch", 0)
    step(a, rt, p)
    assert started(rt)[-1] == "/shipper"  # the sidecar starts before the app
    step(a, rt, p)
    assert started(rt)[-2:] == ["/app", "/metrics"]
    step(a, rt, p)
    assert len(started(rt)) == 5  # converged: nothing more
    (status,) = a._statuses(rt.list(NODE), {p.id: p})
    assert (status.phase, status.ready, status.pod_ip) == ("Running", True, "172.17.0.9")
    assert [(c.name, c.state, c.init) for c in status.containers] == [
        ("fetch", "terminated", True),
        ("shipper", "running", True),
        ("app", "running", False),
        ("metrics", "running", False),
    ]
    assert status.containers[0].reason == "Completed"


def test_app_containers_share_the_network_of_the_infra_container_and_learn_their_pod(tmp_path: Path) -> None:
    rt, p = MemoryRuntime(), shop()
    a = agent(tmp_path, rt)
    for _ in range(5):
        step(a, rt, p)
        exit_container(rt, "fetch", 0)
    infra = next(info for _, info in rt.containers.values() if info.container == "POD")
    assert rt.networks_of[p.id] == f"container:{infra.id}"
    env = rt.env_of[(p.id, "app")]
    assert (env["POD_IP"], env["ME"]) == ("172.17.0.9", "shop-1")
    volumes = {m.target: m for m in rt.mounts_of[(p.id, "metrics")] if m.volume}
    assert volumes["/data"].read_only
    # One volume for the pod, shared by its containers.
    assert volumes["/data"].source == next(m.source for m in rt.mounts_of[(p.id, "app")] if m.volume)
    assert set(rt.volumes) == {volumes["/data"].source}


def test_a_failing_init_container_is_retried_with_backoff_and_blocks_the_app(tmp_path: Path) -> None:
    rt, p = MemoryRuntime(), shop()
    a = agent(tmp_path, rt)
    step(a, rt, p)
    step(a, rt, p)
    exit_container(rt, "fetch", 2)
    step(a, rt, p)
    (status,) = a._statuses(rt.list(NODE), {p.id: p})
    assert status.phase == "Pending"
    assert status.reason.startswith("Init:0/2 (init container fetch: CrashLoopBackOff: exited with code 2")
    assert started(rt) == ["/POD", "/fetch"]
    rt.now += BACKOFF_START + 1
    step(a, rt, p)
    assert started(rt) == ["/POD", "/fetch", "/fetch #1"]


def test_with_restart_policy_never_a_failed_init_container_fails_the_pod(tmp_path: Path) -> None:
    rt, p = MemoryRuntime(), shop(restart_policy="Never")
    a = agent(tmp_path, rt)
    step(a, rt, p)
    step(a, rt, p)
    exit_container(rt, "fetch", 1)
    rt.now += 1000
    step(a, rt, p)
    assert started(rt) == ["/POD", "/fetch"]
    (status,) = a._statuses(rt.list(NODE), {p.id: p})
    assert (status.phase, status.exit_code) == ("Failed", 1)
    assert status.reason == "Init:Error: init container fetch: exited with code 1"


def test_a_lost_network_container_restarts_the_whole_pod_init_containers_first(tmp_path: Path) -> None:
    rt, p = MemoryRuntime(), shop()
    a = agent(tmp_path, rt)
    for _ in range(5):
        step(a, rt, p)
        exit_container(rt, "fetch", 0)
    exit_container(rt, "POD", 137)
    actions_before = len(rt.log)
    step(a, rt, p)
    a.wait_removals()
    assert "run default/shop-1/POD #1" in rt.log[actions_before:]
    assert {info.container for _, info in rt.containers.values()} == {"POD"}


def test_a_terminating_pod_stops_its_app_containers_before_its_sidecars_and_network(tmp_path: Path) -> None:
    rt, p = MemoryRuntime(), shop()
    a = agent(tmp_path, rt)
    for _ in range(5):
        step(a, rt, p)
        exit_container(rt, "fetch", 0)
    leaving = dataclasses.replace(p, terminating_at=rt.now)
    a.converge([leaving], rt.list(NODE))  # the drain starts
    rt.now += 5
    a.converge([leaving], rt.list(NODE))
    a.wait_removals()
    assert {info.container for _, info in rt.containers.values()} == {"POD", "shipper", "fetch"}
    a.converge([leaving], rt.list(NODE))
    a.wait_removals()
    assert rt.containers == {}
    a.converge([leaving], rt.list(NODE))
    assert a._stopped == [p.id]


def test_the_volumes_of_a_pod_gone_from_the_node_are_removed(tmp_path: Path) -> None:
    rt, p = MemoryRuntime(), shop()
    a = agent(tmp_path, rt)
    for _ in range(5):
        step(a, rt, p)
        exit_container(rt, "fetch", 0)
    assert rt.volumes
    a.converge([], rt.list(NODE))
    a.wait_removals()
    a.converge([], rt.list(NODE))
    assert rt.volumes == {}


def test_downward_api_files_are_written_with_the_pod_s_own_values(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    spec = PodSpec(
        containers=(
            Container(
                "app",
                "web:1",
                files=(
                    MountedFile("/info/labels", b"", field="metadata.labels"),
                    MountedFile("/info/name", b"", field="metadata.name"),
                ),
            ),
        )
    )
    p = Pod(
        "default",
        PodName("one"),
        ObjectKey("Deployment", "default", "one"),
        "h",
        spec,
        labels=(("app", "one"), ("tier", "a b")),
        node=NODE,
    )
    a = agent(tmp_path, rt)
    a.converge([p], [])
    files = {inside: Path(host).read_text() for host, inside in rt.mounts[p.id] if inside.startswith("/info")}
    assert files == {"/info/labels": 'app="one"\ntier="a b"', "/info/name": "one"}


def test_a_claim_s_volume_outlives_its_pods_and_goes_when_the_control_plane_forgets_the_claim(
    tmp_path: Path,
) -> None:
    rt = MemoryRuntime()
    spec = PodSpec(
        containers=(Container("db", "web:1", mounts=(VolumeMount("data", "/var/lib/db"),)),),
        volumes=(Volume("data", claim="default/data"),),
    )
    p = Pod("default", PodName("db-1"), ObjectKey("Deployment", "default", "db"), "h", spec, node=NODE)
    a = agent(tmp_path, rt)
    a._claims = {"default/data"}
    a.converge([p], [])
    (mount,) = [m for m in rt.mounts_of[(p.id, "db")] if m.volume]
    assert (mount.source, mount.target) == ("claim-default/data", "/var/lib/db")
    a.converge([], rt.list(NODE))  # the pod is gone; the claim is not
    a.wait_removals()
    a.converge([], rt.list(NODE))
    assert rt.claim_volumes == {"default/data"}
    a._claims, a._claims_changed = set(), True  # the claim left git
    a.converge([], rt.list(NODE))
    assert rt.claim_volumes == set()


def test_claim_volumes_are_kept_while_the_control_plane_is_not_authoritative(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    rt.claim_volumes.add("default/data")
    a = agent(tmp_path, rt)
    a._claims = None  # a control plane that has not read its sources yet
    a.converge([], [])
    assert rt.claim_volumes == {"default/data"}

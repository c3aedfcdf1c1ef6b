"""Each node holds a pod subnet of the cluster's range: given at registration, kept, freed on delete."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gitops.api.app import create_app
from gitops.controller import reconcile_once
from gitops.model import ContainerUsage, Node, NodeName, PodUsage, Revision
from gitops.store import PodRangeExhausted, Store
from tests.conftest import wait_for
from tests.planner.factories import deployment


def node(name: str, address: str = "192.0.2.10") -> Node:
    return Node(NodeName(name), address, 4000, 2**32)


def test_subnets_are_given_in_order_kept_across_registrations_and_freed_when_a_node_is_deleted(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}", cluster_cidr="10.244.0.0/16")
    assert store.register_node(node("a"), "t1", 1.0) == "10.244.0.0/24"
    assert store.register_node(node("b"), "t2", 1.0) == "10.244.1.0/24"
    assert store.register_node(node("a"), "t3", 2.0, presented="t1") == "10.244.0.0/24"
    assert store.register_node(node("a"), "t4", 100.0) == "10.244.0.0/24"  # taken over after silence
    assert {r.node.name: r.node.pod_cidr for r in store.nodes(2.0)} == {
        "a": "10.244.0.0/24",
        "b": "10.244.1.0/24",
    }
    store.delete_node("a", 3.0)
    # The next subnet after the last given, as Kubernetes' range allocator does; the freed
    # one is given again once the cursor comes round.
    assert store.register_node(node("c"), "t5", 3.0) == "10.244.2.0/24"
    with pytest.raises(KeyError):
        store.delete_node("a", 4.0)


def test_a_freed_subnet_is_given_again_once_the_range_comes_round(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}", cluster_cidr="10.244.0.0/22")
    given = [store.register_node(node(name), "t", 1.0) for name in "abcd"]
    assert given == ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]
    store.delete_node("b", 2.0)
    assert store.register_node(node("e"), "t", 2.0) == "10.244.1.0/24"
    with pytest.raises(PodRangeExhausted):
        store.register_node(node("f"), "t", 2.0)


def test_a_full_range_refuses_the_next_node_saying_what_to_do(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}", cluster_cidr="10.244.0.0/23")
    store.register_node(node("a"), "t", 1.0)
    store.register_node(node("b"), "t", 1.0)
    with pytest.raises(PodRangeExhausted, match=r"10\.244\.0\.0/23 holds 2 node subnets.*gitops node delete"):
        store.register_node(node("c"), "t", 1.0)
    assert [r.node.name for r in store.nodes(1.0)] == ["a", "b"]


def test_ranges_that_overlap_or_do_not_fit_are_refused_at_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with pytest.raises(ValueError, match="overlaps --service-cidr"):
        Store(url, service_cidr="10.0.0.0/8", cluster_cidr="10.244.0.0/16")
    with pytest.raises(ValueError, match="/24, which must lie inside it"):
        Store(url, cluster_cidr="10.244.0.0/25")


def test_a_deleted_nodes_pods_are_deleted_and_placed_again_elsewhere(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.apply_revision(Revision("git:x", "1" * 40), [deployment(replicas=2)], [], 1.0)
    store.register_node(node("a"), "t", 1.0)
    reconcile_once(store, now=2.0)
    assert {p.node for p in store.pods()} == {"a"}
    pod = store.pods()[0].id
    store.record_usage({"a": [PodUsage(pod, 2.0, (ContainerUsage("main", 5.0, 1024),))]})
    assert store.delete_node("a", 3.0) == 2
    assert store.usage() == {}  # what its agent measured goes with it
    store.register_node(node("b"), "t", 3.0)
    reconcile_once(store, now=4.0)
    assert {p.node for p in store.pods()} == {"b"} and len(store.pods()) == 2
    assert any(e.reason == "NodeDeleted" and "2 pod(s)" in e.message for e in store.events())


def test_agents_learn_their_subnet_and_route_every_other_nodes_subnet(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    client = TestClient(create_app(store, join_token="j", clock=lambda: 100.0, endpoints_cache_seconds=0))
    tokens = {}
    for name, address in (("a", "192.0.2.10"), ("b", "192.0.2.11"), ("c", "192.0.2.12")):
        body = {"node": {"name": name, "address": address, "cpu_milli": 1000, "memory_bytes": 2**30}}
        reply = client.post("/agent/v1/register", json=body, headers={"X-Gitops-Join-Token": "j"}).json()
        tokens[name] = reply["token"]
        assert reply["cluster_cidr"] == "10.244.0.0/16"
    assert reply["pod_cidr"] == "10.244.2.0/24"
    sync = client.post(
        "/agent/v1/nodes/a/sync", json={}, headers={"Authorization": f"Bearer {tokens['a']}"}
    ).json()
    assert sync["routes"] == [["10.244.1.0/24", "192.0.2.11"], ["10.244.2.0/24", "192.0.2.12"]]
    store.delete_node("c", 101.0)

    def routes() -> list[list[str]]:
        auth = {"Authorization": f"Bearer {tokens['a']}"}
        return list(client.post("/agent/v1/nodes/a/sync", json={}, headers=auth).json()["routes"])

    # Routes alone move at most once a second (`SharedEndpoints.routes_every`).
    wait_for(lambda: routes() == [["10.244.1.0/24", "192.0.2.11"]], timeout=5, what="c's route gone")


def test_a_rebuilt_store_gives_nodes_back_the_subnets_their_pods_use(tmp_path: Path) -> None:
    """A control plane that lost its database hears from its agents in any order; each asks for
    the subnet its pods already use, so no pod has to move (a subnet held by another node, or
    outside the range, is not given)."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}", cluster_cidr="10.244.0.0/16")
    assert store.register_node(node("b"), "t", 1.0, subnet_hint="10.244.1.0/24") == "10.244.1.0/24"
    assert store.register_node(node("a"), "t", 1.0, subnet_hint="10.244.0.0/24") == "10.244.0.0/24"
    assert store.register_node(node("c"), "t", 1.0, subnet_hint="10.244.1.0/24") == "10.244.2.0/24"
    assert store.register_node(node("d"), "t", 1.0, subnet_hint="10.99.0.0/24") == "10.244.3.0/24"
    assert store.register_node(node("e"), "t", 1.0, subnet_hint="10.244.8.0/23") == "10.244.4.0/24"

"""What the store gives each Service: a virtual IP unless headless or ExternalName, and node
ports for NodePort and LoadBalancer Services (asked for, or picked; kept while the port stays;
never one port for two Services, whichever source declared them)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitops.model import Manifest, ObjectKey, Revision
from gitops.store import Refused, Store
from tests.planner.factories import manifest


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        yield Store(f"sqlite:///{tmp_path / 'state.db'}")
        return
    yield Store(request.getfixturevalue("postgres_database"))


def rev(n: int, source: str = "git:a") -> Revision:
    return Revision(source=source, id=f"{n:040d}")


def svc(name: str, ports: list[dict[str, Any]] | None = None, **spec: Any) -> Manifest:
    body = {"selector": {"app": name}, "ports": ports or [{"name": "http", "port": 80}], **spec}
    return manifest("Service", name, spec=body)


def key(name: str) -> ObjectKey:
    return ObjectKey("Service", "default", name)


def test_headless_and_external_name_services_get_no_vip(store: Store) -> None:
    store.apply_revision(
        rev(1),
        [
            svc("web"),
            svc("peers", clusterIP="None"),
            svc("db", type="ExternalName", externalName="db.example.com"),
        ],
        [],
        now=1.0,
    )
    assert set(store.vips()) == {key("web")}


def test_a_service_turning_headless_gives_its_vip_back(store: Store) -> None:
    store.apply_revision(rev(1), [svc("web"), svc("db")], [], now=1.0)
    assert set(store.vips()) == {key("web"), key("db")}
    store.apply_revision(rev(2), [svc("web"), svc("db", clusterIP="None")], [], now=2.0)
    assert set(store.vips()) == {key("web")}
    store.apply_revision(
        rev(3), [svc("web"), svc("db", type="ExternalName", externalName="x.example")], [], 3.0
    )
    assert set(store.vips()) == {key("web")}


def test_node_ports_are_the_ones_asked_for_or_picked_in_the_range(store: Store) -> None:
    ports = [
        {"name": "http", "port": 80, "nodePort": 30080},
        {"name": "https", "port": 443},
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
    ]
    store.apply_revision(rev(1), [svc("web", ports, type="NodePort"), svc("api")], [], now=1.0)
    allocated = store.node_ports()
    assert set(allocated) == {key("web")}  # a ClusterIP Service has none
    web = allocated[key("web")]
    assert set(web) == {"80/TCP", "443/TCP", "53/UDP", "53/TCP"}
    assert web["80/TCP"] == 30080
    assert all(30000 <= n <= 32767 for n in web.values())
    assert len({web["80/TCP"], web["443/TCP"], web["53/UDP"]}) == 3
    assert web["53/TCP"] == web["53/UDP"]  # one port, both protocols: one node port, as Kubernetes does


def test_node_ports_are_deterministic_and_stable_while_the_port_stays(tmp_path: Path) -> None:
    ports = [{"name": "http", "port": 80}, {"name": "https", "port": 443}]
    first, second = Store(f"sqlite:///{tmp_path / 'a.db'}"), Store(f"sqlite:///{tmp_path / 'b.db'}")
    for s in (first, second):
        s.apply_revision(rev(1), [svc("web", ports, type="LoadBalancer")], [], now=1.0)
    assert first.node_ports() == second.node_ports()
    before = first.node_ports()[key("web")]
    # Another Service arrives, the Service changes type and loses a port: 80 keeps its node port.
    first.apply_revision(
        rev(2), [svc("web", ports[:1], type="NodePort"), svc("api", ports, type="NodePort")], [], now=2.0
    )
    assert first.node_ports()[key("web")] == {"80/TCP": before["80/TCP"]}
    first.apply_revision(rev(3), [svc("web", ports[:1]), svc("api", ports, type="NodePort")], [], now=3.0)
    assert key("web") not in first.node_ports()  # ClusterIP again: its node ports are free


def test_asking_for_another_node_port_moves_it(store: Store) -> None:
    store.apply_revision(rev(1), [svc("web", type="NodePort")], [], now=1.0)
    picked = store.node_ports()[key("web")]["80/TCP"]
    asked = 30000 if picked != 30000 else 30001
    store.apply_revision(
        rev(2), [svc("web", [{"name": "http", "port": 80, "nodePort": asked}], type="NodePort")], [], 2.0
    )
    assert store.node_ports()[key("web")] == {"80/TCP": asked}
    # Another Service may now ask for the one it left.
    other = svc("api", [{"name": "http", "port": 80, "nodePort": picked}], type="NodePort")
    store.apply_revision(
        rev(3),
        [svc("web", [{"name": "http", "port": 80, "nodePort": asked}], type="NodePort"), other],
        [],
        3.0,
    )
    assert store.node_ports()[key("api")] == {"80/TCP": picked}


def test_a_node_port_another_source_holds_refuses_the_revision_naming_both(store: Store) -> None:
    held = svc("web", [{"name": "http", "port": 80, "nodePort": 30080}], type="NodePort")
    store.apply_revision(rev(1, "git:a"), [held], [], now=1.0)
    clash = manifest(
        "Service",
        "api",
        namespace="shop",
        spec={"selector": {"app": "api"}, "ports": [{"port": 8080, "nodePort": 30080}], "type": "NodePort"},
    )
    with pytest.raises(Refused) as refused:
        store.apply_revision(rev(2, "git:b"), [manifest("Namespace", "shop"), clash], [], now=2.0)
    assert refused.value.errors == (
        "api.yaml:1:1: Service shop/api: nodePort 30080/TCP (port 8080/TCP) is already used by Service "
        "default/web (web.yaml:1:1, source git:a); a port on the nodes leads to one Service",
    )
    assert set(store.vips()) == {key("web")}  # nothing of the refused revision was applied
    # Once the first source lets it go (a Service keeps a picked node port: it must change type
    # or ask for another), the same revision applies.
    store.apply_revision(rev(3, "git:a"), [svc("web")], [], now=3.0)
    store.apply_revision(rev(2, "git:b"), [manifest("Namespace", "shop"), clash], [], now=4.0)
    assert store.node_ports()[ObjectKey("Service", "shop", "api")] == {"8080/TCP": 30080}


def test_a_load_balancer_port_is_taken_on_every_node_too(store: Store) -> None:
    store.apply_revision(
        rev(1, "git:a"), [svc("lb", [{"name": "http", "port": 30500}], type="LoadBalancer")], [], 1.0
    )
    clash = svc("web", [{"name": "http", "port": 80, "nodePort": 30500}], type="NodePort")
    with pytest.raises(Refused) as refused:
        store.apply_revision(rev(2, "git:b"), [clash], [], now=2.0)
    assert "nodePort 30500/TCP (port 80/TCP) is already used by Service default/lb" in refused.value.errors[0]
    assert "as its LoadBalancer port" in refused.value.errors[0]
    # A picked node port never lands on a LoadBalancer's port.
    ports = [{"name": f"p{i}", "port": 1000 + i} for i in range(40)]
    store.apply_revision(rev(3, "git:b"), [svc("many", ports, type="NodePort")], [], now=3.0)
    assert 30500 not in store.node_ports()[key("many")].values()


def test_an_auto_node_port_of_the_same_source_is_not_taken_over(store: Store) -> None:
    """As in Kubernetes, asking for a port another Service was given is refused, not moved:
    clients of that Service may be using it."""
    store.apply_revision(rev(1), [svc("web", type="NodePort")], [], now=1.0)
    picked = store.node_ports()[key("web")]["80/TCP"]
    asking = svc("api", [{"name": "http", "port": 80, "nodePort": picked}], type="NodePort")
    with pytest.raises(Refused, match=f"nodePort {picked}/TCP .* already used by Service default/web"):
        store.apply_revision(rev(2), [svc("web", type="NodePort"), asking], [], now=2.0)

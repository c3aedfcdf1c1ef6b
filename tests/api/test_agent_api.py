"""Agents register with the join token and then only see and report their own node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gitops.api.app import create_app
from gitops.controller import reconcile_once
from gitops.model import Revision
from gitops.store import Store
from gitops.store.tables import ClaimRow
from tests.planner.factories import deployment, secret

NODE = {"name": "n1", "address": "192.0.2.10", "cpu_milli": 4000, "memory_bytes": 2**32}
JOIN = {"X-Gitops-Join-Token": "join-me"}


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Store, TestClient]:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    store.apply_revision(
        Revision("git:x", "1" * 40),
        [secret("creds", token="hunter2"), deployment(replicas=2, env=env)],
        [],
        1.0,
    )
    return store, TestClient(create_app(store, join_token="join-me", clock=lambda: 100.0))


def register(client: TestClient, node: dict[str, object]) -> str:
    response = client.post("/agent/v1/register", json={"node": node}, headers=JOIN)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def test_registration_needs_the_join_token(setup: tuple[Store, TestClient]) -> None:
    _, client = setup
    response = client.post(
        "/agent/v1/register", json={"node": NODE}, headers={"X-Gitops-Join-Token": "wrong"}
    )
    assert response.status_code == 401


def test_a_node_token_works_only_for_its_node(setup: tuple[Store, TestClient]) -> None:
    _, client = setup
    t1 = register(client, NODE)
    register(client, {**NODE, "name": "n2", "address": "192.0.2.11"})
    ok = client.post(
        "/agent/v1/nodes/n1/sync", json={"statuses": []}, headers={"Authorization": f"Bearer {t1}"}
    )
    assert ok.status_code == 200
    other = client.post(
        "/agent/v1/nodes/n2/sync", json={"statuses": []}, headers={"Authorization": f"Bearer {t1}"}
    )
    assert other.status_code == 401
    missing = client.post("/agent/v1/nodes/n1/sync", json={"statuses": []})
    assert missing.status_code == 401


def test_a_node_receives_only_its_pods_with_resolved_secrets(setup: tuple[Store, TestClient]) -> None:
    store, client = setup
    t1 = register(client, NODE)
    reconcile_once(store, now=100.0)
    pods = client.post(
        "/agent/v1/nodes/n1/sync", json={"statuses": []}, headers={"Authorization": f"Bearer {t1}"}
    ).json()["pods"]
    assert len(pods) == 2
    assert all(p["node"] == "n1" for p in pods)
    assert pods[0]["spec"]["containers"][0]["env"] == [["TOKEN", "hunter2"]]


def test_the_read_api_never_shows_secret_values(setup: tuple[Store, TestClient]) -> None:
    store, client = setup
    register(client, NODE)
    reconcile_once(store, now=100.0)
    for path in (
        "/api/v1/status",
        "/api/v1/pods",
        "/api/v1/services",
        "/api/v1/events",
        "/api/v1/nodes",
        "/api/v1/revisions",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        text = json.dumps(response.json())
        assert "hunter2" not in text and "aHVudGVyMg" not in text, path


def test_log_tails_in_the_read_api_have_secret_values_redacted(setup: tuple[Store, TestClient]) -> None:
    store, client = setup
    token = register(client, NODE)
    reconcile_once(store, now=100.0)
    pod = store.pods()[0]
    status = {
        "pod": pod.id,
        "phase": "Running",
        "ready": False,
        "reason": "CrashLoopBackOff",
        "pod_ip": "",
        "host_ports": [],
        "restarts": 1,
        "exit_code": 1,
        "container_id": "c",
        "last_log": "token=hunter2\nbye",
    }
    client.post(
        "/agent/v1/nodes/n1/sync", json={"statuses": [status]}, headers={"Authorization": f"Bearer {token}"}
    )
    shown = {p["id"]: p for p in client.get("/api/v1/pods").json()}[pod.id]
    assert shown["last_log"] == "token=[redacted]\nbye"


# --- every request is validated at the border ----------------------------------------------


def test_an_agent_with_a_garbage_address_is_refused_naming_the_field(setup: tuple[Store, TestClient]) -> None:
    store, client = setup
    for address in ("garbage; rm -rf /", "0.0.0.0", "10.0.0.300", "fe80::1", ""):
        response = client.post(
            "/agent/v1/register", json={"node": {**NODE, "address": address}}, headers=JOIN
        )
        assert response.status_code == 422, address
        assert response.json()["detail"].startswith("node.address: "), response.json()
    assert store.nodes(now=100.0) == []


def test_a_malformed_report_is_refused_and_writes_nothing(setup: tuple[Store, TestClient]) -> None:
    store, client = setup
    token = register(client, NODE)
    reconcile_once(store, now=100.0)
    pod = store.pods()[0]
    good = {"pod": pod.id, "phase": "Running", "ready": True, "pod_ip": "172.17.0.5"}
    auth = {"Authorization": f"Bearer {token}"}
    bad_reports = {
        "statuses.0.pod_ip": {**good, "pod_ip": "not an ip"},
        "statuses.0.phase": {**good, "phase": "Exploded"},
        "statuses.0.host_ports.0.0": {**good, "host_ports": [[0, "TCP", 80]]},
        "statuses.0.pod": {**good, "pod": "no-namespace"},
        "statuses.0.surprise": {**good, "surprise": 1},
    }
    for field, status in bad_reports.items():
        response = client.post("/agent/v1/nodes/n1/sync", json={"statuses": [status]}, headers=auth)
        assert response.status_code == 422, field
        assert response.json()["detail"].startswith(field + ":"), response.json()
    assert store.pods()[0].phase == "Pending"
    ok = client.post("/agent/v1/nodes/n1/sync", json={"statuses": [good]}, headers=auth)
    assert ok.status_code == 200 and store.pods()[0].phase == "Running"


def test_the_agent_requests_document_themselves_in_openapi(setup: tuple[Store, TestClient]) -> None:
    _, client = setup
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"RegisterRequest", "NodeModel", "SyncRequest", "PodStatusModel", "SyncReply"} <= set(schemas)
    assert set(schemas["NodeModel"]["required"]) == {"name", "address", "cpu_milli", "memory_bytes"}
    assert schemas["PodStatusModel"]["properties"]["phase"]["enum"] == [
        "Pending",
        "Running",
        "Succeeded",
        "Failed",
        "Unknown",
    ]
    body = spec["paths"]["/agent/v1/nodes/{name}/sync"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/SyncRequest")


# --- the join token cannot take over a live node ------------------------------------------


def test_the_join_token_cannot_take_a_ready_nodes_name(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    store.apply_revision(
        Revision("git:x", "1" * 40),
        [secret("creds", token="hunter2"), deployment(replicas=2, env=env)],
        [],
        1.0,
    )
    clock = {"now": 100.0}
    client = TestClient(create_app(store, join_token="join-me", clock=lambda: clock["now"]))
    owner = register(client, NODE)
    reconcile_once(store, now=100.0)
    impostor = {**NODE, "address": "203.0.113.66"}

    clock["now"] = 130.0  # within the 40 s grace: n1 is Ready
    response = client.post("/agent/v1/register", json={"node": impostor}, headers=JOIN)
    assert response.status_code == 409
    assert "Ready" in response.json()["detail"] and "current token" in response.json()["detail"]
    (record,) = store.nodes(now=130.0)
    assert record.node.address == NODE["address"]
    sync = client.post("/agent/v1/nodes/n1/sync", json={}, headers={"Authorization": f"Bearer {owner}"})
    assert sync.status_code == 200, "the owner's token still works"

    # The node itself, restarted, presents its current token and gets its name back.
    again = client.post(
        "/agent/v1/register",
        json={"node": NODE},
        headers={**JOIN, "Authorization": f"Bearer {owner}"},
    )
    assert again.status_code == 200
    fresh = again.json()["token"]
    old = client.post("/agent/v1/nodes/n1/sync", json={}, headers={"Authorization": f"Bearer {owner}"})
    assert old.status_code == 401

    # Once NotReady past its grace, the name is free: a replacement machine can take it.
    clock["now"] = 200.0
    taken = client.post("/agent/v1/register", json={"node": impostor}, headers=JOIN)
    assert taken.status_code == 200
    assert (
        client.post(
            "/agent/v1/nodes/n1/sync", json={}, headers={"Authorization": f"Bearer {fresh}"}
        ).status_code
        == 401
    )
    assert any(e.reason == "NodeReplaced" for e in store.events())


def test_node_tokens_are_stored_hashed(setup: tuple[Store, TestClient]) -> None:
    store, client = setup
    token = register(client, NODE)
    with store.engine.connect() as conn:
        rows = [tuple(r) for r in conn.exec_driver_sql("SELECT * FROM nodes")]
    assert token not in repr(rows)


# --- the sync route: off the event loop, only what changed wakes the controller -------------


def test_only_a_report_that_changes_a_pod_wakes_the_controller(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.apply_revision(Revision("git:x", "1" * 40), [deployment(replicas=2)], [], 1.0)
    woken: list[int] = []
    client = TestClient(
        create_app(store, join_token="join-me", clock=lambda: 100.0, on_report=lambda: woken.append(1))
    )
    token = register(client, NODE)
    reconcile_once(store, now=100.0)
    woken.clear()
    auth = {"Authorization": f"Bearer {token}"}
    statuses = [
        {"pod": p.id, "phase": "Running", "ready": True, "pod_ip": "172.17.0.5"} for p in store.pods()
    ]
    for _ in range(3):
        assert (
            client.post("/agent/v1/nodes/n1/sync", json={"statuses": statuses}, headers=auth).status_code
            == 200
        )
    assert len(woken) == 1  # the first report changed two pods; the same report again changes nothing
    statuses[0] = {**statuses[0], "ready": False, "reason": "Readiness probe failed"}
    client.post("/agent/v1/nodes/n1/sync", json={"statuses": statuses}, headers=auth)
    assert len(woken) == 2


def test_a_node_address_must_be_reachable_by_other_nodes(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}", service_cidr="10.243.0.0/16")
    beyond = TestClient(create_app(store, join_token="join-me", loopback_nodes=False))
    for address, why in (
        ("169.254.169.254", "link-local"),
        ("10.243.0.7", "inside the service range 10.243.0.0/16"),
        ("127.0.1.1", "loopback"),
        ("240.0.0.1", "reserved"),
    ):
        response = beyond.post(
            "/agent/v1/register", json={"node": {**NODE, "address": address}}, headers=JOIN
        )
        assert response.status_code == 422, address
        assert response.json()["detail"].startswith("node.address: ") and why in response.json()["detail"]
    same_machine = TestClient(create_app(store, join_token="join-me", loopback_nodes=True))
    assert register(same_machine, {**NODE, "address": "127.0.1.1"})


def test_agent_request_bodies_are_bounded(setup: tuple[Store, TestClient]) -> None:
    _, client = setup
    huge = b'{"node": "' + b"x" * (65 * 2**10) + b'"}'
    headers = {**JOIN, "Content-Type": "application/json"}
    assert client.post("/agent/v1/register", content=huge, headers=headers).status_code == 413
    # Without credentials nothing is read at all: 401 before the body.
    assert client.post("/agent/v1/register", content=huge).status_code == 401
    assert client.post("/agent/v1/nodes/n1/sync", content=huge).status_code == 401


def test_a_node_is_told_the_claims_whose_volumes_it_keeps(setup: tuple[Store, TestClient]) -> None:
    store, client = setup
    t1 = register(client, NODE)
    register(client, {**NODE, "name": "n2", "address": "192.0.2.11"})
    with store.session() as s:
        s.add(ClaimRow(id="default/data", node="n1", bound_at=1.0, released=False))
        s.add(ClaimRow(id="default/kept", node="n1", bound_at=1.0, released=True))
        s.add(ClaimRow(id="default/elsewhere", node="n2", bound_at=1.0, released=False))
    reply = client.post(
        "/agent/v1/nodes/n1/sync", json={"statuses": []}, headers={"Authorization": f"Bearer {t1}"}
    ).json()
    assert reply["claims"] == ["default/data", "default/kept"]


def test_usage_an_agent_measured_is_stored_and_exported_in_metrics(setup: tuple[Store, TestClient]) -> None:
    """What cAdvisor gives kubelet: each container's CPU (millicores) and memory working set."""
    store, client = setup
    token = register(
        client, {"name": "n1", "address": "192.0.2.10", "cpu_milli": 4000, "memory_bytes": 2**32}
    )
    usage = [
        {
            "pod": "default/web-1",
            "at": 99.0,
            "window": 15.0,
            "containers": [{"container": "main", "cpu_milli": 250.5, "memory_bytes": 2**20}],
        }
    ]
    auth = {"Authorization": f"Bearer {token}"}
    assert client.post("/agent/v1/nodes/n1/sync", json={"usage": usage}, headers=auth).status_code == 200
    # Kept in memory, and served from it; no autoscaler scales the pod: not written.
    client.app.state.agent_reports.flush()  # type: ignore[attr-defined]
    assert store.usage() == {}
    metrics = client.get("/metrics/resource").text
    labels = '{container="main",namespace="default",pod="web-1"}'
    assert f"gitops_container_cpu_usage_millicores{labels} 250.5" in metrics
    assert f"gitops_container_memory_working_set_bytes{labels} 1.048576e+06" in metrics
    # Apart from the control plane's own figures: a scrape of those reads no pod's use.
    assert "gitops_container_cpu_usage_millicores" not in client.get("/metrics").text
    # A report without usage keeps the last figures; a negative figure is refused naming the field.
    assert client.post("/agent/v1/nodes/n1/sync", json={}, headers=auth).status_code == 200
    assert client.get("/metrics/resource").text.count("gitops_container_cpu_usage_millicores{") == 1
    usage[0]["containers"][0]["cpu_milli"] = -1  # type: ignore[index]
    refused = client.post("/agent/v1/nodes/n1/sync", json={"usage": usage}, headers=auth)
    assert refused.status_code == 422 and "usage.0.containers.0.cpu_milli" in refused.text


def test_measurements_sent_as_rows_are_kept_as_the_same_measurements_sent_per_pod(
    setup: tuple[Store, TestClient],
) -> None:
    """Agents of this release send a row per container (`measured`); the control plane
    exports what it would from the same figures per pod (`usage`, older agents), and names
    the row and field of a bad one."""
    _, client = setup
    auth = {"Authorization": f"Bearer {register(client, NODE)}"}

    def sync(body: dict[str, Any]) -> Any:
        return client.post("/agent/v1/nodes/n1/sync", json=body, headers=auth)

    rows = [
        ["default/web-1", 98.0, 15.0, "main", 250.5, 2**20],
        ["default/web-1", 99.0, 14.0, "sidecar", 1.25, 3 * 2**20],
        ["default/db-0", 97.0, 15.0, "main", 10.0, 2**30],
    ]
    assert sync({"measured": rows}).status_code == 200
    from_rows = client.get("/metrics/resource").text
    usage = [
        {
            "pod": "default/web-1",
            "at": 99.0,
            "window": 14.0,
            "containers": [
                {"container": "main", "cpu_milli": 250.5, "memory_bytes": 2**20},
                {"container": "sidecar", "cpu_milli": 1.25, "memory_bytes": 3 * 2**20},
            ],
        },
        {
            "pod": "default/db-0",
            "at": 97.0,
            "window": 15.0,
            "containers": [{"container": "main", "cpu_milli": 10.0, "memory_bytes": 2**30}],
        },
    ]
    assert sync({"usage": usage}).status_code == 200
    assert client.get("/metrics/resource").text == from_rows
    labels = '{container="sidecar",namespace="default",pod="web-1"}'
    assert f"gitops_container_cpu_usage_millicores{labels} 1.25" in from_rows
    assert from_rows.count("gitops_container_cpu_usage_millicores{") == 3

    bad = [[*rows[0][:4], -1, 2**20]]
    refused = sync({"measured": bad})
    assert refused.status_code == 422 and "measured.0.4" in refused.text
    refused = sync({"measured": [["Default/web-1", *rows[0][1:]]]})
    assert refused.status_code == 422 and "measured.0.0" in refused.text
    refused = sync({"measured": [*rows, rows[1]]})
    assert refused.status_code == 422
    assert "row 3: container sidecar of pod default/web-1 is measured twice" in refused.text
    refused = sync({"measured": rows, "usage": usage})
    assert refused.status_code == 422 and "not both" in refused.text
    assert client.get("/metrics/resource").text == from_rows  # what was kept stands

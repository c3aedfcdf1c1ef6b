"""Agents register with the join token and then only see and report their own node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gitops.api.app import create_app
from gitops.controller import reconcile_once
from gitops.model import Revision
from gitops.store import Store
from tests.planner.factories import deployment, secret

NODE = {"name": "n1", "address": "192.0.2.10", "cpu_milli": 4000, "memory_bytes": 2**32}


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
    response = client.post("/agent/v1/register", json={"join_token": "join-me", "node": node})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def test_registration_needs_the_join_token(setup: tuple[Store, TestClient]) -> None:
    _, client = setup
    response = client.post("/agent/v1/register", json={"join_token": "wrong", "node": NODE})
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
    assert pods[0]["spec"]["env"] == [["TOKEN", "hunter2"]]


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

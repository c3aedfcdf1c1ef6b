"""The status page and the JSON API show each Service as its type has it: a headless one's
VIP as None, an ExternalName one's target, node ports, and a LoadBalancer's ingress (the
Ready nodes' addresses)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gitops.api.app import create_app
from gitops.model import Revision
from gitops.store import Store
from tests.api.sample import NOW, sample_store
from tests.planner.factories import manifest


def svc(name: str, **spec: Any) -> Any:
    return manifest("Service", name, spec={"selector": {"app": "web"}, **spec})


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    store: Store = sample_store(tmp_path)
    http = [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]
    store.apply_revision(
        Revision("git:types", "c" * 40),
        [
            svc("peers", clusterIP="None"),
            svc("db", type="ExternalName", externalName="db.example.com"),
            svc("np", type="NodePort", ports=http),
            svc("lb", type="LoadBalancer", ports=[{"name": "http", "port": 8000, "targetPort": 8080}]),
        ],
        [],
        NOW - 5,
    )
    return TestClient(create_app(store, join_token="j", sources=["git:repo"], clock=lambda: NOW))


def row(text: str, name: str) -> str:
    start = text.index(f"<b>default/{name}</b>")
    return text[start : text.index("</tr>", start)]


def test_the_services_page_shows_each_type(client: TestClient) -> None:
    text = client.get("/services").text
    assert '<td class="mono">None</td>' in row(text, "peers")
    assert '<td class="num ok">3</td>' in row(text, "peers")  # its pods, for DNS
    db = row(text, "db")
    assert (
        "ExternalName" in db
        and '<td class="mono">db.example.com</td>' in db
        and '<td class="num">-</td>' in db
    )
    assert "http 80/TCP -&gt; 8080, node port 30080" in row(text, "np")
    lb = row(text, "lb")
    assert "LoadBalancer" in lb and "ingress 192.0.2.2" in lb
    assert "http 8000/TCP -&gt; 8080, node port 3" in lb  # a picked one, 30000-32767


def test_the_services_api_shows_each_type(client: TestClient) -> None:
    services = {s["name"]: s for s in client.get("/api/v1/services").json()}
    assert (services["peers"]["vip"], services["peers"]["headless"]) == ("", True)
    assert sorted(a["ip"] for a in services["peers"]["addresses"]) == [
        "172.17.0.2",
        "172.17.0.3",
        "172.17.0.4",
    ]
    assert (services["db"]["type"], services["db"]["external_name"], services["db"]["vip"]) == (
        "ExternalName",
        "db.example.com",
        "",
    )
    assert [p["node_port"] for p in services["np"]["ports"]] == [30080]
    assert services["lb"]["ingress"] == ["192.0.2.2"]
    assert 30000 <= services["lb"]["ports"][0]["node_port"] <= 32767
    assert services["np"]["ingress"] == [] and services["web"]["vip"].startswith("10.243.")

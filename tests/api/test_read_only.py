"""Read-only means read-only: on every route outside /agent/, /hooks/ and /git/ only GET
and HEAD are allowed, and no answer anywhere carries a Secret value."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Route

from gitops.api.app import create_app
from gitops.api.readonly import WRITE_PREFIXES
from gitops.store import Store
from tests.api.sample import NOW, SECRET_VALUE, sample_store

WRITES = ("POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "PROPFIND")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return sample_store(tmp_path)


@pytest.fixture
def app(store: Store) -> FastAPI:
    return create_app(store, join_token="j", sources=["git:repo"], clock=lambda: NOW)


def read_only_paths(app: FastAPI) -> list[str]:
    """Every route of the app outside the write prefixes, with its path parameters filled."""
    paths = []
    for route in app.routes:
        assert isinstance(route, Route), route
        if route.path.startswith(WRITE_PREFIXES):
            continue
        paths.append(re.sub(r"\{[^}]+\}", "x", route.path))
    return sorted(set(paths))


def test_the_read_only_surface_is_what_we_expect(app: FastAPI) -> None:
    paths = read_only_paths(app)
    expected_paths = ("/", "/pods", "/nodes", "/api/v1/pods", "/api/v1/status", "/metrics", "/openapi.json")
    for expected in (*expected_paths, "/docs"):
        assert expected in paths
    assert not any(p.startswith("/agent/") for p in paths)


def test_every_other_method_on_every_read_only_route_answers_405(app: FastAPI) -> None:
    client = TestClient(app)
    for path in read_only_paths(app):
        for method in WRITES:
            response = client.request(method, path, content=b"{}")
            assert response.status_code == 405, (method, path, response.status_code)
            assert response.headers["allow"] == "GET, HEAD", (method, path)


def test_head_works_on_every_read_only_route(app: FastAPI) -> None:
    client = TestClient(app)
    for path in read_only_paths(app):
        get = client.get(path)
        head = client.head(path)
        assert head.status_code == get.status_code, path
        assert head.content == b"", path
        assert head.headers.get("content-type") == get.headers.get("content-type"), path
        if get.status_code != 200:
            continue
        if "content-length" in get.headers:
            assert int(head.headers["content-length"]) == len(get.content), path
        else:  # sent in parts as made (`/metrics/resource`): no length, right or wrong
            assert "content-length" not in head.headers, path


def test_agent_routes_still_take_posts(app: FastAPI) -> None:
    node = {"name": "n9", "address": "192.0.2.9", "cpu_milli": 1000, "memory_bytes": 2**30}
    response = TestClient(app).post(
        "/agent/v1/register", json={"node": node}, headers={"X-Gitops-Join-Token": "wrong"}
    )
    assert response.status_code == 401


def test_no_answer_carries_a_secret_value(app: FastAPI, store: Store) -> None:
    assert SECRET_VALUE in {v for p in store.pods() for _, v in p.spec.main.env}
    assert any("token=[redacted]" in p.last_log for p in store.pods())  # redacted as it came in
    forms = (SECRET_VALUE, base64.b64encode(SECRET_VALUE.encode()).decode())
    client = TestClient(app)
    extra = ["/pods?q=web", "/pods?partial=1", "/api/v1/events?limit=1000", "/api/v1/revisions?limit=1000"]
    for path in [*read_only_paths(app), *extra]:
        response = client.get(path)
        for form in forms:
            assert form not in response.text, path
            assert all(form not in v for v in response.headers.values()), path


def test_openapi_lists_the_json_api_and_docs_need_nothing_from_outside(app: FastAPI) -> None:
    client = TestClient(app)
    spec = client.get("/openapi.json").json()
    assert "/api/v1/pods" in spec["paths"] and "get" in spec["paths"]["/api/v1/pods"]
    assert "/" not in spec["paths"]  # the HTML pages are not API operations
    docs = client.get("/docs").text
    assert "/api/v1/pods" in docs and "/openapi.json" in docs
    assert not re.search(r"""(src|href)=["']?https?://""", docs)
    for path in ("/", "/pods"):
        assert not re.search(r"""(src|href)=["']?https?://""", client.get(path).text)

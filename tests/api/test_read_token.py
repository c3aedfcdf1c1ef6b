"""Reads are open on loopback; beyond it they need the read token (bearer, or a cookie set
from `?token=` for browsers), unless --public-read. /healthz stays open."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gitops.api.app import create_app
from gitops.cli import _read_token, main
from gitops.server import ControlPlane
from gitops.store import Store
from tests.api.sample import NOW, sample_store
from tests.servers import free_port

TOKEN = "read-me-7f3a"
READS = (
    "/",
    "/pods",
    "/api/v1/status",
    "/api/v1/pods",
    "/api/v1/state",
    "/metrics",
    "/openapi.json",
    "/docs",
)


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    store = sample_store(tmp_path)
    return TestClient(create_app(store, join_token="j", clock=lambda: NOW, read_token=TOKEN))


def test_every_read_needs_the_token(client: TestClient) -> None:
    for path in READS:
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
        assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, path


def test_healthz_and_the_agents_own_routes_need_no_read_token(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    node = {"name": "n9", "address": "192.0.2.9", "cpu_milli": 1000, "memory_bytes": 2**30}
    response = client.post("/agent/v1/register", json={"node": node}, headers={"X-Gitops-Join-Token": "j"})
    assert response.status_code == 200


def test_a_browser_opens_a_page_once_with_the_token_and_keeps_it_in_a_cookie(client: TestClient) -> None:
    asked = client.get("/", headers={"Accept": "text/html"})
    assert (
        asked.status_code == 401
        and "read token" in asked.text
        and "text/html" in asked.headers["content-type"]
    )
    entry = client.get(f"/pods?q=web&token={TOKEN}", follow_redirects=False)
    assert entry.status_code == 303
    assert entry.headers["location"] == "/pods?q=web"  # the token leaves the address bar
    cookie = entry.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert cookie.startswith(f"gitops_read={TOKEN};")
    assert client.get("/pods?q=web", headers={"Cookie": f"gitops_read={TOKEN}"}).status_code == 200
    client.cookies.clear()
    assert client.get(f"/?token=wrong-{TOKEN}", follow_redirects=False).status_code == 401
    assert client.get("/pods").status_code == 401


def options(host: str, *, public: bool = False, file: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(host=host, public_read=public, read_token_file=file)


def test_the_server_needs_a_token_only_beyond_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITOPS_READ_TOKEN", raising=False)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        assert _read_token(options(host), tmp_path) is None, host
    assert _read_token(options("0.0.0.0", public=True), tmp_path) is None
    token = _read_token(options("0.0.0.0"), tmp_path)
    assert token and (tmp_path / "read-token").read_text().strip() == token
    assert (tmp_path / "read-token").stat().st_mode & 0o777 == 0o600
    assert _read_token(options("192.0.2.1"), tmp_path) == token  # stable across restarts
    (tmp_path / "mine").write_text("chosen-token\n")
    assert _read_token(options("0.0.0.0", file=str(tmp_path / "mine")), tmp_path) == "chosen-token"


def test_gitops_status_reads_with_the_token_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    plane = ControlPlane(store, [], port=free_port(), read_token=TOKEN)
    plane.start()
    try:
        monkeypatch.delenv("GITOPS_READ_TOKEN", raising=False)
        assert main(["status", "--server", plane.url]) == 1
        assert "needs its read token" in capsys.readouterr().err
        monkeypatch.setenv("GITOPS_READ_TOKEN", TOKEN)
        assert main(["status", "--server", plane.url]) == 0
        assert "Nodes: 0/0 ready" in capsys.readouterr().out
    finally:
        plane.stop()


def test_the_token_redirect_stays_on_this_server(client: TestClient) -> None:
    """A path that decodes to `//evil.example/x` must not become a redirect to another host."""
    entry = client.get(f"/%2F%2Fevil.example/x?token={TOKEN}", follow_redirects=False)
    assert entry.status_code == 303
    assert entry.headers["location"] == "/%2F%2Fevil.example/x"
    entry = client.get(f"/%C3%A9t%C3%A9?token={TOKEN}", follow_redirects=False)  # not Latin-1
    assert entry.status_code == 303 and entry.headers["location"] == "/%C3%A9t%C3%A9"


def test_open_reads_on_loopback_answer_only_loopback_names(tmp_path: Path) -> None:
    """A page on some site cannot read the API through a name it rebinds to 127.0.0.1."""
    import httpx

    plane = ControlPlane(Store(f"sqlite:///{tmp_path / 's.db'}"), [], port=free_port())
    plane.start()
    try:
        for host in (f"127.0.0.1:{plane.port}", f"localhost:{plane.port}", "[::1]"):
            assert httpx.get(f"{plane.url}/api/v1/status", headers={"Host": host}).status_code == 200
        rebound = httpx.get(f"{plane.url}/api/v1/status", headers={"Host": f"attacker.example:{plane.port}"})
        assert rebound.status_code == 403 and "loopback" in rebound.json()["detail"]
    finally:
        plane.stop()

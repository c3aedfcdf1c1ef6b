"""`gitops plan --state` reads a running server's API or an exported snapshot, alike."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gitops.cli import main
from gitops.model import Node, NodeName
from gitops.server import ControlPlane
from gitops.store import SecretKeys, Store
from gitops.sync.sources import FolderSource
from tests.conftest import wait_for
from tests.preview.repos import Repo, deployment
from tests.servers import free_port

SECRET = "tr0ub4dor-and-3"


def secret_yaml() -> str:
    encoded = base64.b64encode(SECRET.encode()).decode()
    return f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  password: {encoded}\n"


ENV = "env:\n  - name: PASSWORD\n    valueFrom: {secretKeyRef: {name: db, key: password}}\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ControlPlane]:
    folder = tmp_path / "live"
    folder.mkdir()
    (folder / "web.yaml").write_text(deployment(replicas=2, env=ENV))
    (folder / "db.yaml").write_text(secret_yaml())
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.1", 4000, 2**32), "t", now=time.time())
    plane = ControlPlane(store, [FolderSource(folder)], port=free_port(), controller_interval=0.2)
    plane.start()
    try:
        wait_for(lambda: len(store.pods()) == 2 and all(p.node for p in store.pods()), 20, what="pods bound")
        yield plane
    finally:
        plane.stop()


def test_a_preview_on_the_servers_state_matches_one_on_its_export(
    server: ControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = httpx.get(f"{server.url}/api/v1/state", trust_env=False)
    assert state.status_code == 200 and SECRET not in state.text
    assert base64.b64encode(SECRET.encode()).decode() not in state.text

    repo = Repo(tmp_path / "repo")
    base = repo.commit({"web.yaml": deployment(replicas=2, env=ENV), "db.yaml": secret_yaml()}, "base")
    repo.commit({"web.yaml": deployment(replicas=3, env=ENV, image="web:2")}, "web 2, three")

    plan = ["plan", "--repo", str(repo.path), "--base", base, "--format", "json"]
    assert main([*plan, "--state", server.url]) == 2
    live = json.loads(capsys.readouterr().out)
    assert live["state"]["source"] == f"{server.url}/api/v1/state"
    assert live["notes"] == []  # the server runs exactly the base revision

    export = tmp_path / "state.json"
    assert main(["state", "export", "--server", server.url, "-o", str(export)]) == 0
    capsys.readouterr()
    assert SECRET not in export.read_text()
    assert main([*plan, "--state", str(export)]) == 2
    offline = json.loads(capsys.readouterr().out)

    assert live["state"]["version"] == offline["state"]["version"] != ""

    def first_pass(doc: dict[str, object]) -> list[tuple[str, str, object]]:
        pods = doc["pods"]
        assert isinstance(pods, list)
        return sorted((p["action"], p["pod"], p["node"]) for p in pods if p["pass"] == 0)

    assert first_pass(live) == first_pass(offline)
    assert {node for _, _, node in first_pass(live)} == {"n1"}
    reasons = [p["reason"] for p in live["pods"]]
    assert any(r.startswith("template changed: image changed: web:1 -> web:2") for r in reasons)
    assert not any("env PASSWORD" in p["reason"] for p in live["pods"])  # redacted values are not "changes"


def test_state_export_reads_a_store_directly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}", keys=SecretKeys.from_file(tmp_path / "key"))
    store.register_node(Node(NodeName("n1"), "192.0.2.1", 4000, 2**32), "t", now=0.0)
    db = f"sqlite:///{tmp_path / 's.db'}"
    capsys.readouterr()
    SecretKeys.from_file(tmp_path / "other-key")
    with pytest.raises(SystemExit, match="sealed with another key"):
        main(["state", "export", "--db", db, "--secret-key-file", str(tmp_path / "other-key")])
    assert main(["state", "export", "--db", db, "--secret-key-file", str(tmp_path / "key")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "gitops-state/1"
    assert [n["name"] for n in doc["nodes"]] == ["n1"]


def test_an_unreachable_server_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repo(tmp_path / "repo")
    repo.commit({"web.yaml": deployment()}, "base")
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["plan", "--repo", str(repo.path), "--state", url]) == 1
    assert f"{url}/api/v1/state: cannot read the cluster state" in capsys.readouterr().err

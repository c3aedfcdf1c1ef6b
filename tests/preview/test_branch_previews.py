"""The service keeps a preview of every other branch, refreshed when it moves, served read-only."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from gitops.api.app import create_app
from gitops.controller import reconcile_once
from gitops.model import Node, NodeName
from gitops.store import Store
from gitops.sync.previews import BranchPreviews
from gitops.sync.service import sync_once
from gitops.sync.sources import GitSource
from tests.preview.repos import Repo, deployment, git


def setup(tmp_path: Path) -> tuple[Repo, Store, GitSource, BranchPreviews]:
    repo = Repo(tmp_path / "repo")
    repo.commit({"web.yaml": deployment(replicas=2)}, "base")
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.1", 4000, 2**32), "t", now=1.0)
    source = GitSource(str(repo.path), tmp_path / "mirror", branch="main")
    assert sync_once(store, source, now=2.0) is not None
    reconcile_once(store, now=3.0)
    previews = BranchPreviews(store, source, tmp_path / "previews", clock=lambda: 4.0)
    return repo, store, source, previews


def test_other_branches_get_previews_that_follow_them_and_go_when_they_go(tmp_path: Path) -> None:
    repo, store, source, previews = setup(tmp_path)
    git(repo.path, "checkout", "-q", "-b", "feature")
    head = repo.commit({"web.yaml": deployment(replicas=5)}, "scale to five")
    git(repo.path, "checkout", "-q", "-b", "broken")
    repo.commit({"web.yaml": deployment(replicas=5).replace("replicas: 5", "replicas: -1")}, "oops")
    git(repo.path, "checkout", "-q", "main")

    assert previews.refresh() == 2
    by_ref = {p.ref: p for p in store.previews()}
    assert set(by_ref) == {"refs/heads/feature", "refs/heads/broken"}  # never main itself
    feature = by_ref["refs/heads/feature"]
    assert (feature.head, feature.status, feature.report["exit_code"]) == (head, "changes", 2)
    assert feature.base == source.latest().id
    assert feature.report["counts"]["pods_created"] == 3
    assert "scale up: 2 -> 5 replicas" in feature.markdown
    assert by_ref["refs/heads/broken"].status == "error"
    (error,) = by_ref["refs/heads/broken"].report["errors"]
    assert error.startswith("web.yaml:6:13: Deployment default/web: spec.replicas")

    assert previews.refresh() == 0  # nothing moved
    git(repo.path, "checkout", "-q", "feature")
    repo.commit({"web.yaml": deployment(replicas=6)}, "six")
    git(repo.path, "checkout", "-q", "main")
    git(repo.path, "branch", "-D", "broken")
    assert previews.refresh() == 1
    (only,) = store.previews()
    assert only.ref == "refs/heads/feature" and only.report["counts"]["pods_created"] == 4


def test_a_refspec_previews_pull_request_refs(tmp_path: Path) -> None:
    repo, store, source, _ = setup(tmp_path)
    head = repo.commit({"web.yaml": deployment(replicas=3)}, "pr 7")
    git(repo.path, "update-ref", "refs/pull/7/head", head)
    git(repo.path, "reset", "-q", "--hard", "HEAD~1")
    pulls = BranchPreviews(store, source, tmp_path / "pulls", refspec="refs/pull/*/head", clock=lambda: 4.0)
    assert pulls.refresh() == 1
    assert [p.ref for p in store.previews()] == ["refs/pull/7/head"]


def test_the_api_serves_previews_and_says_when_the_cluster_moved_on(tmp_path: Path) -> None:
    repo, store, _, previews = setup(tmp_path)
    git(repo.path, "checkout", "-q", "-b", "feature")
    repo.commit({"web.yaml": deployment(replicas=3)}, "three")
    previews.refresh()
    client = TestClient(create_app(store, join_token="j", clock=lambda: 4.0))
    (listed,) = client.get("/api/v1/previews").json()
    assert (listed["ref"], listed["stale"], listed["status"]) == ("refs/heads/feature", False, "changes")
    full = client.get("/api/v1/previews/feature").json()
    assert full["report"]["format"] == "gitops-preview/1"
    assert full["markdown"].startswith("### gitops preview of ")
    assert client.get("/api/v1/previews/nothing").status_code == 404

    store.register_node(Node(NodeName("n2"), "192.0.2.2", 4000, 2**32), "t2", now=5.0)
    (listed,) = client.get("/api/v1/previews").json()
    assert listed["stale"] is True


def test_the_server_previews_branches_of_its_git_sources(tmp_path: Path) -> None:
    import httpx

    from gitops.server import ControlPlane
    from tests.conftest import wait_for
    from tests.servers import free_port

    repo = Repo(tmp_path / "repo")
    repo.commit({"web.yaml": deployment(replicas=1)}, "base")
    git(repo.path, "checkout", "-q", "-b", "feature")
    repo.commit({"web.yaml": deployment(replicas=2)}, "two")
    git(repo.path, "checkout", "-q", "main")
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    source = GitSource(str(repo.path), tmp_path / "mirror", branch="main")
    plane = ControlPlane(store, [source], port=free_port(), poll_interval=0.5)
    plane.start()
    try:

        def listed() -> list[dict[str, object]]:
            answer = httpx.get(f"{plane.url}/api/v1/previews", trust_env=False)
            listing: list[dict[str, object]] = answer.json()
            return listing

        first = wait_for(lambda: [p for p in listed() if p["ref"] == "refs/heads/feature"], 20)
        assert first[0]["status"] == "changes"
        git(repo.path, "checkout", "-q", "feature")
        moved = repo.commit({"web.yaml": deployment(replicas=3)}, "three")
        wait_for(lambda: [p for p in listed() if p["head"] == moved], 20, what="the preview to follow")
    finally:
        plane.stop()

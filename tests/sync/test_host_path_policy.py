"""The server's policy (`--allow-host-path`) reaches every place a revision is judged: the
sync, the push hook, branch previews and `gitops validate` refuse a hostPath outside it
alike, and agents receive its folders with each sync to check again."""

from __future__ import annotations

import io
from pathlib import Path

import git
import pytest
from fastapi.testclient import TestClient

from gitops.api.app import create_app
from gitops.cli import _policy, main, parser
from gitops.model import Node, NodeName
from gitops.schemas.validate import Policy
from gitops.server import ControlPlane
from gitops.store import Store
from gitops.sync.prereceive import Update, judge
from gitops.sync.prereceive import main as hook_main
from gitops.sync.previews import BranchPreviews
from gitops.sync.service import sync_once
from gitops.sync.sources import FolderSource, GitSource
from tests.preview.repos import Repo

FLUENTD = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: fluentd
spec:
  selector:
    matchLabels: {app: fluentd}
  template:
    metadata:
      labels: {app: fluentd}
    spec:
      containers:
        - name: fluentd
          image: fluent/fluentd:v1.16
          volumeMounts: [{name: varlog, mountPath: /var/log, readOnly: true}]
      volumes:
        - name: varlog
          hostPath: {path: /var/log, type: Directory}
"""
REFUSED = (
    "fluentd.yaml:18:28: Deployment default/fluentd: spec.template.spec.volumes[0].hostPath.path: "
    "hostPath /var/log is not under a prefix this server allows (gitops serve --allow-host-path; "
    "allowed: none)"
)
LOGS = Policy(host_paths=("/var/log",))


def test_a_sync_refuses_a_host_path_the_server_does_not_allow_and_applies_one_it_does(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "fluentd.yaml").write_text(FLUENTD)
    refusing = Store(f"sqlite:///{tmp_path / 'a.db'}")
    record = sync_once(refusing, FolderSource(tmp_path / "m"))
    assert record is not None and record.status == "rejected"
    assert list(record.errors) == [REFUSED]
    assert refusing.desired() == []

    allowing = Store(f"sqlite:///{tmp_path / 'b.db'}")
    record = sync_once(allowing, FolderSource(tmp_path / "m"), policy=LOGS)
    assert record is not None and record.status == "applied"
    assert [str(m.key) for m in allowing.desired()] == ["Deployment default/fluentd"]


def test_the_push_hook_judges_a_push_under_the_servers_policy(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    sha = repo.commit({"fluentd.yaml": FLUENTD}, "ship logs")
    update = [Update("0" * 40, sha, "refs/heads/main")]
    refused = judge(git.Repo(repo.path), update, "main")
    assert not refused.accepted and REFUSED in refused.lines
    assert judge(git.Repo(repo.path), update, "main", policy=LOGS).accepted


def test_the_push_hook_takes_the_allowed_prefixes_as_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repo(tmp_path / "repo")
    sha = repo.commit({"fluentd.yaml": FLUENTD}, "ship logs")
    monkeypatch.setenv("GIT_DIR", str(repo.path / ".git"))
    line = f"{'0' * 40} {sha} refs/heads/main\n"
    stderr = io.StringIO()
    assert hook_main(["--branch", "main"], io.StringIO(line), stderr) == 1
    assert REFUSED in stderr.getvalue()
    assert (
        hook_main(["--branch", "main", "--allow-host-path", "/var/log"], io.StringIO(line), io.StringIO())
        == 0
    )


def test_a_branch_preview_judges_the_branch_as_its_sync_would(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.commit({"README": "logs\n"}, "base")
    repo.commit({"fluentd.yaml": FLUENTD}, "ship logs")
    repo_git = git.Repo(repo.path)
    repo_git.git.branch("feature")
    repo_git.git.reset("-q", "--hard", "HEAD~1")
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.1", 4000, 2**32), "t", now=1.0)
    source = GitSource(str(repo.path), tmp_path / "mirror", branch="main")
    for policy, status in ((Policy(), "error"), (LOGS, "changes")):
        previews = BranchPreviews(
            store, source, tmp_path / f"previews-{status}", clock=lambda: 4.0, policy=policy
        )
        previews.refresh()
        (preview,) = store.previews()
        assert preview.status == status
        store.forget_previews(previews.name, keep=set())


def test_agents_get_the_allowed_folders_with_each_sync(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    app = create_app(store, join_token="join", allow_host_paths=("/var/log",), clock=lambda: 100.0)
    client = TestClient(app)
    node = {"name": "n1", "address": "192.0.2.10", "cpu_milli": 4000, "memory_bytes": 2**32}
    token = client.post("/agent/v1/register", json={"node": node}, headers={"X-Gitops-Join-Token": "join"})
    auth = {"Authorization": f"Bearer {token.json()['token']}"}
    reply = client.post("/agent/v1/nodes/n1/sync", json={"statuses": []}, headers=auth).json()
    assert reply["allow_host_paths"] == ["/var/log"]
    default = TestClient(create_app(store, join_token="join", clock=lambda: 100.0))
    assert default.post("/agent/v1/nodes/n1/sync", json={}, headers=auth).json()["allow_host_paths"] == []


def test_a_control_plane_hands_its_policy_to_its_syncs_previews_and_agents(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    repo = Repo(tmp_path / "repo")
    repo.commit({"fluentd.yaml": FLUENTD}, "ship logs")
    source = GitSource(str(repo.path), tmp_path / "mirror", branch="main")
    plane = ControlPlane(store, [source], policy=LOGS)
    plane._build()
    plane._leader_loops()
    assert [s.policy for s in plane.syncs] == [LOGS]
    assert [p.policy for p in plane.previews] == [LOGS]
    store.close()


def test_gitops_validate_checks_host_paths_as_a_server_given_the_same_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "fluentd.yaml").write_text(FLUENTD)
    assert main(["validate", str(tmp_path)]) == 1
    assert REFUSED in capsys.readouterr().out
    assert main(["validate", "--allow-host-path", "/var/log", str(tmp_path)]) == 0
    assert main(["validate", "--allow-host-path", "/var/logs", str(tmp_path)]) == 1
    with pytest.raises(
        SystemExit, match="--allow-host-path: host path prefix 'logs': expected an absolute path"
    ):
        main(["validate", "--allow-host-path", "logs", str(tmp_path)])


def test_serve_and_up_take_the_allowed_prefixes_repeatedly() -> None:
    for command in (["serve", "--dir", "m"], ["up", "m"]):
        args = parser().parse_args([*command, "--allow-host-path", "/var/log/", "--allow-host-path", "/srv"])
        assert _policy(args) == Policy(host_paths=("/var/log", "/srv"))
    assert _policy(parser().parse_args(["serve", "--dir", "m"])) == Policy()


def test_the_push_hook_of_a_hosted_repository_is_given_the_server_s_prefixes(tmp_path: Path) -> None:
    from gitops.sync.hosted import HostedRepo

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    repo = HostedRepo("manifests", tmp_path / "state")
    assert "--allow-host-path" not in repo.hook_script()
    plane = ControlPlane(store, [], hosted=[repo], policy=LOGS)
    plane._build()
    hook = (repo.path / "hooks" / "pre-receive").read_text()
    assert "--allow-host-path /var/log" in hook
    store.close()


def test_allow_privileged_reaches_the_policy_and_the_push_hook(tmp_path: Path) -> None:
    from gitops.sync.hosted import HostedRepo

    for command in (["serve", "--dir", "m"], ["up", "m"], ["validate", "m"], ["plan"]):
        assert _policy(parser().parse_args([*command, "--allow-privileged"])).privileged
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    repo = HostedRepo("manifests", tmp_path / "state")
    plane = ControlPlane(store, [], hosted=[repo], policy=Policy(host_paths=("/var/log",), privileged=True))
    plane._build()
    hook = (repo.path / "hooks" / "pre-receive").read_text()
    assert "--allow-host-path /var/log --allow-privileged" in hook
    store.close()

"""Pushing straight to the server over git's smart HTTP protocol, with real `git`.

An invalid revision of the deployed branch is refused by the pre-receive hook with every
error shown to the pusher, and nothing moves; a valid one is synced at once (the poll
interval is ten minutes, so only the push can explain it). Reads and writes need the token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gitops.cli import _push_options, parser
from gitops.model import Revision
from gitops.server import ControlPlane
from gitops.store import Store
from gitops.sync.hosted import HostedRepo, check_name
from gitops.sync.sources import FetchError, GitSource
from tests.conftest import require, wait_for
from tests.servers import free_port

TOKEN = "push-token-for-tests"
SECRET = b"webhook-secret-for-tests"

WEB = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: web
          image: web:1
"""


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Pat Pusher",
        "GIT_AUTHOR_EMAIL": "pat@example.org",
        "GIT_COMMITTER_NAME": "Pat Pusher",
        "GIT_COMMITTER_EMAIL": "pat@example.org",
        "GIT_TERMINAL_PROMPT": "0",  # a refused credential must fail, not wait for a keyboard
    }
    result = subprocess.run(
        ["git", "-c", "credential.helper=", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(f"git {' '.join(args)} failed:\n{result.stderr}")
    return result


@dataclass
class Hosted:
    plane: ControlPlane
    store: Store
    repo: HostedRepo
    work: Path

    def url(self, token: str | None = TOKEN) -> str:
        auth = f"gitops:{token}@" if token is not None else ""
        return f"http://{auth}127.0.0.1:{self.plane.port}/git/{self.repo.name}.git"

    def commit(self, files: dict[str, str], message: str, branch: str = "main") -> str:
        git(self.work, "checkout", "-q", "-B", branch)
        for rel, content in files.items():
            (self.work / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.work / rel).write_text(content)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "-m", message)
        return git(self.work, "rev-parse", "HEAD").stdout.strip()

    def push(self, *refspecs: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
        return git(self.work, "push", self.url(token), *(refspecs or ("main",)), check=False)

    def applied(self) -> str | None:
        record = self.store.last_revision(self.repo.source.name)
        return record.revision if record is not None and record.status == "applied" else None


@pytest.fixture
def hosted(tmp_path: Path) -> Iterator[Hosted]:
    require(subprocess.run(["git", "--version"], capture_output=True, check=False).returncode == 0, "git")
    store = Store(f"sqlite:///{tmp_path / 'gitops.db'}")
    repo = HostedRepo("manifests", tmp_path / "state")
    plane = ControlPlane(store, [], hosted=[repo], port=free_port(), poll_interval=600, push_token=TOKEN)
    plane.start()
    work = tmp_path / "work"
    git(tmp_path, "init", "-q", "-b", "main", str(work))
    try:
        yield Hosted(plane, store, repo, work)
    finally:
        plane.stop()


def test_a_valid_push_is_accepted_and_synced_at_once(hosted: Hosted) -> None:
    sha = hosted.commit({"apps/web.yaml": WEB.format(replicas=2)}, "web: 2 replicas")
    pushed = hosted.push()
    assert pushed.returncode == 0, pushed.stderr
    assert f"remote: gitops: {sha[:12]} on main is valid (1 object(s)); deploying it now" in pushed.stderr
    wait_for(lambda: hosted.applied() == sha, timeout=2.5, interval=0.05, what="the pushed revision applied")
    assert [(m.key.name, m.spec["replicas"]) for m in hosted.store.desired()] == [("web", 2)]


def test_an_invalid_push_is_refused_with_its_errors_and_nothing_changes(hosted: Hosted) -> None:
    good = hosted.commit({"apps/web.yaml": WEB.format(replicas=2)}, "web: 2 replicas")
    assert hosted.push().returncode == 0
    wait_for(lambda: hosted.applied() == good, timeout=2.5, interval=0.05, what="the first revision")
    revisions = hosted.store.revisions(limit=10)

    hosted.commit(
        {"apps/web.yaml": WEB.format(replicas='"three"'), "apps/db.yaml": "kind: [unclosed\n"},
        "web: three replicas",
    )
    refused = hosted.push()

    assert refused.returncode != 0
    lines = refused.stderr.splitlines()
    web_error = (
        'apps/web.yaml:6:13: Deployment default/web: spec.replicas: expected integer >= 0, got "three"'
    )
    assert any(line.startswith(f"remote: {web_error}") for line in lines), refused.stderr
    assert any(line.startswith("remote: apps/db.yaml:2:1: invalid YAML") for line in lines), refused.stderr
    assert " ! [remote rejected] main -> main (pre-receive hook declined)" in lines
    assert hosted.repo.head() == good
    # Nothing reaches the store: no new revision, not even a rejected one, and the same desired state.
    hosted.plane.syncs[0].sync()
    assert hosted.store.revisions(limit=10) == revisions
    assert [(m.key.name, m.spec["replicas"]) for m in hosted.store.desired()] == [("web", 2)]


def test_deleting_the_deployed_branch_is_refused(hosted: Hosted) -> None:
    good = hosted.commit({"apps/web.yaml": WEB.format(replicas=1)}, "web")
    assert hosted.push().returncode == 0
    refused = hosted.push(":main")
    assert refused.returncode != 0
    assert "remote: gitops: refusing to delete main: it is the deployed branch" in refused.stderr
    assert hosted.repo.head() == good


def test_other_branches_are_accepted_with_their_errors_as_warnings(hosted: Hosted) -> None:
    good = hosted.commit({"apps/web.yaml": WEB.format(replicas=1)}, "web")
    assert hosted.push().returncode == 0
    hosted.commit({"apps/web.yaml": WEB.format(replicas="lots")}, "try something", branch="feature")
    accepted = hosted.push("feature")
    assert accepted.returncode == 0, accepted.stderr
    assert "(warning: feature is not deployed)" in accepted.stderr
    assert hosted.repo.head() == good


def test_clone_and_push_need_the_token(hosted: Hosted, tmp_path: Path) -> None:
    hosted.commit({"apps/web.yaml": WEB.format(replicas=1)}, "web")
    for token in (None, "wrong"):
        refused = hosted.push(token=token)
        assert refused.returncode != 0
        assert "Authentication failed" in refused.stderr or "could not read Username" in refused.stderr
        denied = git(tmp_path, "clone", hosted.url(token), str(tmp_path / f"clone-{token}"), check=False)
        assert denied.returncode != 0
    assert hosted.repo.head() is None
    response = httpx.get(hosted.url(None) + "/info/refs?service=git-upload-pack")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="gitops"'

    assert hosted.push().returncode == 0
    git(tmp_path, "clone", "-q", hosted.url(), str(tmp_path / "clone"))
    assert (tmp_path / "clone" / "apps" / "web.yaml").read_text() == WEB.format(replicas=1)


def test_an_unknown_repository_is_404_and_names_the_hosted_ones(hosted: Hosted) -> None:
    response = httpx.get(
        f"http://127.0.0.1:{hosted.plane.port}/git/other.git/info/refs?service=git-upload-pack",
        auth=("gitops", TOKEN),
    )
    assert response.status_code == 404
    assert "manifests.git" in response.text


# --- webhooks through the real server -----------------------------------------------------


class CountingSource(GitSource):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.reads = 0

    def latest(self) -> Revision:
        self.reads += 1
        return super().latest()


def test_a_signed_github_webhook_syncs_at_once_and_a_replay_does_not(tmp_path: Path) -> None:
    remote, work = tmp_path / "remote.git", tmp_path / "work"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(tmp_path, "init", "-q", "-b", "main", str(work))
    (work / "web.yaml").write_text(WEB.format(replicas=1))
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "one")
    git(work, "push", "-q", str(remote), "main")
    source = CountingSource(str(remote), tmp_path / "cache")
    store = Store(f"sqlite:///{tmp_path / 'gitops.db'}")
    plane = ControlPlane(store, [source], port=free_port(), poll_interval=600, webhook_secret=SECRET)
    plane.start()
    try:
        wait_for(lambda: store.last_revision(source.name) is not None, timeout=10, what="the first sync")
        (work / "web.yaml").write_text(WEB.format(replicas=2))
        git(work, "commit", "-q", "-am", "two")
        git(work, "push", "-q", str(remote), "main")
        sha = git(work, "rev-parse", "HEAD").stdout.strip()
        payload = {"ref": "refs/heads/main", "after": sha, "repository": {"clone_url": str(remote)}}
        body = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest(),
        }
        hook = f"{plane.url}/hooks/github"

        forged_headers = {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}
        forged = httpx.post(hook, content=body, headers=forged_headers)
        assert forged.status_code == 401
        reads = source.reads
        threading_pause(0.5)
        assert source.reads == reads and store.last_revision(source.name).revision != sha  # type: ignore[union-attr]

        accepted = httpx.post(hook, content=body, headers=headers)
        assert accepted.status_code == 200 and accepted.json()["status"] == "triggered"
        wait_for(
            lambda: store.last_revision(source.name).revision == sha,  # type: ignore[union-attr]
            timeout=2.5,
            interval=0.05,
            what="the pushed revision applied",
        )
        reads = source.reads
        replay = httpx.post(hook, content=body, headers=headers)
        assert replay.status_code == 200 and replay.json()["status"] == "duplicate"
        threading_pause(0.5)
        assert source.reads == reads
    finally:
        plane.stop()


def threading_pause(seconds: float) -> None:
    threading.Event().wait(seconds)


# --- the command line ---------------------------------------------------------------------


def test_serve_generates_a_private_push_token_once_and_reads_secrets_from_files(tmp_path: Path) -> None:
    state = tmp_path / "state"
    secret_file = tmp_path / "hook-secret"
    secret_file.write_text("from-a-file\n")
    hook_secret = ["--webhook-secret-file", str(secret_file)]
    args = parser().parse_args(["serve", "--host-repo", "manifests", *hook_secret, "--state-dir", str(state)])
    first = _push_options(args, state)
    token_file = state / "push-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert first["push_token"] == token_file.read_text().strip()
    assert first["webhook_secret"] == b"from-a-file"
    assert [r.name for r in first["hosted"]] == ["manifests"]
    assert _push_options(args, state)["push_token"] == first["push_token"]


def test_bad_repository_names_and_missing_secret_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use letters, digits"):
        check_name("../etc")
    args = parser().parse_args(["serve", "--host-repo", "m", "--webhook-secret-file", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match=r"--webhook-secret-file .*nope: cannot read"):
        _push_options(args, tmp_path)


def test_a_git_source_with_a_password_in_its_url_never_puts_it_on_a_command_line(
    hosted: Hosted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ps` shows every process's arguments to every user of the host."""
    import git as gitpython

    sha = hosted.commit({"apps/web.yaml": WEB.format(replicas=1)}, "one")
    assert hosted.push().returncode == 0
    commands: list[list[str]] = []
    original = gitpython.cmd.safer_popen

    def recording(command: list[str], *args: object, **kwargs: object) -> object:
        commands.append([str(c) for c in command])
        return original(command, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(gitpython.cmd, "safer_popen", recording)
    source = GitSource(hosted.url(), tmp_path / "mirror", branch="main")
    assert TOKEN not in source.name and "***@" in source.name
    assert source.latest().id == sha
    assert commands and not any(TOKEN in part for command in commands for part in command)

    wrong = GitSource(hosted.url("not-the-token"), tmp_path / "mirror-2", branch="main")
    with pytest.raises(FetchError) as refused:
        wrong.latest()
    assert "not-the-token" not in str(refused.value) and "Authentication failed" in str(refused.value)

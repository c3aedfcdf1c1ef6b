"""Push webhooks: only authentic hooks sync, replays and floods do not pile up syncs, and a
push reaches exactly the sources deploying its repository and branch."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gitops.api.webhooks import normalise_url, webhook_router
from gitops.model import Revision
from gitops.schemas.loader import SourceFile
from gitops.store import Store
from gitops.sync.service import SyncService
from tests.conftest import wait_for

SECRET = b"s3cret-for-tests"
REPO = "https://github.com/acme/manifests.git"


class FakeSource:
    """A git-like source (`url`, `branch`) that counts how often it is read."""

    def __init__(self, url: str = REPO, branch: str = "main", gate: threading.Event | None = None) -> None:
        self.url = url
        self.branch = branch
        self.name = f"git:{url}#{branch}"
        self.reads = 0
        self.gate = gate

    def latest(self) -> Revision:
        self.reads += 1
        if self.gate is not None:
            self.gate.wait(10)
        return Revision(source=self.name, id="a" * 40)

    def files(self, revision: Revision) -> tuple[list[SourceFile], list[Any]]:
        return [], []


class Recorder:
    """Stands in for a SyncService: records triggers."""

    def __init__(self, source: FakeSource) -> None:
        self.source = source
        self.triggers = 0

    def trigger(self) -> None:
        self.triggers += 1


def client_for(syncs: list[Any], secret: bytes | None = SECRET, **options: Any) -> TestClient:
    app = FastAPI()
    app.include_router(webhook_router(secret, lambda: syncs, **options))
    return TestClient(app)


def github_push(ref: str = "refs/heads/main", url: str = REPO, after: str | None = None) -> dict[str, Any]:
    return {
        "ref": ref,
        "before": "0" * 40,
        "after": after or uuid.uuid4().hex + "00000000",
        "repository": {
            "clone_url": url,
            "ssh_url": url.replace("https://github.com/", "git@github.com:"),
            "html_url": url.removesuffix(".git"),
        },
    }


def signed(
    provider: str, payload: dict[str, Any], *, secret: bytes = SECRET, delivery: str | None = None
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    delivery = delivery or str(uuid.uuid4())
    headers = {"Content-Type": "application/json"}
    if provider == "github":
        headers |= {
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": f"sha256={digest}",
        }
    elif provider == "gitea":
        headers |= {"X-Gitea-Event": "push", "X-Gitea-Delivery": delivery, "X-Gitea-Signature": digest}
    else:
        headers |= {
            "X-Gitlab-Event": "Push Hook",
            "X-Gitlab-Event-UUID": delivery,
            "X-Gitlab-Token": secret.decode(),
        }
    return body, headers


def post(client: TestClient, provider: str, body: bytes, headers: dict[str, str]) -> Any:
    return client.post(f"/hooks/{provider}", content=body, headers=headers)


# --- verification -------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["github", "gitea", "gitlab"])
def test_a_signed_push_triggers_the_matching_source(provider: str) -> None:
    sync = Recorder(FakeSource())
    client = client_for([sync])
    response = post(client, provider, *signed(provider, github_push()))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "triggered"
    assert sync.triggers == 1


@pytest.mark.parametrize("provider", ["github", "gitea", "gitlab"])
def test_a_wrong_signature_or_token_gets_401_and_nothing_is_synced(provider: str) -> None:
    sync = Recorder(FakeSource())
    client = client_for([sync])
    response = post(client, provider, *signed(provider, github_push(), secret=b"not-the-secret"))
    assert response.status_code == 401
    assert response.json()["status"] == "unauthorized"
    assert sync.triggers == 0


@pytest.mark.parametrize(
    ("provider", "header"),
    [("github", "X-Hub-Signature-256"), ("gitea", "X-Gitea-Signature"), ("gitlab", "X-Gitlab-Token")],
)
def test_a_missing_signature_gets_401_naming_the_header(provider: str, header: str) -> None:
    sync = Recorder(FakeSource())
    client = client_for([sync])
    body, headers = signed(provider, github_push())
    del headers[header]
    response = post(client, provider, body, headers)
    assert response.status_code == 401
    assert header in response.json()["message"]
    assert sync.triggers == 0


def test_a_body_changed_after_signing_gets_401() -> None:
    sync = Recorder(FakeSource())
    client = client_for([sync])
    body, headers = signed("github", github_push())
    response = post(client, "github", body.replace(b"refs/heads/main", b"refs/heads/evil"), headers)
    assert response.status_code == 401
    assert sync.triggers == 0


def test_without_a_secret_hooks_are_disabled_and_say_how_to_enable_them() -> None:
    sync = Recorder(FakeSource())
    client = client_for([sync], secret=None)
    body, headers = signed("github", github_push())
    response = post(client, "github", body, headers)
    assert response.status_code == 403
    assert "--webhook-secret-file" in response.json()["message"]
    assert sync.triggers == 0


def test_an_unknown_provider_is_404_and_an_oversized_body_413() -> None:
    sync = Recorder(FakeSource())
    client = client_for([sync], max_body=1000)
    assert client.post("/hooks/bitbucket", content=b"{}").status_code == 404
    payload = github_push()
    payload["padding"] = "x" * 2000
    response = post(client, "github", *signed("github", payload))
    assert response.status_code == 413
    assert sync.triggers == 0


# --- replays and floods -------------------------------------------------------------------


def test_a_replayed_delivery_is_answered_duplicate_without_a_second_sync() -> None:
    sync = Recorder(FakeSource())
    client = client_for([sync])
    body, headers = signed("github", github_push())
    assert post(client, "github", body, headers).json()["status"] == "triggered"
    again = post(client, "github", body, headers)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    # The delivery id is not signed: the same body under a new id is still a replay.
    replay = post(client, "github", body, {**headers, "X-GitHub-Delivery": str(uuid.uuid4())})
    assert replay.json()["status"] == "duplicate"
    # ... and a new body under an old id too.
    new_body, new_headers = signed("github", github_push(), delivery=headers["X-GitHub-Delivery"])
    assert post(client, "github", new_body, new_headers).json()["status"] == "duplicate"
    assert sync.triggers == 1


def test_a_burst_of_100_hooks_during_a_sync_makes_one_more_sync(tmp_path: Path) -> None:
    gate = threading.Event()
    source = FakeSource(gate=gate)
    service = SyncService(Store(f"sqlite:///{tmp_path / 's.db'}"), source, interval=600)
    client = client_for([service])
    service.start()
    try:
        wait_for(lambda: source.reads == 1, timeout=5, what="the first sync to start")
        for _ in range(100):
            response = post(client, "github", *signed("github", github_push()))
            assert response.json()["status"] == "triggered"
        gate.set()
        wait_for(lambda: source.reads >= 2, timeout=5, what="the sync after the burst")
        # Give a third sync every chance to happen: it must not.
        threading.Event().wait(1.0)
        assert source.reads == 2
    finally:
        gate.set()
        service.stop()


# --- matching -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/acme/manifests.git",
        "https://github.com/acme/manifests",
        "https://token@GitHub.com/Acme/Manifests.git/",
        "https://github.com:443/acme/manifests",
        "ssh://git@github.com:22/acme/manifests.git",
        "git@github.com:acme/manifests.git",
        "github.com:acme/manifests",
    ],
)
def test_repository_urls_are_compared_normalised(url: str) -> None:
    assert normalise_url(url) == "github.com/acme/manifests"


def test_local_paths_stay_paths() -> None:
    assert normalise_url("/srv/repos/manifests.git/") == "/srv/repos/manifests"
    assert normalise_url("/srv/repos/manifests.git") != normalise_url("/srv/other/manifests.git")


def test_only_sources_of_the_pushed_repository_and_branch_are_triggered() -> None:
    main = Recorder(FakeSource(url="git@github.com:acme/manifests.git"))
    staging = Recorder(FakeSource(branch="staging"))
    other = Recorder(FakeSource(url="https://github.com/acme/other.git"))
    client = client_for([main, staging, other])
    response = post(client, "github", *signed("github", github_push()))
    assert response.json() == {
        "status": "triggered",
        "message": "sync of 1 source(s) started",
        "sources": 1,
    }
    assert (main.triggers, staging.triggers, other.triggers) == (1, 0, 0)


def test_a_gitlab_payload_matches_by_its_http_url() -> None:
    sync = Recorder(FakeSource(url="https://gitlab.example.org/ops/manifests.git"))
    client = client_for([sync])
    payload = {
        "object_kind": "push",
        "ref": "refs/heads/main",
        "project": {"git_http_url": "https://gitlab.example.org/ops/manifests.git"},
        "repository": {"git_ssh_url": "git@gitlab.example.org:ops/manifests.git"},
    }
    assert post(client, "gitlab", *signed("gitlab", payload)).json()["status"] == "triggered"
    assert sync.triggers == 1


def test_a_push_to_an_undeployed_branch_is_ignored_saying_why() -> None:
    sync = Recorder(FakeSource())
    client = client_for([sync])
    response = post(client, "github", *signed("github", github_push(ref="refs/heads/feature")))
    assert response.status_code == 202
    assert response.json() == {
        "status": "ignored",
        "message": "push to feature; the sources of github.com/acme/manifests deploy main",
    }
    assert sync.triggers == 0


def test_a_push_of_an_unknown_repository_or_a_tag_is_ignored_saying_why() -> None:
    sync = Recorder(FakeSource())
    client = client_for([sync])
    unknown = post(
        client, "github", *signed("github", github_push(url="https://github.com/acme/elsewhere.git"))
    )
    assert unknown.status_code == 202
    assert unknown.json()["message"] == "no source deploys github.com/acme/elsewhere"
    tag = post(client, "github", *signed("github", github_push(ref="refs/tags/v1")))
    assert tag.status_code == 202
    assert "'refs/tags/v1' is not a branch" in tag.json()["message"]
    assert sync.triggers == 0


def test_a_ping_or_another_event_does_not_sync() -> None:
    sync = Recorder(FakeSource())
    client = client_for([sync])
    body, headers = signed("github", {"zen": "Keep it logically awesome."})
    pong = post(client, "github", body, {**headers, "X-GitHub-Event": "ping"})
    assert pong.status_code == 200 and pong.json()["status"] == "pong"
    body, headers = signed("github", github_push())
    issue = post(client, "github", body, {**headers, "X-GitHub-Event": "issues"})
    assert issue.status_code == 202 and issue.json()["status"] == "ignored"
    assert sync.triggers == 0


def test_a_push_to_another_branch_refreshes_the_previews_of_that_repository() -> None:
    sync = Recorder(FakeSource())
    previews = Recorder(FakeSource())  # a BranchPreviews: `.source.url` and `trigger()`
    elsewhere = Recorder(FakeSource(url="https://github.com/acme/other.git"))
    client = client_for([sync], previews=lambda: [previews, elsewhere])
    response = post(client, "github", *signed("github", github_push(ref="refs/heads/feature")))
    assert response.status_code == 202
    assert response.json()["status"] == "previewing"
    assert (sync.triggers, previews.triggers, elsewhere.triggers) == (0, 1, 0)


# --- validation ---------------------------------------------------------------------------


def test_a_verified_body_that_is_not_a_push_event_gets_422_naming_the_field() -> None:
    sync = Recorder(FakeSource())
    client = client_for([sync])
    for payload, field in (
        ({**github_push(), "ref": 12}, "ref"),
        ({**github_push(), "repository": "github.com/acme/app"}, "repository"),
        ({**github_push(), "repository": {"clone_url": ["a"]}}, "repository.clone_url"),
        (["not", "an", "object"], "(request)"),
    ):
        answer = post(client, "github", *signed("github", payload))  # type: ignore[arg-type]
        assert answer.status_code == 422, payload
        assert answer.json()["message"].startswith(f"not a push event: {field}"), answer.json()
    not_json = post(client, "github", *signed_raw(b"ref=refs/heads/main"))
    assert not_json.status_code == 422 and "not JSON" in not_json.json()["message"]
    assert sync.triggers == 0


def test_the_push_event_is_documented_in_openapi() -> None:
    client = client_for([])
    spec = client.app.openapi()  # type: ignore[attr-defined]
    body = spec["paths"]["/hooks/{provider}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"ref", "repository", "project"}


def signed_raw(body: bytes) -> tuple[bytes, dict[str, str]]:
    digest = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return body, {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": f"sha256={digest}",
    }


def test_a_push_sent_to_a_control_plane_that_does_not_lead_is_refused_and_can_be_sent_again() -> None:
    source = FakeSource()
    sync = Recorder(source)
    leading = {"reason": "this control plane does not lead; cp1#ab12cd does"}
    client = client_for([sync], follower=lambda: leading["reason"])
    body, headers = signed("github", github_push())
    refused = post(client, "github", body, headers)
    assert refused.status_code == 503
    assert refused.json()["status"] == "not leader" and "cp1#ab12cd does" in refused.json()["message"]
    assert sync.triggers == 0
    leading["reason"] = ""  # this one leads now: the same delivery is not taken for a duplicate
    assert post(client, "github", body, headers).status_code == 200
    assert sync.triggers == 1

"""The paged pod list: `limit` pods a page in a stable order, `metadata.continue` to the next,
every pod of the list a walk began on exactly once however the pods change meanwhile; clear
errors for tokens that are not tokens (400), lists no longer kept (410, with a token that goes
on in the current list) and bad parameters (422 naming the field); the unpaged answer as it
always was; and `gitops status` reading either."""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from gitops.api.app import create_app
from gitops.api.readmodel import continue_token
from gitops.cli import _first_pods
from gitops.model import ObjectKey, Pod, PodName, PodStatus, Revision
from gitops.store import Store
from tests.api.sample import NOW, SECRET_VALUE, sample_store
from tests.planner.factories import secret
from tests.specs import pod_spec


def _add(store: Store, names: list[str]) -> None:
    owner = ObjectKey("Deployment", "default", "bulk")
    pods = [(Pod("default", PodName(name), owner, "h", pod_spec("bulk:1")), "test") for name in names]
    store.apply_pod_changes(create=pods, stop=[], bind={}, pending_reasons={}, now=NOW)


def _client(store: Store) -> TestClient:
    return TestClient(create_app(store, join_token="j", sources=["git:repo"], clock=lambda: NOW))


def _walk(
    client: TestClient, limit: int, order: str = "name", between: Any = None
) -> Iterator[dict[str, Any]]:
    """Every page of the list, following `continue`; `between()` runs after each page."""
    params: dict[str, Any] = {"limit": limit, "order": order}
    while True:
        answer = client.get("/api/v1/pods", params=params)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        yield page
        if between is not None:
            between()
        token = page["metadata"].get("continue")
        if not token:
            return
        params = {"limit": limit, "order": order, "continue": token}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = sample_store(tmp_path)
    _add(store, [f"bulk-{i:03d}" for i in range(40)])
    return store


def test_without_limit_the_answer_is_every_pod_as_before(store: Store) -> None:
    client = _client(store)
    listed = client.get("/api/v1/pods").json()
    assert isinstance(listed, list) and len(listed) == 43
    assert [p["id"] for p in listed] == sorted(p["id"] for p in listed)
    assert client.get("/api/v1/pods?limit=0").json() == listed
    assert listed == client.app.state.read_model.pods()  # type: ignore[attr-defined]


def test_a_page_is_a_kubernetes_list_with_a_continue_token_and_what_remains(store: Store) -> None:
    page = _client(store).get("/api/v1/pods?limit=10").json()
    assert page["kind"] == "PodList" and page["apiVersion"] == "v1"
    assert len(page["items"]) == 10 and page["metadata"]["remainingItemCount"] == 33
    assert page["metadata"]["continue"] and page["metadata"]["resourceVersion"]
    assert [p["id"] for p in page["items"]] == [f"default/bulk-{i:03d}" for i in range(10)]


@pytest.mark.parametrize("limit", [1, 7, 43, 500])
@pytest.mark.parametrize("order", ["name", "problems"])
def test_walking_the_pages_gives_every_pod_once_in_order(store: Store, limit: int, order: str) -> None:
    client = _client(store)
    pages = list(_walk(client, limit, order))
    ids = [p["id"] for page in pages for p in page["items"]]
    assert sorted(ids) == sorted(p.id for p in store.pods()) and len(set(ids)) == len(ids)
    assert len(pages) == -(-43 // limit)
    assert "continue" not in pages[-1]["metadata"] and pages[-1]["metadata"]["remainingItemCount"] == 0
    if order == "problems":  # the three running ready pods of `web` last
        assert all(p["ready"] for p in pages[-1]["items"][-3:]) and not any(
            p["ready"] for page in pages for p in page["items"][:-3] if p["id"].startswith("default/bulk")
        )
    else:
        assert ids == sorted(ids)


CHANGES = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 99)),
        st.tuples(st.just("delete"), st.integers(0, 99)),
        st.tuples(st.just("report"), st.integers(0, 99), st.booleans()),
    ),
    max_size=12,
)


@settings(max_examples=25, deadline=None)
@given(limit=st.integers(1, 15), order=st.sampled_from(["name", "problems"]), changes=CHANGES)
def test_a_walk_sees_the_list_it_began_on_whatever_changes_meanwhile(
    limit: int, order: str, changes: list[tuple[Any, ...]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = sample_store(Path(tmp))
        _add(store, [f"bulk-{i:03d}" for i in range(0, 60, 2)])
        client = _client(store)
        before = client.get("/api/v1/pods", params={"order": order}).json()
        pending = list(changes)

        def change() -> None:
            if not pending:
                return
            kind, n, *rest = pending.pop()
            name = f"bulk-{n:03d}"
            pods = {p.name: p for p in store.pods()}
            if kind == "add" and name not in pods:
                _add(store, [name])
            elif kind == "delete" and name in pods:
                store.delete_pod(pods[name].id, NOW)
            elif kind == "report":
                pod = next((p for p in store.pods() if p.node is not None), None)
                if pod is not None and pod.node is not None:
                    store.heartbeat(pod.node, [PodStatus(pod.id, "Running", rest[0], "", pod.pod_ip)], NOW)

        walked = [p for page in _walk(client, limit, order, change) for p in page["items"]]
        assert walked == before  # the very list, in its order: every pod once
        store.close()


def test_a_token_that_is_not_one_is_a_400_naming_continue(store: Store) -> None:
    client = _client(store)
    for token in ("garbage!", "e30", base64.urlsafe_b64encode(b'["v", "name", 3]').decode(), "x" * 40):
        answer = client.get("/api/v1/pods", params={"limit": 5, "continue": token})
        assert answer.status_code == 400, token
        assert answer.json()["detail"].startswith("continue: not a continue token")
    token = client.get("/api/v1/pods?limit=5").json()["metadata"]["continue"]
    other = client.get("/api/v1/pods", params={"limit": 5, "continue": token, "order": "problems"})
    assert other.status_code == 400
    assert other.json()["detail"] == "continue: the token pages in order=name, not order=problems"


def test_bad_parameters_are_a_422_naming_the_field(store: Store) -> None:
    client = _client(store)
    assert client.get("/api/v1/pods?limit=-1").json()["detail"] == (
        "query.limit: Input should be greater than or equal to 0"
    )
    assert client.get("/api/v1/pods?limit=ten").status_code == 422
    assert client.get("/api/v1/pods?order=newest").json()["detail"] == (
        "query.order: Input should be 'name' or 'problems'"
    )


def test_a_token_of_a_list_no_longer_kept_is_a_410_with_a_token_to_go_on(store: Store) -> None:
    client = _client(store)
    first = client.get("/api/v1/pods?limit=5").json()
    token = first["metadata"]["continue"]
    for i in range(20):  # twenty newer lists: more than are kept
        _add(store, [f"late-{i:02d}"])
        client.get("/api/v1/pods?limit=1")
    stale = client.get("/api/v1/pods", params={"limit": 5, "continue": token})
    assert stale.status_code == 410
    assert stale.json()["detail"].startswith("continue: the list this token pages through is no longer kept")
    resumed = [p["id"] for page in _walk_from(client, stale.json()["continue"]) for p in page["items"]]
    now = [p["id"] for p in client.get("/api/v1/pods").json()]
    assert resumed == [i for i in now if i > first["items"][-1]["id"]]


def _walk_from(client: TestClient, token: str) -> Iterator[dict[str, Any]]:
    while token:
        page = client.get("/api/v1/pods", params={"limit": 7, "continue": token}).json()
        yield page
        token = page["metadata"].get("continue", "")


def test_a_token_of_another_server_is_a_410(store: Store) -> None:
    answer = _client(store).get("/api/v1/pods", params={"continue": continue_token("0.1", "name", "a/b")})
    assert answer.status_code == 410 and answer.json()["continue"]


def test_pages_of_an_older_list_are_redacted_with_what_the_server_knows_now(store: Store) -> None:
    late = "Became-A-Secret-Later-7301"
    pod = next(p for p in store.pods() if p.node is not None)
    assert pod.node is not None
    store.heartbeat(pod.node, [PodStatus(pod.id, "Running", False, f"said {late}", pod.pod_ip)], NOW)
    client = _client(store)
    token = client.get("/api/v1/pods?limit=1").json()["metadata"]["continue"]
    desired = store.desired()
    store.apply_revision(Revision("git:repo", "e" * 40), [*desired, secret("late", value=late)], [], NOW)
    rest = client.get("/api/v1/pods", params={"limit": 100, "continue": token})
    assert rest.status_code == 200
    assert late not in rest.text and SECRET_VALUE not in rest.text
    assert any(p["reason"] == "said [redacted]" for p in rest.json()["items"])


def test_gitops_status_reads_the_first_page_problems_first_or_an_older_servers_list() -> None:
    pods = [{"id": f"default/p{i}", "ready": i % 2 == 0} for i in range(6)]
    asked: list[httpx.URL] = []

    def paged(request: httpx.Request) -> httpx.Response:
        asked.append(request.url)
        return httpx.Response(200, json={"kind": "PodList", "metadata": {}, "items": pods[:2]})

    def older(request: httpx.Request) -> httpx.Response:  # before paging: `limit` was problems first
        return httpx.Response(200, json=pods[:2])

    with httpx.Client(base_url="http://plane", transport=httpx.MockTransport(paged)) as http:
        assert _first_pods(http, 2) == pods[:2]
    assert asked[0].params["order"] == "problems" and asked[0].params["limit"] == "2"
    with httpx.Client(base_url="http://plane", transport=httpx.MockTransport(older)) as http:
        assert _first_pods(http, 2) == pods[:2]

"""The status page: every section rendered from the store, escaped, redacted, paginated,
and served from a view that is rebuilt only when the store changes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gitops.api.app import create_app
from gitops.api.page import PAGES, PER_PAGE
from gitops.api.view import ViewCache
from gitops.model import Node, NodeName, ObjectKey, Pod, PodName
from gitops.store import Store
from tests.api.sample import HOSTILE, NOW, SECRET_VALUE, sample_store
from tests.conftest import wait_for
from tests.specs import pod_spec


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return sample_store(tmp_path)


@pytest.fixture
def client(store: Store) -> TestClient:
    return TestClient(create_app(store, join_token="j", sources=["git:repo"], clock=lambda: NOW))


def test_every_page_renders_as_html_with_navigation(client: TestClient) -> None:
    for path, title in PAGES:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        assert f"<title>gitops: {title}</title>" in response.text
        assert all(f'href="{href}"' in response.text for href, _ in PAGES)
        assert "default-src 'none'" in response.headers["content-security-policy"]


def test_the_overview_shows_sources_commits_errors_and_counts(client: TestClient) -> None:
    text = client.get("/").text
    assert "git:repo" in text
    assert "Deploy web" in text and "Tess Ter" in text and "a" * 12 in text
    assert "Break it" in text and "b" * 12 in text
    assert "spec.replicas: expected integer &gt;= 0, got &quot;three&quot;" in text
    assert "The newest revision was rejected" in text
    assert "nodes ready<b>2 / 2</b>" in text and "pods ready<b>3 / 3</b>" in text
    assert '<section id="previews"><h2>Previews</h2><p class="muted">no previews</p>' in text


def test_nodes_show_readiness_requests_against_capacity_labels_and_taints(client: TestClient) -> None:
    text = client.get("/nodes").text
    assert "n1" in text and "n2" in text and "Ready" in text
    assert "750m / 4000m" in text  # three pods of 250m on n1
    assert 'style="width:19%"' in text  # the CPU bar
    assert "192.0Mi / 8.0Gi" in text
    assert "zone=a" in text and "dedicated=gpu:NoSchedule" in text
    assert ">10s<" in text  # heartbeat age


def test_workloads_show_counters_progress_and_state(client: TestClient) -> None:
    text = client.get("/workloads").text
    assert "default/web" in text
    assert "3 / 3 updated and available" in text
    assert 'class="bar done"' in text


def test_pods_show_phase_node_ip_restarts_age_and_redacted_log(client: TestClient) -> None:
    text = client.get("/pods").text
    assert "Showing 1-3 of 3 pods" in text
    assert "Running" in text and "172.17.0.2" in text and ">30s<" in text
    assert "token=[redacted]" in text and SECRET_VALUE not in text


def test_services_show_vip_ports_and_ready_endpoints(client: TestClient, store: Store) -> None:
    text = client.get("/services").text
    vip = next(iter(store.vips().values()))
    assert "default/web" in text and vip in text
    assert "http 80/TCP -&gt; 8080" in text
    assert '<td class="num ok">3</td>' in text


def test_events_and_revisions_with_their_diff_summary(client: TestClient) -> None:
    assert "RevisionApplied" in client.get("/events").text
    text = client.get("/revisions").text
    assert "3 created" in text and "Deployment default/web" in text
    assert "1 error(s)" in text


def test_strings_from_manifests_and_nodes_are_escaped(client: TestClient) -> None:
    for path, _ in PAGES:
        text = client.get(path).text
        assert "<script>window.__pwned" not in text, path
        assert "<img src=x" not in text, path
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in client.get("/nodes").text
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in client.get("/pods").text


def _many_pods(store: Store, n: int) -> None:
    owner = ObjectKey("Deployment", "default", "bulk")
    pods = [
        (Pod("default", PodName(f"bulk-{i:04d}"), owner, "h", pod_spec("bulk:1")), "test") for i in range(n)
    ]
    store.apply_pod_changes(create=pods, stop=[], bind={}, pending_reasons={}, now=NOW)


def test_pods_are_paginated_and_filtered_with_a_stated_count(store: Store, client: TestClient) -> None:
    _many_pods(store, 450)
    text = client.get("/pods").text
    assert f"Showing 1-{PER_PAGE} of 453 pods" in text
    assert text.count("<tr><td><b>") == PER_PAGE
    assert 'href="/pods?page=2"' in text
    last = client.get("/pods?page=3").text
    assert "Showing 401-453 of 453 pods" in last and "page 3 of 3" in last
    assert "Showing 401-453" in client.get("/pods?page=99").text  # clamped, not an error
    assert "Showing 1-200" in client.get("/pods?page=abc").text
    filtered = client.get("/pods", params={"q": "BULK-001"}).text
    assert "Showing 1-10 of 10 pods (filtered from 453)" in filtered
    running = client.get("/pods", params={"phase": "Running"}).text
    assert "of 3 pods (filtered from 453)" in running
    assert '<option value="Running" selected>' in running


def test_partial_answers_are_the_main_fragment_and_304_when_unchanged(client: TestClient) -> None:
    full = client.get("/pods")
    etag = full.headers["etag"]
    part = client.get("/pods?partial=1")
    assert part.status_code == 200 and "<html" not in part.text and '<section id="pods">' in part.text
    assert client.get("/pods?partial=1", headers={"If-None-Match": etag}).status_code == 304


def test_the_view_is_cached_and_rebuilt_when_the_store_changes(store: Store) -> None:
    builds: list[float] = []

    class Counting(ViewCache):
        def _build(self) -> Any:
            builds.append(time.monotonic())
            return super()._build()

    cache = Counting(store, clock=lambda: NOW, ttl=0.05, max_age=60)
    first = cache.get()
    assert cache.get() is first and len(builds) == 1
    time.sleep(0.06)
    cache.current()  # starts a check in the background: nothing changed, nothing rebuilt
    time.sleep(0.1)
    assert cache.get() is first and len(builds) == 1
    _many_pods(store, 1)
    time.sleep(0.06)
    cache.current()
    changed = wait_for(lambda: cache.get() if cache.get() is not first else None, timeout=5, what="rebuild")
    assert changed.counts.pods == 4 and len(builds) == 2


def test_answers_see_their_own_writes_but_never_wait_for_a_slow_rebuild(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers once rebuilt the view synchronously: at 8,000 pods on a changing cluster each
    took half a second or more, and `gitops status` (five answers) over three seconds."""
    delay = [0.0]
    added = iter(range(1000))

    def _one_more(store: Store) -> None:
        owner = ObjectKey("Deployment", "default", "more")
        pod = Pod("default", PodName(f"more-{next(added)}"), owner, "h", pod_spec("more:1"))
        store.apply_pod_changes(create=[(pod, "test")], stop=[], bind={}, pending_reasons={}, now=NOW)

    cache = ViewCache(store, clock=lambda: NOW, ttl=60, max_age=60)
    build = cache.builder.build

    def slow_build(now: float) -> Any:
        time.sleep(delay[0])
        return build(now)

    monkeypatch.setattr(cache.builder, "build", slow_build)
    first = cache.fresh(0.3)
    _one_more(store)
    seen = cache.fresh(0.3)  # a quick rebuild: the write is seen at once
    assert seen is not first and seen.counts.pods == first.counts.pods + 1

    delay[0] = 0.5
    _one_more(store)
    cache.fresh(0.3)  # this rebuild takes 0.5 s: the answer waits 0.3 s, then has the old view
    wait_for(lambda: cache.current() is not seen, timeout=5, what="the slow rebuild")
    slow = cache.current()
    assert slow is not None and slow.counts.pods == seen.counts.pods + 1
    _one_more(store)
    started = time.monotonic()
    assert cache.fresh(0.3) is slow  # the last build was slow: the last view, without waiting
    assert time.monotonic() - started < 0.2
    wait_for(lambda: cache.fresh(0.3) is not slow, timeout=10, what="a later answer with the write")


def test_without_caching_every_request_builds_its_view(store: Store) -> None:
    cache = ViewCache(store, clock=lambda: NOW, ttl=0)
    assert cache.current() is None
    assert cache.get() is not cache.get()


def test_previews_are_listed_with_a_link_and_marked_stale_once_the_cluster_moves(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'p.db'}")
    store.save_preview(
        source="git:repo",
        ref="refs/heads/<b>feature</b>",
        base="a" * 40,
        head="c" * 40,
        state_version=store.snapshot(NOW).version,
        computed_at=NOW - 5,
        report={"status": "changes", "counts": {"pods_created": 2}},
        markdown="### preview",
    )
    client = TestClient(create_app(store, join_token="j", clock=lambda: NOW, page_cache_seconds=0))
    text = client.get("/").text
    assert "refs/heads/&lt;b&gt;feature&lt;/b&gt;" in text and "<b>feature" not in text
    assert 'href="/api/v1/previews/refs/heads/%3Cb%3Efeature%3C/b%3E?source=git%3Arepo"' in text
    assert "c" * 12 in text and "pods_created 2" in text and ">5s ago<" in text
    assert "stale" not in text
    store.register_node(Node(NodeName("n9"), "192.0.2.9", 1000, 2**30), "t", now=NOW)
    assert "(stale: the cluster changed since)" in client.get("/").text


def test_hostile_label_survives_round_trip_only_as_text() -> None:
    from gitops.api.page import esc

    assert "<" not in esc(HOSTILE) and '"' not in esc(HOSTILE)

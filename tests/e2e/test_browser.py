"""The status page in a real headless Chromium (Debian's package, driven by Playwright).

The page loads and works without JavaScript; with it, a pod that appears in the store
shows up without a reload; a `<script>` (and an `<img onerror>`) in a label is shown as
text and never runs. A screenshot of each page is written to `test-artifacts/screenshots/`
(or `$GITOPS_SCREENSHOTS`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from gitops.api.app import create_app
from gitops.api.page import PAGES
from gitops.model import ObjectKey, Pod, PodName
from gitops.store import Store
from tests.api.sample import HOSTILE, NOW, SECRET_VALUE, sample_store
from tests.conftest import require
from tests.servers import free_port
from tests.specs import pod_spec

CHROMIUM = os.environ.get("GITOPS_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("GITOPS_SCREENSHOTS", ROOT / "test-artifacts" / "screenshots"))


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    return sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _playwright()
    require(sync_playwright is not None, "Playwright (pip install playwright)")
    require(Path(CHROMIUM).exists(), f"Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


class Served:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.port = free_port()
        app = create_app(
            store, join_token="j", sources=["git:repo"], clock=lambda: NOW, page_cache_seconds=0.2
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the app did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with Served(sample_store(tmp_path)) as s:
        yield s


def test_each_page_loads_and_is_screenshotted(browser: Any, served: Served) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    for path, title in PAGES:
        response = page.goto(served.url + path)
        assert response is not None and response.status == 200, path
        assert page.title() == f"gitops: {title}"
        assert page.locator("#live section").count() >= 1
        name = path.strip("/") or "overview"
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        assert (SHOTS / f"{name}.png").stat().st_size > 1000
    assert page.locator("#live-state").inner_text() == "live"
    assert not errors, errors  # no CSP violations, no script errors
    page.close()


def test_a_new_pod_appears_without_a_reload(browser: Any, served: Served) -> None:
    page = browser.new_page()
    page.goto(served.url + "/pods")
    page.evaluate("window.__sameDocument = true")
    assert "newcomer" not in page.inner_text("#live")
    owner = ObjectKey("Deployment", "default", "newcomer")
    pod = Pod("default", PodName("newcomer-abc12"), owner, "h", pod_spec("newcomer:1"))
    served.store.apply_pod_changes(create=[(pod, "test")], stop=[], bind={}, pending_reasons={}, now=NOW)
    page.get_by_text("default/newcomer-abc12").wait_for(timeout=15_000)
    assert page.evaluate("window.__sameDocument") is True
    assert "Showing 1-4 of 4 pods" in page.inner_text("#pod-count")
    page.close()


def test_a_script_in_a_label_is_text_and_never_runs(browser: Any, served: Served) -> None:
    page = browser.new_page()
    for path in ("/nodes", "/pods"):
        page.goto(served.url + path)
        page.wait_for_timeout(2500)  # let a live update swap the content in too
        assert page.evaluate("typeof window.__pwned") == "undefined", path
        assert "<script>window.__pwned = 1</script>" in page.inner_text("#live"), path
        assert HOSTILE in page.inner_text("#live"), path
        assert SECRET_VALUE not in page.content(), path
    page.close()


def test_the_page_works_without_javascript(browser: Any, served: Served, tmp_path: Path) -> None:
    owner = ObjectKey("Deployment", "default", "bulk")
    pods = [(Pod("default", PodName(f"bulk-{i:03d}"), owner, "h", pod_spec("b:1")), "t") for i in range(250)]
    served.store.apply_pod_changes(create=pods, stop=[], bind={}, pending_reasons={}, now=NOW)
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(served.url + "/pods")
    assert page.locator("#live-state").inner_text() == "reload to update"
    assert "of 253 pods" in page.inner_text("#pod-count")
    page.get_by_role("link", name="next →").first.click()
    assert "Showing 201-253 of 253 pods" in page.inner_text("#pod-count")
    page.fill("input[name=q]", "bulk-24")
    page.click("button[type=submit]")
    assert "of 10 pods (filtered from 253)" in page.inner_text("#pod-count")
    context.close()

"""Each source owns the objects it declared: a revision of one source never prunes another's,
a claim on another source's object is refused (the first owner keeps it), an emptied source
is refused rather than wiping its objects, and a refused revision applies once the obstacle
is gone. Terminal problems (a full service range) are recorded, never retried forever."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitops.model import ObjectKey, Revision
from gitops.store import Refused, Store
from gitops.sync.service import SyncService, sync_once
from gitops.sync.sources import FolderSource
from tests.planner.factories import configmap


def config(name: str, value: str = "1") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: ConfigMap
        metadata: {{name: {name}}}
        data: {{value: "{value}"}}
        """
    )


def svc(name: str) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: {name}}}
        spec:
          selector: {{app: {name}}}
          ports: [{{port: 80}}]
        """
    )


def folder(root: Path, name: str, files: dict[str, str]) -> FolderSource:
    path = root / name
    path.mkdir(exist_ok=True)
    for old in path.glob("*.yaml"):
        old.unlink()
    for rel, text in files.items():
        (path / rel).write_text(text)
    return FolderSource(path)


def keys(store: Store) -> set[str]:
    return {k.name for k in store.owners()}


def test_a_revision_of_one_source_never_prunes_another_sources_objects(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    a = folder(tmp_path, "a", {"a.yaml": config("from-a")})
    b = folder(tmp_path, "b", {"b.yaml": config("from-b")})
    assert sync_once(store, a) is not None
    record = sync_once(store, b)
    assert record is not None and record.status == "applied" and record.summary["deleted"] == []
    assert keys(store) == {"from-a", "from-b"}
    folder(tmp_path, "b", {"b2.yaml": config("other-b")})
    record = sync_once(store, b)
    assert record is not None and record.summary["deleted"] == ["ConfigMap default/from-b"]
    assert keys(store) == {"from-a", "other-b"}
    owners = {k.name: src for k, src in store.owners().items()}
    assert owners == {"from-a": a.name, "other-b": b.name}


def test_a_claim_on_another_sources_object_is_refused_and_the_first_owner_keeps_it(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    a = folder(tmp_path, "a", {"shared.yaml": config("shared", "a")})
    b = folder(tmp_path, "b", {"mine.yaml": config("mine"), "dup.yaml": config("shared", "b")})
    sync_once(store, a)
    record = sync_once(store, b)
    assert record is not None and record.status == "rejected"
    (error,) = record.errors
    assert error.startswith("dup.yaml:1:1: ConfigMap default/shared: declared by this source")
    assert b.name in error and a.name in error and "shared.yaml:1:1" in error
    assert "keeps it" in error
    assert keys(store) == {"shared"}  # nothing of b's revision applied
    (shared,) = store.desired()
    assert shared.data == {"value": "a"}
    # Asked again with nothing changed, it is not recorded again.
    assert sync_once(store, b) is None
    assert len([r for r in store.revisions() if r.source == b.name]) == 1
    # Once a gives the object up, b's very same revision applies.
    folder(tmp_path, "a", {"other.yaml": config("other")})
    sync_once(store, a)
    record = sync_once(store, b)
    assert record is not None and record.status == "applied"
    assert {k.name: src for k, src in store.owners().items()} == {
        "other": a.name,
        "mine": b.name,
        "shared": b.name,
    }


def test_a_refused_revision_is_retried_when_another_source_applies(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    a = folder(tmp_path, "a", {"shared.yaml": config("shared")})
    b = folder(tmp_path, "b", {"shared.yaml": config("shared")})
    sync_a = SyncService(store, a, interval=3600)
    sync_b = SyncService(store, b, interval=3600)
    sync_a.sync()
    sync_b.sync()
    assert sync_b.waiting
    folder(tmp_path, "a", {})
    (tmp_path / "a" / "x.yaml").write_text(config("x"))
    sync_a.sync()
    assert sync_b.sync() is not None and not sync_b.waiting
    assert store.owners()[ObjectKey("ConfigMap", "default", "shared")] == b.name


def test_an_emptied_source_is_refused_and_everything_keeps_running(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    a = folder(tmp_path, "a", {"one.yaml": config("one"), "two.yaml": config("two")})
    sync_once(store, a)
    folder(tmp_path, "a", {})
    record = sync_once(store, a)
    assert record is not None and record.status == "rejected"
    (error,) = record.errors
    assert "holds no objects" in error and "delete all 2 objects" in error
    assert "--allow-empty" in error
    assert keys(store) == {"one", "two"}
    # The operator says it is meant: the same revision now applies.
    record = sync_once(store, a, allow_empty=True)
    assert record is not None and record.status == "applied"
    assert keys(store) == set()


def test_a_first_empty_revision_deletes_nothing_and_is_applied(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    record = sync_once(store, folder(tmp_path, "a", {}))
    assert record is not None and record.status == "applied"


def test_a_full_service_range_rejects_the_revision_with_the_reason(tmp_path: Path) -> None:
    # A /29 holds 8 addresses: 5 usable for Services (network, the one after it and broadcast skipped).
    store = Store(f"sqlite:///{tmp_path / 's.db'}", service_cidr="10.9.0.0/29")
    a = folder(tmp_path, "a", {f"s{i}.yaml": svc(f"s{i}") for i in range(4)})
    b = folder(tmp_path, "b", {f"t{i}.yaml": svc(f"t{i}") for i in range(3)})
    assert sync_once(store, a) is not None
    record = sync_once(store, b)
    assert record is not None and record.status == "rejected"
    assert "service range 10.9.0.0/29 is exhausted" in record.errors[0]
    assert "--service-cidr" in record.errors[0]
    assert sync_once(store, b) is None  # recorded once, not again at every poll
    assert len(store.vips()) == 4
    folder(tmp_path, "a", {"s0.yaml": svc("s0")})
    sync_once(store, a)
    record = sync_once(store, b)
    assert record is not None and record.status == "applied"
    assert len(set(store.vips().values())) == 4


# --- property: the desired state is the union of each source's latest applied revision ----

NAMES = ("a", "b", "c", "d")


@st.composite
def revisions(draw: st.DrawFn) -> list[tuple[int, dict[str, int]]]:
    """Revisions of three sources: (source, {object name: version}) in the order they sync."""
    steps = draw(st.lists(st.integers(0, 2), min_size=1, max_size=12))
    return [
        (source, draw(st.dictionaries(st.sampled_from(NAMES), st.integers(0, 2), max_size=3)))
        for source in steps
    ]


@settings(max_examples=60, deadline=None)
@given(revisions())
def test_the_desired_state_is_the_union_of_each_sources_latest_applied_revision(
    steps: list[tuple[int, dict[str, int]]],
) -> None:
    """Sources may empty themselves here (allow_empty): only conflicts are refused."""
    store = Store("sqlite://")
    latest: dict[str, dict[str, int]] = {}  # source -> what its latest applied revision declared
    for n, (index, objects) in enumerate(steps):
        source = f"dir:/src{index}"
        manifests = [configmap(name, version=str(v)) for name, v in objects.items()]
        owners = {name: s for s, declared in latest.items() for name in declared}
        claimed = {name for name in objects if owners.get(name, source) != source}
        try:
            store.apply_revision(Revision(source, f"r{n}"), manifests, [], now=float(n), allow_empty=True)
            applied = True
        except Refused as refusal:
            assert len(refusal.errors) == len(claimed)
            applied = False
        assert applied == (not claimed), (source, objects, owners)
        if applied:
            latest[source] = objects
        expected = {name: (s, v) for s, declared in latest.items() for name, v in declared.items()}
        desired = {m.key.name: (store.owners()[m.key], int(m.data["version"])) for m in store.desired()}
        assert desired == expected


def test_status_says_per_source_which_one_is_held_at_an_older_revision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With one desired state per source, a newer revision of A must not hide that B is held."""
    import httpx

    from gitops.cli import main
    from gitops.server import ControlPlane
    from tests.servers import free_port

    a = folder(tmp_path, "a", {"shared.yaml": config("shared")})
    b = folder(tmp_path, "b", {"mine.yaml": config("mine"), "shared.yaml": config("shared")})
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    plane = ControlPlane(store, [a, b], port=free_port(), poll_interval=3600)  # keys the folder ids
    sync_once(store, a)
    sync_once(store, b)  # refused: a owns "shared"
    folder(tmp_path, "a", {"shared.yaml": config("shared", "2")})
    sync_once(store, a)  # a newer applied revision than b's rejection
    plane.start()
    try:
        status = httpx.get(f"{plane.url}/api/v1/status").json()
        assert status["last_rejected"] is None  # globally, the newest revision applied
        rows = {row["source"]: row for row in status["per_source"]}
        assert rows[b.name]["last_rejected"]["errors"][0].startswith(
            "shared.yaml:1:1: ConfigMap default/shared"
        )
        assert rows[a.name]["last_rejected"] is None and rows[a.name]["objects"] == 1
        capsys.readouterr()
        assert main(["status", "--server", plane.url]) == 0
        out = capsys.readouterr().out
        assert f"{b.name}: 0 object(s) at nothing applied" in out
        assert "HELD:" in out and "declared by this source" in out
        page = httpx.get(f"{plane.url}/").text
        assert "held:" in page and "in sync" in page
    finally:
        plane.stop()

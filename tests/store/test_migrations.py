"""The schema moves by Alembic migrations: a release 0.1 database is upgraded with its data,
its Secret values end up sealed, and servers starting together on one database both come up."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, insert, inspect, select, text

from gitops.controller import reconcile_once
from gitops.model import ObjectKey, Revision
from gitops.store import SecretKeyError, SecretKeys, Store
from gitops.store.migrate import head, migrate
from gitops.store.tables import Base
from tests.planner.factories import deployment
from tests.store.fixtures import release_0_1_tables as old

FIXTURE = Path(__file__).with_name("fixtures") / "release-0.1-rows.json"
SECRET = b"not-a-real-secret"
CREDENTIALED = "git:https://deploy:s3cr3t-t0ken@git.example.org/org/app.git#main"


def release_0_1_database(url: str) -> dict[str, list[dict[str, Any]]]:
    """A database as release 0.1 left it: its own tables (no alembic_version), with the rows
    it wrote for manifests-example/ on one node, and a git source with a password in its URL."""
    rows: dict[str, list[dict[str, Any]]] = json.loads(FIXTURE.read_text())
    rows["revisions"].append({**rows["revisions"][0], "id": 99, "source": CREDENTIALED, "revision": "c" * 40})
    engine = create_engine(url)
    if engine.dialect.name == "postgresql":  # 0.1 could not store 2 GiB there (INTEGER)
        rows["nodes"] = [{**n, "memory_bytes": 2**30} for n in rows["nodes"]]
    old.Base.metadata.create_all(engine)
    with engine.begin() as conn:
        for table in old.Base.metadata.sorted_tables:
            # Ids are left to the database, as release 0.1 left them (PostgreSQL's sequences move).
            records = [
                {k: v for k, v in r.items() if k != "id" or table.name not in ("events", "revisions")}
                for r in rows[table.name]
            ]
            if records:
                conn.execute(insert(table), records)
    engine.dispose()
    return rows


def everything(url: str) -> str:
    """Every row of every table, as text."""
    engine = create_engine(url)
    with engine.connect() as conn:
        dump = [
            json.dumps([list(r) for r in conn.execute(text(f"SELECT * FROM {name}"))], default=str)
            for name in inspect(engine).get_table_names()
        ]
    engine.dispose()
    return "\n".join(dump)


def test_the_models_and_the_migrations_describe_the_same_schema(url: str) -> None:
    engine = create_engine(url)
    migrate(engine)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        # What the models cannot say: the trigger that records deleted pods (0012), which a
        # later migration rebuilding `pods` would drop without a word.
        if engine.dialect.name == "postgresql":
            found = "SELECT tgname FROM pg_trigger WHERE tgrelid = 'pods'::regclass"
        else:
            found = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'pods'"
        triggers = conn.execute(text(found))
        assert "pods_deleted" in {name for (name,) in triggers}
    assert differences == []
    engine.dispose()


def test_a_release_0_1_database_is_upgraded_and_loses_nothing(url: str, tmp_path: Path) -> None:
    rows = release_0_1_database(url)
    assert SECRET.decode() in everything(url)  # 0.1 kept it in the clear

    store = Store(url, keys=SecretKeys.from_file(tmp_path / "key"))

    with store.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head()
    assert len(store.revisions(limit=100)) == len(rows["revisions"])
    # Events naming a pod by a plain hash over a Secret value are gone; all others are kept.
    plain = rows["pods"][0]["template_hash"]
    kept = [e for e in rows["events"] if plain not in e["object"] and plain not in e["message"]]
    assert [e.message for e in reversed(store.events(limit=100))][: len(kept)] == [e["message"] for e in kept]
    assert {m.key for m in store.desired()} == {
        ObjectKey(r["kind"], r["namespace"], r["name"]) for r in rows["objects"]
    }
    assert set(store.owners().values()) == {"dir:/srv/manifests"}  # from the revision that wrote them
    secret = next(m for m in store.desired() if m.key.kind == "Secret")
    assert secret.body["stringData"] == {"token": SECRET.decode()}
    assert [p.id for p in store.pods()] == sorted(r["id"] for r in rows["pods"])
    token_files = {f.path: f for p in store.pods() for f in p.spec.main.files if f.path.endswith("/token")}
    assert token_files and all(f.content == SECRET and f.secret for f in token_files.values())
    (node,) = store.nodes(now=1003.0)
    assert (node.node.memory_bytes, node.node.ready) == (rows["nodes"][0]["memory_bytes"], True)
    assert store.vips() == {ObjectKey("Service", "demo", "web"): rows["services"][0]["vip"]}
    assert [r.source for r in store.revisions(limit=100) if r.revision == "c" * 40] == [
        "git:https://***@git.example.org/org/app.git#main"
    ]

    dump = everything(url)
    for form in (SECRET, base64.b64encode(SECRET)):
        assert form.decode() not in dump, "a Secret value is still stored in the clear"
    assert "s3cr3t-t0ken" not in dump

    # The upgraded store goes on working: a new node of 64 GiB, a pass, a new revision.
    from gitops.model import Node, NodeName

    store.register_node(Node(NodeName("big"), "192.0.2.20", 64000, 64 * 2**30), "t", now=1010.0)
    assert {r.node.memory_bytes for r in store.nodes(now=1010.0)} >= {64 * 2**30}
    reconcile_once(store, now=1011.0)
    store.apply_revision(Revision("dir:/srv/manifests", "d" * 16), [deployment("api")], [], now=1012.0)


def test_reopening_with_another_key_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    Store(url, keys=SecretKeys.from_file(tmp_path / "key"))
    with pytest.raises(SecretKeyError, match="sealed with another key"):
        Store(url, keys=SecretKeys.from_file(tmp_path / "other"))
    Store(url, keys=SecretKeys.from_file(tmp_path / "key"))


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    SecretKeys.from_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    with pytest.raises(SecretKeyError, match="chmod 600"):
        SecretKeys.from_file(path)


def test_a_database_from_an_early_0_1_build_gets_the_columns_it_added_later(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    release_0_1_database(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE pods DROP COLUMN last_log"))
        conn.execute(text("ALTER TABLE pods DROP COLUMN ready_since"))
    store = Store(url)
    assert {p.last_log for p in store.pods()} == {""}
    assert {p.ready_since for p in store.pods()} == {0.0}


def test_stores_opening_one_empty_database_at_the_same_moment_all_come_up(url: str) -> None:
    keys = SecretKeys.generate()
    opened: list[Store] = []
    failures: list[BaseException] = []
    start = threading.Barrier(4)

    def open_store() -> None:
        start.wait()
        try:
            opened.append(Store(url, keys=keys))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == [] and len(opened) == 4
    with opened[0].engine.connect() as conn:
        version = select(text("version_num")).select_from(text("alembic_version"))
        assert conn.execute(version).scalar() == head()


def test_after_the_upgrade_no_plain_hash_of_a_secret_is_left_in_events_or_histories(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    rows = release_0_1_database(url)
    plain = rows["pods"][0]["template_hash"]  # 0.1 hashed the Secret's value into it
    assert any(plain in e["object"] or plain in e["message"] for e in rows["events"])
    store = Store(url, keys=SecretKeys.from_file(tmp_path / "key"))
    assert not any(plain in e.object or plain in e.message for e in store.events(limit=1000))
    assert all(plain not in [h for h, _ in r.history] for r in store.rollouts().values())
    reconcile_once(store, now=1004.0)  # the pods that used the Secret are replaced (keyed hash)
    assert {p.template_hash for p in store.pods() if p.terminating_at is None} - {plain}


def test_objects_0_1_let_another_source_prune_come_back_after_the_upgrade(tmp_path: Path) -> None:
    """0.1 kept one desired state: B's revision pruned A's objects, and A's unchanged revision
    never brought them back. After the upgrade each source's revision is applied once more."""
    from gitops.sync.service import sync_once
    from gitops.sync.sources import FolderSource

    folders = {}
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "c.yaml").write_text(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: from-{name}}}\n")
        folders[name] = FolderSource(folder)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = create_engine(url)
    old.Base.metadata.create_all(engine)
    revision = {"message": "", "author": "", "committed_at": 0.0, "errors": [], "warnings": []}
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "from-b"}}
    with engine.begin() as conn:
        for n, name in enumerate(("a", "b")):
            source = folders[name]
            conn.execute(
                insert(old.RevisionRow.__table__),
                [
                    {
                        **revision,
                        "source": source.name,
                        "revision": source.latest().id,
                        "received_at": float(n),
                        "status": "applied",
                        "summary": {},
                    }
                ],
            )
        object_row = {
            "kind": "ConfigMap",
            "namespace": "default",
            "name": "from-b",
            "api_version": "v1",
            "body": body,
            "hash": "h",
            "file": "c.yaml",
            "line": 1,
            "col": 1,
            "revision": folders["b"].latest().id,
        }
        conn.execute(insert(old.ObjectRow.__table__), [object_row])  # a's object: pruned by b
    engine.dispose()
    store = Store(url)
    assert sync_once(store, folders["a"]) is not None
    assert sync_once(store, folders["b"]) is not None
    assert {k.name: s for k, s in store.owners().items()} == {
        "from-a": folders["a"].name,
        "from-b": folders["b"].name,
    }
    assert sync_once(store, folders["a"]) is None  # and then only new revisions are applied


def test_reading_tools_never_change_the_database_or_make_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gitops.cli import main

    url = f"sqlite:///{tmp_path / 'state.db'}"
    release_0_1_database(url)
    before = (tmp_path / "state.db").read_bytes()
    key = tmp_path / "state" / "secret.key"
    with pytest.raises(SystemExit, match="no such key file"):
        main(["state", "export", "--db", url, "--state-dir", str(tmp_path / "state")])
    SecretKeys.from_file(key)
    with pytest.raises(SystemExit, match="start this release's server on it once"):
        main(["state", "export", "--db", url, "--state-dir", str(tmp_path / "state")])
    assert (tmp_path / "state.db").read_bytes() == before
    Store(url, keys=SecretKeys.from_file(key))  # the server upgrades it
    capsys.readouterr()
    assert main(["state", "export", "--db", url, "--state-dir", str(tmp_path / "state")]) == 0
    assert SECRET.decode() not in capsys.readouterr().out

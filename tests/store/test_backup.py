"""`gitops backup` and `gitops restore`, on real SQLite and real PostgreSQL: a backup taken
while heartbeats keep arriving comes back whole (desired objects with a Secret, pods, nodes,
revisions, service addresses) and opens with the key it was made with; every bad input is
refused in one line, and the files written are 0600."""

from __future__ import annotations

import base64
import stat
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gitops.cli import main
from gitops.controller import reconcile_once
from gitops.model import PodStatus, Revision
from gitops.store import SecretKeys, Store
from gitops.store import backup as backup_module
from tests.api.sample import NOW, SECRET_VALUE, node, report_running
from tests.planner.factories import configmap, deployment, secret, service

HEARTBEAT_STEP = 0.001


@dataclass(frozen=True)
class Place:
    """A database and the command-line options that name it."""

    url: str
    options: tuple[str, ...]


@pytest.fixture(params=["sqlite", "postgresql"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def places(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], Place]:
    """New, empty databases of the kind under test: SQLite in a state folder, or PostgreSQL."""
    if kind == "sqlite":

        def sqlite_place(name: str) -> Place:
            folder = tmp_path / name
            return Place(f"sqlite:///{folder / 'gitops.db'}", ("--state-dir", str(folder)))

        return sqlite_place
    first = [str(request.getfixturevalue("postgres_database"))]
    server = str(request.getfixturevalue("postgres_url"))

    def postgresql_place(_name: str) -> Place:
        url = first.pop() if first else new_postgres_database(server)
        return Place(url, ("--db", url))

    return postgresql_place


def new_postgres_database(server: str) -> str:
    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(server)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return server.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "secret.key"
    SecretKeys.from_file(path)
    return path


def open_store(place: Place, key_file: Path) -> Store:
    if place.url.startswith("sqlite"):
        Path(place.options[1]).mkdir(mode=0o700, exist_ok=True)
    return Store(place.url, keys=SecretKeys.from_file(key_file, create=False))


def running_cluster(place: Place, key_file: Path) -> Store:
    """Desired objects with a Secret, two nodes, and pods reported Running and ready."""
    store = open_store(place, key_file)
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    requests = {"requests": {"cpu": "250m", "memory": "64Mi"}}
    store.apply_revision(
        Revision("git:repo", "a" * 40, message="Deploy", author="Tess Ter", committed_at=NOW - 60),
        [
            secret("creds", token=SECRET_VALUE),
            configmap("settings", GREETING="hello"),
            deployment("web", replicas=3, env=env, resources=requests),
            deployment("api", replicas=2, image="api:1", resources=requests),
            service("web", {"app": "web"}),
            service("api", {"app": "api"}),
        ],
        [],
        NOW - 50,
    )
    store.reject_revision(
        Revision("git:repo", "b" * 40, message="Break it"), ["web.yaml:1:1: broken"], [], NOW - 45
    )
    store.register_node(node("n1", labels=(("zone", "a"),)), "t1", NOW - 40)
    store.register_node(node("n2", labels=(("zone", "b"),)), "t2", NOW - 40)
    reconcile_once(store, NOW - 30)
    report_running(store, NOW - 10)
    return store


class Heartbeats:
    """A thread that keeps reporting both nodes' pods as they are, n1 then n2 at each tick."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.statuses = {
            name: [
                PodStatus(p.id, p.phase, ready=p.ready, pod_ip=p.pod_ip, restarts=p.restarts)
                for p in store.pods(name)
            ]
            for name in ("n1", "n2")
        }
        self.ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = NOW + self.ticks * HEARTBEAT_STEP
            for name in ("n1", "n2"):
                self.store.heartbeat(name, self.statuses[name], now)
            self.ticks += 1

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        while self.ticks < 5:
            self._stop.wait(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def one_line(text: str) -> str:
    """The single line a refused command printed."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the round trip ----------------------------------------------------------------------


def test_a_backup_taken_while_heartbeats_arrive_restores_the_same_running_cluster(
    places: Callable[[str], Place], key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_place, target_place = places("source"), places("target")
    source = running_cluster(source_place, key_file)
    assert any(SECRET_VALUE in dict(p.spec.main.env).values() for p in source.pods())
    archive = tmp_path / "gitops.backup"
    key = ("--secret-key-file", str(key_file))
    capsys.readouterr()

    with Heartbeats(source) as beats:
        before = beats.ticks
        assert main(["backup", "-o", str(archive), *source_place.options, *key]) == 0
        after = beats.ticks
    assert after > before  # the server's writes went on during the backup
    out = one_line(capsys.readouterr().out)
    assert out.startswith(f"wrote {archive} (") and f"sealed with the key in {key_file}" in out

    assert main(["restore", str(archive), *target_place.options, *key]) == 0
    out = one_line(capsys.readouterr().out)
    assert "(6 objects, 5 pods, 2 nodes)" in out and "start the server" in out

    restored = Store(target_place.url, keys=SecretKeys.from_file(key_file, create=False), read_only=True)
    beat = {str(r.node.name): r.heartbeat_at for r in restored.nodes(NOW)}
    # One snapshot: n1 beats before n2 at every tick, so n2 is at n1's tick or the one before.
    assert NOW <= beat["n2"] <= beat["n1"] <= beat["n2"] + HEARTBEAT_STEP * 1.5
    now = max(beat.values()) + 1
    assert restored.desired() == source.desired()
    (creds,) = [m for m in restored.desired() if m.key.kind == "Secret"]
    assert base64.b64decode(creds.body["data"]["token"]).decode() == SECRET_VALUE
    assert restored.pods() == source.pods()
    pods = [(p.id, p.node, p.phase, p.ready, p.template_hash) for p in restored.pods()]
    assert {p[1:4] for p in pods} <= {("n1", "Running", True), ("n2", "Running", True)}
    assert [r.node for r in restored.nodes(now)] == [r.node for r in source.nodes(now)]
    assert all(r.node.ready for r in restored.nodes(now))
    assert restored.revisions() == source.revisions()
    assert restored.vips() == source.vips() and len(restored.vips()) == 2
    assert restored.rollouts() == source.rollouts()

    writable = Store(target_place.url, keys=SecretKeys.from_file(key_file, create=False))
    assert reconcile_once(source, now).plan.empty  # nothing to do on the source either
    result = reconcile_once(writable, now)
    assert result.plan.create == () and result.plan.stop == () and result.bound == 0
    assert [(p.id, p.node, p.phase, p.ready, p.template_hash) for p in writable.pods()] == pods
    for store in (source, restored, writable):
        store.engine.dispose()


def test_backup_and_restored_files_are_private(
    places: Callable[[str], Place], key_file: Path, tmp_path: Path, kind: str
) -> None:
    source_place, target_place = places("source"), places("target")
    open_store(source_place, key_file).engine.dispose()
    archive = tmp_path / "gitops.backup"
    archive.write_text("an older file, readable by all")
    archive.chmod(0o644)
    key = ("--secret-key-file", str(key_file))
    assert main(["backup", "-o", str(archive), *source_place.options, *key]) == 0
    assert mode(archive) == 0o600
    assert not list(tmp_path.glob("*.partial"))
    if kind == "sqlite":
        folder = Path(target_place.options[1])
        folder.mkdir()
        (folder / "gitops.db").touch(mode=0o644)  # an empty file left by an earlier start
        assert main(["restore", str(archive), *target_place.options, *key]) == 0
        assert mode(folder / "gitops.db") == 0o600
        assert not list(folder.glob("gitops.db-*"))  # one file, no journal left beside it
    else:
        assert main(["restore", str(archive), *target_place.options, *key]) == 0


# --- refusals ----------------------------------------------------------------------------


def test_restore_refuses_a_database_that_holds_a_store_unless_forced(
    places: Callable[[str], Place], key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_place, target_place = places("source"), places("target")
    running_cluster(source_place, key_file).engine.dispose()
    archive = tmp_path / "gitops.backup"
    key = ("--secret-key-file", str(key_file))
    assert main(["backup", "-o", str(archive), *source_place.options, *key]) == 0
    existing = open_store(target_place, key_file)
    existing.apply_revision(Revision("dir:/srv", "c" * 40), [configmap("mine")], [], NOW)
    existing.engine.dispose()
    capsys.readouterr()

    assert main(["restore", str(archive), *target_place.options, *key]) == 1
    assert one_line(capsys.readouterr().err).endswith(
        "already holds a gitops store: give --force to replace it with the backup"
    )
    kept = open_store(target_place, key_file)
    assert [m.key.name for m in kept.desired()] == ["mine"]
    kept.engine.dispose()

    assert main(["restore", str(archive), *target_place.options, *key, "--force"]) == 0
    replaced = open_store(target_place, key_file)
    assert "mine" not in {m.key.name for m in replaced.desired()}
    assert len(replaced.pods()) == 5
    replaced.engine.dispose()


def test_restore_refuses_a_database_a_server_has_open(
    places: Callable[[str], Place], key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_place, target_place = places("source"), places("target")
    open_store(source_place, key_file).engine.dispose()
    archive = tmp_path / "gitops.backup"
    key = ("--secret-key-file", str(key_file))
    assert main(["backup", "-o", str(archive), *source_place.options, *key]) == 0
    server = running_cluster(target_place, key_file)  # its pool keeps connections open, as a server's does
    capsys.readouterr()

    assert main(["restore", str(archive), *target_place.options, *key, "--force"]) == 1
    error = one_line(capsys.readouterr().err)
    assert "(is a gitops server running on it?)" in error or "other connection(s) (a gitops server?)" in error
    assert len(server.pods()) == 5  # untouched
    server.engine.dispose()


def test_a_corrupted_sqlite_store_is_set_aside_not_deleted_when_a_backup_replaces_it(
    key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_place = Place(
        f"sqlite:///{tmp_path / 'source' / 'gitops.db'}", ("--state-dir", str(tmp_path / "source"))
    )
    running_cluster(source_place, key_file).close()
    archive = tmp_path / "gitops.backup"
    key = ("--secret-key-file", str(key_file))
    assert main(["backup", "-o", str(archive), *source_place.options, *key]) == 0
    state = tmp_path / "target"
    target = Place(f"sqlite:///{state / 'gitops.db'}", ("--state-dir", str(state)))
    broken = open_store(target, key_file)
    broken.apply_revision(Revision("dir:/srv", "c" * 40), [configmap("mine")], [], NOW)
    broken.close()
    database = state / "gitops.db"
    with database.open("r+b") as f:
        f.write(b"\0" * 4096)  # the header and first page gone, as a bad disk leaves it
    damaged = database.read_bytes()
    (state / "gitops.db-wal").write_bytes(b"stale pages")
    capsys.readouterr()

    assert main(["restore", str(archive), *target.options, *key]) == 1
    assert one_line(capsys.readouterr().err) == (
        f"gitops restore: {database} is not a readable SQLite database (file is not a database): give "
        "--force to set it aside (kept beside it, renamed) and restore the backup"
    )
    assert database.read_bytes() == damaged

    assert main(["restore", str(archive), *target.options, *key, "--force"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith(f"the unreadable database it replaced is kept as {database}.unreadable-")
    aside = Path(printed[-1].rsplit(" ", 1)[1])
    assert aside.read_bytes() == damaged
    assert Path(f"{aside}-wal").read_bytes() == b"stale pages"
    restored = open_store(target, key_file)
    assert len(restored.pods()) == 5
    assert "mine" not in {m.key.name for m in restored.desired()}
    restored.close()


def test_a_backup_restored_with_another_key_is_reported_and_nothing_is_written(
    places: Callable[[str], Place], key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source_place, target_place = places("source"), places("target")
    running_cluster(source_place, key_file).engine.dispose()
    archive = tmp_path / "gitops.backup"
    assert (
        main(["backup", "-o", str(archive), *source_place.options, "--secret-key-file", str(key_file)]) == 0
    )
    other = tmp_path / "other.key"
    SecretKeys.from_file(other)
    capsys.readouterr()

    assert main(["restore", str(archive), *target_place.options, "--secret-key-file", str(other)]) == 1
    assert one_line(capsys.readouterr().err) == (
        f"gitops restore: {archive} was made with another secret key: give the key file kept with "
        "the backup (--secret-key-file)"
    )
    if target_place.url.startswith("sqlite"):
        assert not Path(target_place.options[1]).exists()
    else:
        engine = create_engine(target_place.url)
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")) == 0
        engine.dispose()

    assert (
        main(["backup", "-o", str(tmp_path / "b2"), *source_place.options, "--secret-key-file", str(other)])
        == 1
    )
    assert "sealed with another key" in one_line(capsys.readouterr().err)


def test_a_file_that_is_not_a_backup_is_reported_in_one_line(
    places: Callable[[str], Place], key_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = places("target")
    key = ("--secret-key-file", str(key_file))
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a backup\n")
    other_database = tmp_path / "other.db"
    engine = create_engine(f"sqlite:///{other_database}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    engine.dispose()
    wrong_kind = tmp_path / "wrong-kind"
    wrong_kind.write_bytes(
        b"PGDMP\x01\x0e" if target.url.startswith("sqlite") else b"SQLite format 3\x00" + bytes(100)
    )
    expected = {
        tmp_path / "missing": "gitops restore: {}: no such file",
        text_file: "gitops restore: {} is not a gitops backup (neither a SQLite database nor a pg_dump",
        wrong_kind: "gitops restore: {} is a ",
    }
    if target.url.startswith("sqlite"):
        expected[other_database] = "gitops restore: {} is not a gitops backup (it holds no gitops schema)"
    for path, message in expected.items():
        assert main(["restore", str(path), *target.options, *key]) == 1
        assert one_line(capsys.readouterr().err).startswith(message.format(path)), path


def test_a_missing_key_file_or_database_is_named_in_one_line(
    places: Callable[[str], Place], tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    place = places("nothing")
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "backup",
                "-o",
                str(tmp_path / "b"),
                *place.options,
                "--secret-key-file",
                str(tmp_path / "no.key"),
            ]
        )
    assert one_line(str(exit_.value.code)) == f"--secret-key-file {tmp_path / 'no.key'}: no such key file"
    assert (
        main(["backup", "-o", str(tmp_path / "b"), *place.options, "--secret-key-file", str(key_file)]) == 1
    )
    error = one_line(capsys.readouterr().err)
    assert error.startswith("gitops backup: ")
    assert "no database at" in error or "is empty: there is no gitops store to back up" in error
    assert not (tmp_path / "b").exists()


# --- PostgreSQL's tools --------------------------------------------------------------------


def test_the_database_password_reaches_pg_dump_in_its_environment_only(
    postgres_database: str,
    key_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    open_store(Place(postgres_database, ()), key_file).engine.dispose()
    capsys.readouterr()
    record = tmp_path / "pg_dump.called"
    fake = tmp_path / "bin" / "pg_dump"
    fake.parent.mkdir()
    fake.write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$RECORD"\necho "PGPASSWORD=$PGPASSWORD" >> "$RECORD"\n'
        'for a in "$@"; do case "$a" in --file=*) echo dump > "${a#--file=}";; esac; done\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    monkeypatch.setenv("RECORD", str(record))
    # The test server trusts every connection, so any password opens it.
    with_password = postgres_database.replace("gitops@", "gitops:s3cr%40t@")
    monkeypatch.setenv("GITOPS_DB", with_password)
    assert main(["backup", "-o", str(tmp_path / "b"), "--secret-key-file", str(key_file)]) == 0
    assert "s3cr" not in capsys.readouterr().out
    called = record.read_text().splitlines()
    assert called[-1] == "PGPASSWORD=s3cr@t"
    assert not any("s3cr" in argument for argument in called[:-1])
    assert "--no-password" in called and "--format=custom" in called


def test_a_missing_pg_dump_is_named_in_one_line(
    postgres_database: str,
    key_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    open_store(Place(postgres_database, ()), key_file).engine.dispose()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(backup_module, "PG_LIB", tmp_path / "no-postgresql")
    argv = [
        "backup",
        "-o",
        str(tmp_path / "b"),
        "--db",
        postgres_database,
        "--secret-key-file",
        str(key_file),
    ]
    assert main(argv) == 1
    assert one_line(capsys.readouterr().err).startswith("gitops backup: pg_dump is not installed")
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))

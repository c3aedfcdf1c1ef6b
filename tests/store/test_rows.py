"""`gitops.store.rows.all_rows`: many rows read from SQLite in one step give what a plain
read gives (floats to SQLite's 15 digits), on PostgreSQL a plain read."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import Column, Float, Integer, MetaData, Table, Text, create_engine, event, insert, select

from gitops.model import Node, NodeName
from gitops.store import Store
from gitops.store.rows import all_rows

META = MetaData()
THINGS = Table(
    "things",
    META,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False),
    Column("at", Float),
    Column("note", Text),
)
ROWS = [
    {"id": 3, "name": 'quote " and \\ and é', "at": 1796406971.4997613, "note": None},
    {"id": 1, "name": "plain", "at": None, "note": '{"a": [1, 2]}'},
    {"id": 2, "name": "big", "at": 0.1, "note": ""},
    {"id": 4, "name": "huge", "at": -2.5e-7, "note": "x" * 10_000},
]


def _filled(url: str) -> object:
    engine = create_engine(url)
    META.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(THINGS), ROWS)
    return engine


def _check(engine: object, *, statements: list[str]) -> None:
    query = select(THINGS.c.id, THINGS.c.name, THINGS.c.at, THINGS.c.note)
    with engine.connect() as conn:  # type: ignore[attr-defined]
        plain = sorted(tuple(r) for r in conn.execute(query).all())
        statements.clear()
        got = all_rows(conn, query, key=lambda r: r[0])
        empty = all_rows(conn, query.where(THINGS.c.id < 0))
    assert [r[0] for r in got] == [1, 2, 3, 4]  # sorted by the key
    for mine, theirs in zip(got, plain, strict=True):
        assert (mine[0], mine[1], mine[3]) == (theirs[0], theirs[1], theirs[3])
        assert mine[2] == pytest.approx(theirs[2], rel=1e-14) if theirs[2] is not None else mine[2] is None
    assert list(empty) == []


def test_sqlite_rows_come_in_one_row_and_as_a_plain_read_gives_them(tmp_path: Path) -> None:
    engine = _filled(f"sqlite:///{tmp_path / 'rows.db'}")
    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def seen(_conn, _cursor, statement, *_args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    _check(engine, statements=statements)
    # One statement per read, each an aggregate: SQLite stepped once for all the rows.
    assert len(statements) == 2 and all("json_group_array" in s for s in statements)


def test_postgres_rows_are_a_plain_read(postgres_database: str) -> None:
    engine = _filled(postgres_database)
    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def seen(_conn, _cursor, statement, *_args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    _check(engine, statements=statements)
    assert statements and not any("json" in s for s in statements)


def test_the_stores_node_reads_keep_every_field_and_the_order_by_name(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    now = time.time()
    names = ["n-b", "n-a", "n-c"]
    for i, name in enumerate(names):
        node = Node(
            name=NodeName(name),
            address=f"10.0.0.{i + 1}",
            cpu_milli=4000 + i,
            memory_bytes=2**33 + i,
            labels=(("zone", f"z{i}"),),
            max_pods=110,
        )
        store.register_node(node, f"token-{i}", now=now - 100 * i)  # n-c's heartbeat is stale
    records = store.nodes(now)
    assert [r.node.name for r in records] == ["n-a", "n-b", "n-c"]
    by_name = {r.node.name: r for r in records}
    assert by_name[NodeName("n-a")].node.labels == (("zone", "z1"),)
    assert by_name[NodeName("n-a")].node.cpu_milli == 4001
    assert by_name[NodeName("n-a")].node.memory_bytes == 2**33 + 1
    assert by_name[NodeName("n-a")].heartbeat_at == pytest.approx(now - 100, abs=1e-4)
    assert [r.node.ready for r in records] == [False, True, False]  # n-a 100 s, n-c 200 s late
    assert by_name[NodeName("n-c")].not_ready_since is not None
    places = store.node_places(now)
    assert [p[0] for p in places] == ["n-a", "n-b", "n-c"]
    assert [p[3] for p in places] == [False, True, False]
    assert store.node_for_token("n-b", "token-0")
    assert not store.node_for_token("n-b", "token-1")

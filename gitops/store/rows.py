"""Reading many rows from SQLite without handing the interpreter over at each one.

Python's `sqlite3` releases the interpreter lock around every step of a statement, one row
each, and takes it back after. Beside a thread that keeps the interpreter busy (the API's
event loop answering agents), taking it back waits for that thread to hand it over, up to
the switch interval (5 ms) each time: a read of 5,000 node rows took 17 ms alone and
1.8-6.8 s beside a busy thread (`bench/rows.py`). Controller
passes read every node, and the agents' watch every node's place, every few seconds.

`all_rows` reads such a query on SQLite as one row: SQLite makes the rows into one JSON
array (`json_group_array` of `json_array`), decoded by `json.loads` in one call, 40 ms
beside the same busy thread. Values come back as JSON gives them: text, integers, None,
and floats to 15 significant digits (SQLite's JSON rendering of a REAL: 10 µs of a Unix
time; no caller may compare such a float with one read otherwise). Booleans are SQLite's
0 and 1 either way. Blobs cannot be read this way. The order is not kept (an aggregate
over a subquery need not follow its ORDER BY): `key` sorts the rows when given. Other
databases' drivers fetch the whole result before converting it: they are read as usual.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Select, func, select


def all_rows(
    connection: Connection,
    query: Select[*tuple[Any, ...]],
    *,
    key: Callable[[Sequence[Any]], Any] | None = None,
) -> Sequence[Sequence[Any]]:
    """Every row of `query` (sorted by `key` when given), on SQLite as one JSON array."""
    rows: list[Sequence[Any]]
    if connection.dialect.name == "sqlite":
        inner = query.subquery()
        packed = select(func.json_group_array(func.json_array(*inner.c)))
        rows = json.loads(connection.execute(packed).scalar_one())
    else:
        rows = list(connection.execute(query).all())
    if key is not None:
        rows.sort(key=key)
    return rows

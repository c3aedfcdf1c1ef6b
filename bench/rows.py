"""Reading every node's row from SQLite beside a busy thread: a plain read, whose every
row's step hands the interpreter over and waits to get it back (`gitops.store.rows`),
against `all_rows`, one step for all of them; both in this process on the same store.

    python bench/rows.py [--nodes 5000] [--repeat 5]

The store holds `--nodes` registered nodes. The query is the one a controller pass makes
(`Store.nodes`: twelve columns of every node). Each way is timed alone, then beside a
thread that runs Python code without pause (as the API's event loop does when agents'
calls keep it busy), at the interpreter's default switch interval (5 ms) and at the 0.5 ms
a controller pass runs with (`gitops.handover`). The median of `--repeat` reads is given.
The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import select

from gitops.model import Node, NodeName
from gitops.store import Store
from gitops.store.rows import all_rows
from gitops.store.store import NODE_COLUMNS
from gitops.store.tables import NodeRow

QUERY = select(*NODE_COLUMNS)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def median_ms(read: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        read()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {"nodes": args.nodes}
    with tempfile.TemporaryDirectory(prefix="gitops-rows-") as folder:
        store = Store(
            f"sqlite:///{folder}/state.db", cluster_cidr="10.128.0.0/9", service_cidr="10.96.0.0/16"
        )
        now = time.time()
        for i in range(args.nodes):
            node = Node(
                name=NodeName(f"node-{i}"),
                address=f"10.{i >> 8 & 255}.{i & 255}.1",
                cpu_milli=64000,
                memory_bytes=2**38,
                max_pods=110,
            )
            store.register_node(node, f"token-{i}", now=now)

        def plain() -> Any:
            with store.session() as s:
                return s.connection().execute(QUERY.order_by(NodeRow.name)).all()

        def packed() -> Any:
            with store.session() as s:
                return all_rows(s.connection(), QUERY, key=lambda r: r[0])

        assert [tuple(r)[:9] for r in plain()] == [tuple(r)[:9] for r in packed()]
        say(f"rows: {args.nodes} nodes' rows, median of {args.repeat} reads")
        figures["alone_plain_ms"] = median_ms(plain, args.repeat)
        figures["alone_packed_ms"] = median_ms(packed, args.repeat)
        say(f"  alone: plain {figures['alone_plain_ms']} ms, in one step {figures['alone_packed_ms']} ms")
        stop = threading.Event()

        def busy() -> None:
            total = 0
            while not stop.is_set():
                for i in range(1000):
                    total += i

        thread = threading.Thread(target=busy, daemon=True)
        thread.start()
        default = sys.getswitchinterval()
        try:
            for interval, name in ((default, "busy"), (0.0005, "busy_handover")):
                sys.setswitchinterval(interval)
                figures[f"{name}_plain_ms"] = median_ms(plain, args.repeat)
                figures[f"{name}_packed_ms"] = median_ms(packed, args.repeat)
                say(
                    f"  beside a busy thread, switch interval {interval * 1000:g} ms: plain "
                    f"{figures[f'{name}_plain_ms']} ms, in one step {figures[f'{name}_packed_ms']} ms"
                )
        finally:
            sys.setswitchinterval(default)
            stop.set()
            thread.join()
    figures["ratio"] = round(figures["busy_plain_ms"] / figures["busy_packed_ms"], 1)
    say(f"ratio (plain / one step, beside a busy thread): {figures['ratio']}x")
    print(json.dumps(figures), flush=True)
    return figures


if __name__ == "__main__":
    main()

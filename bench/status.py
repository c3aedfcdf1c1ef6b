"""`gitops status` on a big cluster: the summary against the full listing (`--all`).

    python bench/status.py [--replicas 8000] [--runs 5] [--churn 1.0]

Runs the real control plane in this process (SQLite in a temporary folder, a folder source
with one Deployment of `--replicas` pods and no node, so every pod stays Pending), waits
until every pod exists, then runs the `gitops status` command as a user does (a new
process each time, against the server's API) `--runs` times, and `gitops status --all` as
many times: the baseline, which prints every pod as release 0.1's status did. Meanwhile a
pod changes every `--churn` seconds, as agents' reports change pods on a live cluster, so
the status view keeps being rebuilt (0 for a still cluster). Prints the
median and worst wall time of each, the ratio, and one JSON line. (Issue: `gitops status`
took 10 s at 8,000 pods; it must answer within a second.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import select, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bigcluster
from gitops.store import Store
from gitops.store.tables import PodRow


def churn(store: Store, every: float, stop: threading.Event) -> None:
    """Change one pod every `every` seconds (its reason and `updated_at`), as a report would."""
    with store.session() as s:
        ids = list(s.scalars(select(PodRow.id).limit(100)))
    n = 0
    while not stop.wait(every):
        n += 1
        with store.session() as s:
            s.execute(
                update(PodRow)
                .where(PodRow.id == ids[n % len(ids)])
                .values(reason=f"report {n}", updated_at=time.time())
            )


def timed(command: list[str], runs: int) -> tuple[list[float], int]:
    times, lines = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - started)
        lines = len(done.stdout.splitlines())
    return times, lines


def main() -> None:
    options = argparse.ArgumentParser()
    options.add_argument("--replicas", type=int, default=8000)
    options.add_argument("--runs", type=int, default=5)
    options.add_argument("--churn", type=float, default=1.0)
    args = options.parse_args()
    cluster = bigcluster.start("gitops-status-", args.replicas)
    plane, store = cluster.plane, cluster.store
    try:
        started = time.monotonic()
        while len(store.pods()) < args.replicas:
            if time.monotonic() - started > 900:
                raise SystemExit("the pods were not all created within 900 s")
            time.sleep(1)
        time.sleep(3)  # the status view is rebuilt once more, as it is between changes
        stop = threading.Event()
        if args.churn > 0:
            threading.Thread(target=churn, args=(store, args.churn, stop), daemon=True).start()
        gitops = [sys.executable, "-m", "gitops.cli", "status", "--server", plane.url]
        summary, summary_lines = timed(gitops, args.runs)
        full, full_lines = timed([*gitops, "--all"], args.runs)
        stop.set()
    finally:
        plane.stop()
    figures = {
        "replicas": args.replicas,
        "churn_s": args.churn,
        "summary_median_s": round(statistics.median(summary), 3),
        "summary_max_s": round(max(summary), 3),
        "summary_lines": summary_lines,
        "all_median_s": round(statistics.median(full), 3),
        "all_max_s": round(max(full), 3),
        "all_lines": full_lines,
    }
    figures["ratio"] = round(figures["all_median_s"] / figures["summary_median_s"], 1)
    still = "a still cluster" if args.churn <= 0 else f"a pod changing every {args.churn:g} s"
    print(f"{args.replicas:,} pods, {still}, {args.runs} runs each (a new process each time)")
    for name, key, lines in (
        ("gitops status", "summary", summary_lines),
        ("gitops status --all", "all", full_lines),
    ):
        median, worst = figures[f"{key}_median_s"], figures[f"{key}_max_s"]
        print(f"  {name:20} median {median:.2f} s, worst {worst:.2f} s, {lines} lines")
    print(f"  the summary is {figures['ratio']}x faster than the full listing")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

"""Memory of a control plane through a huge scale-up and back (issue: 100,000 replicas grew
the process to 1.96 GB and it stayed at 1.87 GB after scaling back).

    python bench/memory.py [--replicas 20000] [--back 3] [--cycles 1]

Runs the real control plane in this process (SQLite in a temporary folder, a folder source,
no node, so every pod stays Pending, as with a typo in `replicas` on a small cluster), waits
until every pod exists, reads the status page and the JSON API as a
user would, then scales back and waits until the pods are gone. It prints the resident set
size (RSS) at each step, and ends with one JSON line. The baseline is the process before
the scale-up: memory should return near it. With `--cycles N` it scales up and back N
times: what stays after the first cycle must not grow with the next ones (bounded).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bigcluster
from gitops.store.tables import PodRow


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    options = argparse.ArgumentParser()
    options.add_argument("--replicas", type=int, default=20_000)
    options.add_argument("--back", type=int, default=3)
    options.add_argument("--cycles", type=int, default=1)
    args = options.parse_args()
    cluster = bigcluster.start("gitops-memory-", 1, controller_interval=0.5)
    plane, store = cluster.plane, cluster.store
    figures: dict[str, float] = {}
    after: list[float] = []

    def wait_pods(count: int, what: str) -> float:
        started = time.monotonic()
        while True:
            with store.session() as s:
                n = s.scalar(select(func.count()).select_from(PodRow))
            if n == count:
                return time.monotonic() - started
            if time.monotonic() - started > 900:
                raise SystemExit(f"{what}: {n} pods after 900 s")
            time.sleep(0.5)

    def wait_view(count: int) -> None:
        """Until the API shows `count` pods: the status view was rebuilt, the old one freed."""
        started = time.monotonic()
        while httpx.get(plane.url + "/api/v1/status", timeout=120).json()["counts"]["pods"] != count:
            if time.monotonic() - started > 120:
                raise SystemExit(f"the status view did not show {count} pods within 120 s")
            time.sleep(0.5)

    def read_as_a_user() -> None:
        for path in ("/", "/pods", "/api/v1/status", "/api/v1/pods?limit=20", "/api/v1/workloads"):
            httpx.get(plane.url + path, timeout=120).raise_for_status()

    wait_pods(1, "start")
    read_as_a_user()
    gc.collect()
    figures["rss_before_mib"] = rss_mib()
    print(f"before: {figures['rss_before_mib']:.0f} MiB", flush=True)
    for cycle in range(args.cycles):
        cluster.scale(args.replicas)
        scale_up_s = wait_pods(args.replicas, "scale up")
        wait_view(args.replicas)
        read_as_a_user()
        time.sleep(3)
        read_as_a_user()
        up = rss_mib()
        if cycle == 0:
            figures["scale_up_s"] = scale_up_s
            figures["rss_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            figures["rss_up_mib"] = up
        print(
            f"cycle {cycle + 1}: {args.replicas:,} pods: {up:.0f} MiB, created in {scale_up_s:.1f} s",
            flush=True,
        )
        cluster.scale(args.back)
        scale_down_s = wait_pods(args.back, "scale down")
        wait_view(args.back)
        read_as_a_user()
        time.sleep(2)
        after.append(rss_mib())
        if cycle == 0:
            figures["scale_down_s"] = scale_down_s
            figures["rss_after_mib"] = after[0]
        print(f"cycle {cycle + 1}: back to {args.back}: {after[-1]:.0f} MiB", flush=True)
    figures["rss_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["rss_after_last_mib"] = after[-1]
    figures["growth_after_first_cycle_mib"] = after[-1] - after[0]
    figures["returned_ratio"] = round(
        (figures["rss_up_mib"] - figures["rss_after_mib"])
        / max(1.0, figures["rss_up_mib"] - figures["rss_before_mib"]),
        3,
    )
    plane.stop()
    print(json.dumps({"replicas": args.replicas, **{k: round(v, 1) for k, v in figures.items()}}))


if __name__ == "__main__":
    main()

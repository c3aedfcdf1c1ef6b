"""Status page latency: 5,000 pods, 20 concurrent clients, cached view against the uncached path.

    python bench/page.py [--nodes 100] [--deployments 20] [--replicas 250] [--clients 20]
                         [--requests 4000] [--baseline-requests 40] [--churn]

Builds a store (SQLite in a temporary folder) with `--nodes` nodes, `--deployments`
Deployments of `--replicas` pods each (5,000 by default) placed by the real controller and
reported Running, and a Service per two Deployments. Serves the real app with uvicorn on
loopback in two separate processes (so the load generator does not share their
interpreter): one as `gitops serve` runs it (the view cached per store change), one with
caching off (every request reads the store and builds the view: the baseline). Then 20
clients (asyncio + httpx, one keep-alive connection each) send `--requests` GETs per
target and the script prints p50 / p99 latency and requests/s per target, and the ratio
of the cached page to the uncached one. `--churn` keeps the store changing during the run
(a pod status change every 0.5 s, so the cached view is rebuilt in the background all the
time), which is the worst case for the cache. The goal is p99 < 100 ms for the pages.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import structlog
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gitops.api.app import create_app
from gitops.controller import reconcile_once
from gitops.model import Node, NodeName, PodStatus, Revision, Taint
from gitops.store import SecretKeys, Store
from tests.planner.factories import deployment, service

PAGES = ("/", "/pods", "/pods?page=13", "/nodes", "/workloads", "/services")


def key_file(url: str) -> Path:
    """The store's key, beside its SQLite file (the serving processes open the same store)."""
    return Path(url.removeprefix("sqlite:///") + ".key")


def populate(url: str, nodes: int, deployments: int, replicas: int) -> Store:
    store = Store(url, keys=SecretKeys.from_file(key_file(url)))
    now = time.time()
    manifests = []
    for d in range(deployments):
        manifests.append(
            deployment(
                f"app{d:02d}",
                replicas=replicas,
                image=f"app{d}:1",
                resources={"requests": {"cpu": "10m", "memory": "16Mi"}},
                ports=[{"name": "http", "containerPort": 8080}],
            )
        )
        if d % 2 == 0:
            manifests.append(service(f"app{d:02d}", {"app": f"app{d:02d}"}))
    store.apply_revision(Revision("git:bench", "f" * 40, message="bench", author="bench"), manifests, [], now)
    for i in range(nodes):
        taints = (Taint("dedicated", "db", "NoSchedule"),) if i % 25 == 0 else ()
        node = Node(
            NodeName(f"node-{i:03d}"),
            address=f"10.0.{i // 250}.{i % 250 + 1}",
            cpu_milli=16000,
            memory_bytes=64 * 2**30,
            labels=(("zone", f"z{i % 3}"), ("disk", "ssd" if i % 2 else "hdd")),
            taints=taints,
            max_pods=110,
        )
        store.register_node(node, f"token-{i}", now)
    result = reconcile_once(store, now)
    by_node: dict[str, list[PodStatus]] = {}
    for n, pod in enumerate(store.pods()):
        if pod.node is not None:
            by_node.setdefault(pod.node, []).append(
                PodStatus(pod.id, "Running", ready=True, pod_ip=f"172.16.{n // 250}.{n % 250 + 1}")
            )
    for name, statuses in by_node.items():
        store.heartbeat(name, statuses, now)
    pods = len(store.pods())
    print(f"store: {pods:,} pods on {nodes} nodes, {result.bound:,} bound, {len(manifests)} objects")
    return store


def serve(url: str, port: int, cache_seconds: float) -> None:
    store = Store(url, keys=SecretKeys.from_file(key_file(url)))
    join = "bench-join"  # agents never join this server
    app = create_app(store, join_token=join, sources=["git:bench"], page_cache_seconds=cache_seconds)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    import socket  # noqa: PLC0415 - only the launcher needs it

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(url: str, cache_seconds: float) -> tuple[multiprocessing.process.BaseProcess, str]:
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(
        target=serve, args=(url, port, cache_seconds), daemon=True
    )
    process.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {base} did not start")


async def load(base: str, path: str, clients: int, requests: int) -> tuple[list[float], float]:
    """`requests` GETs of `path` by `clients` concurrent clients: latencies (s), wall time (s)."""
    latencies: list[float] = []
    remaining = requests

    async def client() -> None:
        nonlocal remaining
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                response = await http.get(path)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: {response.status_code}")

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(label: str, latencies: list[float], wall: float) -> tuple[float, float, float]:
    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    rate = len(latencies) / wall
    print(
        f"  {label:<28} n={len(latencies):>5}  p50 {p50 * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms"
        f"  {rate:8.0f} req/s"
    )
    return p50, p99, rate


def churn(store: Store, stop: threading.Event) -> None:
    """Flip one pod's readiness every 0.5 s: the store keeps changing, the view is rebuilt."""
    pod = store.pods()[0]
    assert pod.node is not None
    ready = False
    while not stop.wait(0.5):
        status = PodStatus(pod.id, "Running", ready=ready, reason="" if ready else "readiness probe failed")
        store.heartbeat(pod.node, [status], time.time())
        ready = not ready


def heartbeats(store: Store, stop: threading.Event) -> None:
    """Every node's agent reports every 5 s, as live agents do (more often, in fact): no node
    turns NotReady during the run, which would rebuild the view."""
    names = [r.node.name for r in store.nodes()]
    while not stop.wait(5.0):
        for name in names:
            store.heartbeat(name, [], time.time())


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--deployments", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=250)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=4000, help="per target on the cached server")
    parser.add_argument("--baseline-requests", type=int, default=40, help="per target on the uncached one")
    parser.add_argument("--churn", action="store_true", help="change the store every 0.5 s during the run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gitops-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'state.db'}"
        t0 = time.perf_counter()
        store = populate(url, args.nodes, args.deployments, args.replicas)
        print(f"  populated in {time.perf_counter() - t0:.1f} s")
        cached, cached_url = start(url, 1.0)
        uncached, uncached_url = start(url, 0.0)
        stop = threading.Event()
        threading.Thread(target=heartbeats, args=(store, stop), daemon=True).start()
        if args.churn:
            threading.Thread(target=churn, args=(store, stop), daemon=True).start()
        try:
            for base in (cached_url, uncached_url):  # warm up: the first view, imports, connections
                asyncio.run(load(base, "/pods", args.clients, args.clients * 2))
            print(f"{args.clients} concurrent clients{' (store churning)' if args.churn else ''}:")
            results = {}
            for path in PAGES:
                latencies, wall = asyncio.run(load(cached_url, path, args.clients, args.requests))
                results[path] = report(f"page      {path}", latencies, wall)
            for label, base, path in (
                ("uncached", uncached_url, "/pods"),
                ("json api", cached_url, "/api/v1/status"),
                ("json api", cached_url, "/api/v1/pods"),
            ):
                latencies, wall = asyncio.run(load(base, path, args.clients, args.baseline_requests))
                results[f"{label} {path}"] = report(f"{label:<9} {path}", latencies, wall)
        finally:
            stop.set()
            cached.terminate()
            uncached.terminate()
    page, base = results["/pods"], results["uncached /pods"]
    print(
        f"/pods cached vs uncached: p50 {base[0] / page[0]:,.0f}x faster, p99 {base[1] / page[1]:,.0f}x, "
        f"throughput {page[2] / base[2]:,.0f}x"
    )
    worst = max(results[p][1] for p in PAGES)
    verdict = "met" if worst < 0.1 else "NOT met"
    print(f"goal p99 < 100 ms for the pages: {verdict} (worst page p99 {worst * 1000:.1f} ms)")


if __name__ == "__main__":
    main()

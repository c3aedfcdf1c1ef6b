"""A controller pass with nothing to do, decided over a large settled cluster: `decide`
with the `Settled` memo the controller keeps between passes, against `decide` without it
(what every pass did before the memo), both in this process on the same state.

    python bench/noop_pass.py [--nodes 5000] [--pods 150000] [--deployments 1500] [--pending 0]
        [--churn] [--repeat 5] [--store]

The state: `--nodes` Ready nodes (64 cores, 256 GiB, 110 pods each) and `--deployments`
Deployments of `--pods / --deployments` replicas each (one container asking 10m and
16 MiB), every pod created by earlier passes, bound, Running and ready, and every rollout
complete. With `--pending N`, one more Deployment of N replicas that fit on no node (each
asks for more CPU than a node has): they wait, unschedulable, as a DaemonSet's pods on
nodes not ready do. It is reached as the controller reaches it: passes of `decide`, each
followed by `settle` (the agents doing what it said), until one decides nothing. With
`--churn`, before each timed pass one bound pod restarted (its agent's report written: a
new object for that pod, in a new tuple), as a large cluster's pods do all the time.

Then `--repeat` no-op passes are timed each way (the memo's first pass after the fixed
point fills it and is not counted; the best of the rest is). Both ways must decide
nothing, and the same. This is the planner, scheduler and rollouts alone: reading the
pods from the store (the `PodCache` hands out the same objects between passes) and the
pass's write are not part of it; `bench/scale.py` measures whole passes in the server.

With `--store`, the same cluster is also written to a SQLite store (in a temporary
folder) the way the server reaches it: nodes registered, the Deployments applied as a
revision, controller passes (`reconcile_once`) creating and binding the pods, and agents'
reports making them Running and ready, until a pass decides nothing. Then whole controller
passes are timed: the server's (pods through the `PodCache`, the `Settled` memo; it
decides: one pass in `QuietPasses.resync` seconds does), the server's quiet pass (the
inputs are those of the last pass that decided nothing: it does not decide), and a
baseline pass that reads every pod again and plans every Deployment (what each pass did
before the cache and the memo). Each must write nothing.

The last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gitops.controller import QuietPasses, reconcile_once
from gitops.model import ClusterState, Node, NodeName, PodStatus, Revision
from gitops.planner.settled import Settled
from gitops.reconcile import decide, settle
from gitops.store import Store
from gitops.store.store import Report
from tests.planner.factories import deployment

GiB = 2**30


def say(line: str) -> None:
    print(line, flush=True)


def steady(args: argparse.Namespace) -> tuple[ClusterState, float]:
    """The cluster once passes decide nothing more."""
    nodes = tuple(
        Node(NodeName(f"node-{i:05d}"), cpu_milli=64_000, memory_bytes=256 * GiB, max_pods=110)
        for i in range(args.nodes)
    )
    replicas = max(1, args.pods // args.deployments)
    requests = {"requests": {"cpu": "10m", "memory": "16Mi"}}
    desired = tuple(
        deployment(f"app-{i:05d}", replicas, image=f"img-{i % 50}:1", resources=requests)
        for i in range(args.deployments)
    )
    if args.pending:
        desired += (deployment("unplaceable", args.pending, resources={"requests": {"cpu": "100"}}),)
    state, now = ClusterState(desired=desired, pods=(), nodes=nodes), 1_000_000.0
    for n in range(1, 50):
        started = time.perf_counter()
        decision = decide(state, now)
        took = time.perf_counter() - started
        if decision.empty:
            say(f"  pass {n}: nothing to do ({took * 1000:.0f} ms); {len(state.pods)} pods")
            return state, now + 1.0
        say(
            f"  pass {n}: {len(decision.plan.create)} to create, {len(decision.plan.stop)} to stop, "
            f"{len(decision.placements.assigned)} placed ({took * 1000:.0f} ms)"
        )
        state, now = settle(state, decision, now), now + 1.0
    raise SystemExit("no fixed point after 50 passes")


def restarted(state: ClusterState, n: int) -> ClusterState:
    """`state` after its `n`th bound pod (in steps through the pods) restarted once more."""
    bound = [i for i, p in enumerate(state.pods) if p.node is not None]
    at = bound[(n * 7919) % len(bound)]
    pods = list(state.pods)
    pods[at] = dataclasses.replace(pods[at], restarts=pods[at].restarts + 1)
    return dataclasses.replace(state, pods=tuple(pods))


def timed(
    state: ClusterState, now: float, repeat: int, settled: Settled | None, *, churn: bool = False
) -> tuple[float, bool]:
    """The best time of `repeat` passes a second apart (with `churn`, each after a pod
    restarted), and whether each decided nothing and the same as a pass without the memo
    at its time."""
    best, same = float("inf"), True
    for n in range(repeat):
        if churn:
            state = restarted(state, n)
        gc.collect()
        started = time.perf_counter()
        decision = decide(state, now, settled=settled)
        best = min(best, time.perf_counter() - started)
        same = same and decision.empty and (settled is None or decision == decide(state, now))
        now += 1.0
    return best, same


def stored(state: ClusterState, now: float, folder: str) -> Store:
    """`state`'s nodes and Deployments in a store, its pods made by controller passes and
    brought up by agents' reports, until a pass decides nothing."""
    store = Store(f"sqlite:///{folder}/state.db", cluster_cidr="10.128.0.0/9", service_cidr="10.96.0.0/16")
    started = time.perf_counter()
    for i, node in enumerate(state.nodes):
        store.register_node(node, f"token-{i}", now=now)
    say(f"  {len(state.nodes)} nodes registered ({time.perf_counter() - started:.1f} s)")
    store.apply_revision(Revision("bench", "a" * 40), list(state.desired), [], now=now)
    settled = Settled()
    for n in range(1, 50):
        started = time.perf_counter()
        result = reconcile_once(store, now, pods=store.pod_cache, settled=settled)
        took = time.perf_counter() - started
        if not (result.plan.create or result.plan.stop or result.bound):
            say(f"  store pass {n}: nothing to do ({took * 1000:.0f} ms)")
            return store
        started = time.perf_counter()
        by_node: dict[str, list[PodStatus]] = {}
        for pod in store.pods():
            if pod.node is not None:
                by_node.setdefault(pod.node, []).append(PodStatus(pod.id, "Running", ready=True))
        reports = [Report(node, tuple(statuses), now) for node, statuses in sorted(by_node.items())]
        for at in range(0, len(reports), 200):
            store.heartbeats(reports[at : at + 200])
        say(
            f"  store pass {n}: {len(result.plan.create)} created, {result.bound} bound ({took:.1f} s); "
            f"agents reported them running ({time.perf_counter() - started:.1f} s)"
        )
        now += 1.0
    raise SystemExit("no fixed point in the store after 50 passes")


def passes(store: Store, now: float, repeat: int, **memo: Any) -> tuple[float, int]:
    """The best time of `repeat` controller passes (after one that fills what `memo` holds),
    and the rows they wrote."""
    reconcile_once(store, now, **memo)
    best, written = float("inf"), store.written()
    for n in range(repeat):
        gc.collect()
        started = time.perf_counter()
        result = reconcile_once(store, now + 1.0 + n * 0.1, **memo)
        best = min(best, time.perf_counter() - started)
        assert not (result.plan.create or result.plan.stop or result.bound), result.plan.describe()[:5]
    return best, store.written() - written


def whole_passes(state: ClusterState, now: float, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gitops-noop-") as folder:
        store = stored(state, now, folder)
        baseline, wrote_baseline = passes(store, now, repeat)
        say(f"whole pass, every pod read and every Deployment planned: {baseline * 1000:.1f} ms")
        server, wrote_server = passes(store, now, repeat, pods=store.pod_cache, settled=Settled())
        say(f"whole pass, as the server decides one: {server * 1000:.1f} ms")
        quiet, wrote_quiet = passes(store, now, repeat, pods=store.pod_cache, quiet=QuietPasses(resync=1e9))
        say(f"whole pass, as the server skips deciding one: {quiet * 1000:.1f} ms")
        writes = wrote_baseline + wrote_server + wrote_quiet
        say(f"rows written by these passes: {writes}; ratio: {baseline / server:.1f}x")
        store.close()
    return {
        "noop_pass_ms": round(server * 1000, 1),
        "quiet_pass_ms": round(quiet * 1000, 1),
        "pass_baseline_ms": round(baseline * 1000, 1),
        "pass_ratio": round(baseline / server, 2),
        "pass_writes": writes,
    }


def cluster_parser(description: str | None) -> argparse.ArgumentParser:
    """A bench's arguments, with those of the cluster `steady` builds."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=150_000)
    parser.add_argument("--deployments", type=int, default=1500)
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = cluster_parser(__doc__)
    parser.add_argument(
        "--pending", type=int, default=0, help="pods more that fit on no node (they wait, unschedulable)"
    )
    parser.add_argument(
        "--churn", action="store_true", help="a bound pod restarts before each timed pass (its row written)"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--store", action="store_true", help="time whole controller passes over a store too")
    args = parser.parse_args(argv)
    say(f"noop pass: {args.nodes} nodes, {args.pods} pods in {args.deployments} Deployments")
    state, now = steady(args)

    baseline, plain = timed(state, now, args.repeat, None, churn=args.churn)
    say(f"without the memo (every Deployment planned): {baseline * 1000:.1f} ms")
    settled = Settled()
    decide(state, now, settled=settled)  # fills the memo, as the pass after any change does
    memo, kept = timed(state, now + 1.0, args.repeat, settled, churn=args.churn)
    say(
        f"with the memo: {memo * 1000:.1f} ms ({settled.plans.reused} plan parts and "
        f"{settled.statuses.reused} rollout statuses reused)"
    )
    same = plain and kept
    say(f"both decide nothing, and the same: {same}")
    say(f"ratio: {baseline / memo:.1f}x")
    figures = {
        "nodes": args.nodes,
        "pods": len(state.pods),
        "deployments": args.deployments,
        "pending": args.pending,
        "churn": args.churn,
        "noop_decide_ms": round(memo * 1000, 1),
        "baseline_ms": round(baseline * 1000, 1),
        "ratio": round(baseline / memo, 2),
        "same": same,
    }
    if args.store:
        figures |= whole_passes(state, now, args.repeat)
    print(json.dumps(figures), flush=True)
    return figures


if __name__ == "__main__":
    main()

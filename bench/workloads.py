"""Control passes of the workload kinds at scale, each against a Deployment of as many pods
in the same process (the fair baseline: the same pass, pods that share one spec).

    python bench/workloads.py [--nodes 5000] [--repeat 3]

Runs `gitops.reconcile.decide` (planner and scheduler, no store) on `--nodes` nodes for:
a DaemonSet (one pod per node, each naming its node and a spec of its own, placed by a
check at that node alone),
a Deployment of `--nodes` replicas, a StatefulSet of 500 pods under Parallel (each with
its own claim), and an Indexed Job of 500 completions all at once. For each: the passes
until every pod is created and placed (a Deployment creates at most 500 new pods a pass,
as Kubernetes' ReplicaSet controller does, so it takes several), summed, and a no-op pass
(every pod bound and ready), without and with the `Settled` memo the controller keeps
between passes (a pass that decides because something else changed: Deployments and
DaemonSets are reused, StatefulSets and Jobs planned again). Prints the best of `--repeat`
runs, each kind's time per pod against the Deployment's, and ends with one JSON line of the
figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gitops.model import ClusterState, Manifest, Node, NodeName, Pod
from gitops.planner.settled import Settled
from gitops.reconcile import decide
from tests.planner.factories import manifest

POD = {"containers": [{"name": "main", "image": "app:1", "resources": {"requests": {"cpu": "10m"}}}]}


def workload(kind: str, count: int) -> Manifest:
    labels = {"app": kind.lower()}
    template = {"metadata": {"labels": labels}, "spec": POD}
    spec: dict[str, Any] = {"selector": {"matchLabels": labels}, "template": template}
    if kind in ("Deployment", "StatefulSet"):
        spec["replicas"] = count
    if kind == "StatefulSet":
        spec |= {"podManagementPolicy": "Parallel", "serviceName": "s"}
        spec["volumeClaimTemplates"] = [{"metadata": {"name": "data"}, "spec": {}}]
    if kind == "Job":
        spec = {
            "completions": count,
            "parallelism": count,
            "completionMode": "Indexed",
            "template": {"spec": {**POD, "restartPolicy": "Never"}},
        }
    return manifest(kind, kind.lower(), spec=spec)


def passes(state: ClusterState) -> tuple[float, float, float, int]:
    """(passes until every pod is created and placed, summed; a no-op pass without the memo,
    and with it; pods placed). Between passes every placed pod is taken as bound, Running
    and ready."""
    converge_s = 0.0
    pods: tuple[Pod, ...] = ()
    while True:
        start = time.perf_counter()
        decision = decide(state, 1.0)
        converge_s += time.perf_counter() - start
        assigned = decision.placements.assigned
        pods += tuple(
            dataclasses.replace(a.pod, node=assigned[a.pod.id], phase="Running", ready=True, ready_since=0.0)
            for a in decision.plan.create
            if a.pod.id in assigned
        )
        state = dataclasses.replace(state, pods=pods, rollouts=decision.rollouts, jobs=decision.jobs)
        if not decision.plan.create:
            break
    start = time.perf_counter()
    second = decide(state, 2.0)
    noop_s = time.perf_counter() - start
    assert second.empty, second.plan.describe()[:3]
    settled = Settled()
    decide(state, 2.0, settled=settled)  # fills it
    start = time.perf_counter()
    third = decide(state, 3.0, settled=settled)
    settled_s = time.perf_counter() - start
    assert third == decide(state, 3.0), "the memo changed the decision"
    return converge_s, noop_s, settled_s, len(pods)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    nodes = tuple(
        Node(NodeName(f"n{i}"), f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 64000, 2**37)
        for i in range(args.nodes)
    )
    cases = {
        "deployment": workload("Deployment", args.nodes),
        "daemonset": workload("DaemonSet", 0),
        "statefulset": workload("StatefulSet", 500),
        "job": workload("Job", 500),
    }
    figures: dict[str, Any] = {"nodes": args.nodes}
    for name, wanted in cases.items():
        runs = [passes(ClusterState(desired=(wanted,), pods=(), nodes=nodes)) for _ in range(args.repeat)]
        first = min(r[0] for r in runs)
        noop = min(r[1] for r in runs)
        kept = min(r[2] for r in runs)
        placed = runs[0][3]
        figures[name] = {
            "pods": placed,
            "converge_s": round(first, 3),
            "noop_pass_s": round(noop, 3),
            "noop_pass_settled_s": round(kept, 4),
            "settled_speedup": round(noop / kept, 1),
        }
        print(
            f"{name:<12} {placed:>6} pods  converge {first:7.3f} s ({placed / first:9.0f} pods/s)  "
            f"no-op pass {noop:6.3f} s, with the memo {kept:7.4f} s ({noop / kept:.1f}x)"
        )
    base = figures["deployment"]["converge_s"] / figures["deployment"]["pods"]
    for name in ("daemonset", "statefulset", "job"):
        per_pod = figures[name]["converge_s"] / figures[name]["pods"]
        figures[name]["per_pod_vs_deployment"] = round(per_pod / base, 2)
        print(f"{name:<12} time per pod: {per_pod / base:.2f}x a Deployment's")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

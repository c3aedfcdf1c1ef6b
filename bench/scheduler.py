"""Scheduler throughput: the vectorised `place` against its plain per-node reference twin.

    python bench/scheduler.py [--nodes 5000] [--pods 10000] [--seed 7]

Builds a seeded random cluster (mixed capacities, zone/disk labels, some tainted nodes,
some pods already bound) and 10,000 pending pods from 50 Deployments (some with a
nodeSelector or tolerations), times `place`, then times the reference on a sample of the
same pods and prints pods/s for both and the ratio.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gitops.model import Node, NodeName, ObjectKey, Pod, PodName, PodSpec, Taint, Toleration
from gitops.scheduler import place
from tests.scheduler.reference import reference_place

GiB = 2**30


def cluster(nodes: int, pods: int, seed: int) -> tuple[list[Pod], list[Node], list[Pod]]:
    rng = random.Random(seed)
    node_list = []
    for i in range(nodes):
        taints = (Taint("dedicated", "gpu", "NoSchedule"),) if rng.random() < 0.05 else ()
        node_list.append(
            Node(
                NodeName(f"node-{i:05d}"),
                cpu_milli=rng.choice([4000, 8000, 16000, 32000]),
                memory_bytes=rng.choice([8, 16, 32, 64]) * GiB,
                labels=(("disk", rng.choice(["ssd", "hdd"])), ("zone", f"z{rng.randrange(3)}")),
                taints=taints,
            )
        )
    classes = []
    for d in range(50):
        selector = (("disk", "ssd"),) if d % 5 == 0 else ()
        tolerations = (Toleration("dedicated", "Equal", "gpu", "NoSchedule"),) if d % 10 == 1 else ()
        spec = PodSpec(
            image=f"app{d}:1",
            cpu_request_milli=rng.choice([50, 100, 250, 500]),
            memory_request_bytes=rng.choice([64, 128, 256, 512]) * 2**20,
            node_selector=selector,
            tolerations=tolerations,
        )
        classes.append((ObjectKey("Deployment", "default", f"app{d}"), spec))
    pending = []
    for i in range(pods):
        owner, spec = classes[i % len(classes)]
        pending.append(Pod("default", PodName(f"{owner.name}-{i}"), owner, owner.name, spec))
    bound = []
    for i in range(nodes):
        owner, spec = classes[rng.randrange(len(classes))]
        bound.append(Pod("default", PodName(f"old-{i}"), owner, owner.name, spec, node=node_list[i].name))
    return pending, node_list, bound


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=10000)
    parser.add_argument("--reference-pods", type=int, default=300, help="pods timed on the slow reference")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    pending, nodes, bound = cluster(args.nodes, args.pods, args.seed)

    start = time.perf_counter()
    result = place(pending, nodes, bound)
    fast = time.perf_counter() - start
    fast_rate = len(pending) / fast
    print(f"place: {len(pending)} pods on {len(nodes)} nodes in {fast:.3f} s = {fast_rate:,.0f} pods/s")
    print(f"       placed {len(result.assigned)}, unschedulable {len(result.unschedulable)}")

    sample = pending[: args.reference_pods]
    start = time.perf_counter()
    slow_result = reference_place(sample, nodes, bound)
    slow = time.perf_counter() - start
    slow_rate = len(sample) / slow
    same = place(sample, nodes, bound) == slow_result
    print(f"reference: {len(sample)} pods on {len(nodes)} nodes in {slow:.3f} s = {slow_rate:,.0f} pods/s")
    print(f"speed ratio fast/reference: {fast_rate / slow_rate:.1f}x; same placements on the sample: {same}")


if __name__ == "__main__":
    main()

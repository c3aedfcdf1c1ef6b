"""Scheduler throughput: the vectorised `place` against its plain per-node reference twin.

    python bench/scheduler.py [--nodes 5000] [--pods 10000] [--seed 7] [--budget 30]

Builds a seeded random cluster: nodes of mixed sizes and max_pods, zone/disk/arch labels,
about 8% with a NoSchedule taint, 6% with a PreferNoSchedule taint and 2% not ready, one
bound pod per node on average; and pending pods from 50 Deployments (some with a
nodeSelector, some with tolerations). Times `place` on it, then times the reference on a
small instance (500 nodes, 1,000 pods), on the first `--sample` pods of the full
instance, and on all of it if the time estimated from the sample fits in `--budget`
seconds; prints pods/s for both, the ratio, and whether both gave the same placements.
Times include building the `Cluster` (about 25 ms for 5,000 nodes), which dominates
for a 200-pod sample.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gitops.model import (
    Container,
    Node,
    NodeName,
    ObjectKey,
    Placements,
    Pod,
    PodName,
    PodSpec,
    Taint,
    Toleration,
)
from gitops.scheduler import place
from tests.scheduler.reference import reference_place

GiB = 2**30
MiB = 2**20
Instance = tuple[list[Pod], list[Node], list[Pod]]
Placer = Callable[[Sequence[Pod], Sequence[Node], Sequence[Pod]], Placements]


def instance(nodes: int, pods: int, seed: int, owners: int = 50) -> Instance:
    rng = random.Random(seed)
    node_list = []
    for i in range(nodes):
        taints: tuple[Taint, ...] = ()
        roll = rng.random()
        if roll < 0.05:
            taints = (Taint("dedicated", "gpu", "NoSchedule"),)
        elif roll < 0.08:
            taints = (Taint("dedicated", "db", "NoSchedule"), Taint("spot", "", "PreferNoSchedule"))
        elif roll < 0.11:
            taints = (Taint("spot", "", "PreferNoSchedule"),)
        node_list.append(
            Node(
                NodeName(f"node-{i:05d}"),
                cpu_milli=rng.choice([4000, 8000, 16000, 32000]),
                memory_bytes=rng.choice([8, 16, 32, 64]) * GiB,
                labels=(
                    ("arch", rng.choice(["amd64", "amd64", "arm64"])),
                    ("disk", rng.choice(["ssd", "hdd"])),
                    ("zone", f"z{rng.randrange(3)}"),
                ),
                taints=taints,
                ready=rng.random() >= 0.02,
                max_pods=rng.choice([30, 60, 110]),
            )
        )
    classes = []
    for d in range(owners):
        selector: tuple[tuple[str, str], ...] = ()
        if d % 5 == 0:
            selector = (("disk", "ssd"),)
        elif d % 7 == 0:
            selector = (("arch", "arm64"), ("zone", "z1"))
        tolerations: tuple[Toleration, ...] = ()
        if d % 10 == 1:
            tolerations = (Toleration("dedicated", "Equal", "gpu", "NoSchedule"),)
        elif d % 10 == 2:
            tolerations = (Toleration("dedicated", "Exists"), Toleration("spot", "Exists"))
        container = Container(
            name="main",
            image=f"app{d}:1",
            cpu_request_milli=rng.choice([0, 50, 100, 250, 500, 1000]),
            memory_request_bytes=rng.choice([64, 128, 256, 512, 1024]) * MiB,
        )
        spec = PodSpec(
            containers=(container,),
            node_selector=selector,
            tolerations=tolerations,
        )
        classes.append((ObjectKey("Deployment", "default", f"app{d}"), spec))
    pending = []
    for i in range(pods):
        owner, spec = classes[rng.randrange(len(classes))]
        pending.append(Pod("default", PodName(f"{owner.name}-{i}"), owner, owner.name, spec))
    bound = []
    for i in range(nodes):
        owner, spec = classes[rng.randrange(len(classes))]
        where = node_list[rng.randrange(nodes)].name
        bound.append(Pod("default", PodName(f"old-{i}"), owner, owner.name, spec, node=where))
    return pending, node_list, bound


def timed(placer: Placer, case: Instance) -> tuple[float, Placements]:
    start = time.perf_counter()
    result = placer(*case)
    return time.perf_counter() - start, result


def compare(label: str, case: Instance) -> float:
    """Time both on `case`, print the figures, return the reference's time."""
    pending, nodes, _ = case
    fast, fast_result = timed(place, case)
    slow, slow_result = timed(reference_place, case)
    print(f"{label}: {len(pending):,} pods on {len(nodes):,} nodes")
    print(f"  place      {fast:8.3f} s  {len(pending) / fast:10,.0f} pods/s")
    print(f"  reference  {slow:8.3f} s  {len(pending) / slow:10,.0f} pods/s")
    print(f"  speed ratio {slow / fast:,.0f}x; same placements: {fast_result == slow_result}")
    return slow


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sample", type=int, default=200, help="pods of the full instance for the twin")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds allowed for the full reference")
    args = parser.parse_args()

    full = instance(args.nodes, args.pods, args.seed)
    fast, result = timed(place, full)
    print(f"full: {args.pods:,} pods on {args.nodes:,} nodes, {len(full[2]):,} bound")
    print(f"  place      {fast:8.3f} s  {args.pods / fast:10,.0f} pods/s")
    print(f"  placed {len(result.assigned):,}, unschedulable {len(result.unschedulable):,}")

    compare("small", instance(500, 1000, args.seed))

    # The reference costs about the same per pod throughout: time it on the first pods of
    # the full instance (on all its nodes), and run it all only if that fits the budget.
    sample = (full[0][: args.sample], full[1], full[2])
    estimate = compare(f"sample of full ({args.sample} first pods)", sample) / args.sample * args.pods
    if estimate <= args.budget:
        compare("full", full)
    else:
        print(f"full reference skipped: estimated {estimate:,.0f} s > budget {args.budget:,.0f} s")
        print(f"  reference ~{args.pods / estimate:,.0f} pods/s, ratio to place ~{estimate / fast:,.0f}x")


if __name__ == "__main__":
    main()

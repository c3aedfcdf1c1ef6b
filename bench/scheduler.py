"""Scheduler throughput per kind of constraint: the vectorised `place` against its plain
per-node twin, both run in this process on the same seeded instances.

    python bench/scheduler.py [--nodes 5000] [--cases all|basic,anti-affinity,...]
        [--pods 10000] [--seed 7] [--sample 200] [--budget 30] [--repeat 1]
        [--order grouped|interleaved]

Every case runs on a cluster of `--nodes` nodes of mixed sizes and `max_pods`, labelled as
agents label them (`kubernetes.io/hostname` = the node's name, `kubernetes.io/arch`,
`topology.kubernetes.io/zone` over 10 zones) plus `disk`; about 8% have a NoSchedule taint,
6% a PreferNoSchedule one, 2% are not ready; and about one bound pod per node. Pods carry
the label `app: <their Deployment>`, all in namespace `default`. The cases, after the
issue that set the goals (at 5,000 nodes; the kube-scheduler figures, in pods/s, are the
thresholds its CI holds `scheduler_perf` to, for context):

- `basic` (goal 50,000 pods/s; kube-scheduler 680-810): `--pods` pending pods of 50
  Deployments, some with a nodeSelector (disk, or arch and zone), some tolerating taints.
- `anti-affinity` (goal 2,000 pods/s; kube-scheduler 60): 10 Deployments of
  min(200, nodes/3) replicas, each with required pod anti-affinity to its own app on
  `kubernetes.io/hostname`, so one per node (kube's SchedulingPodAntiAffinity); a tenth
  of the bound pods are earlier replicas, one per node each.
- `topology-spread` (goal 5,000 pods/s; kube-scheduler 460): 10 Deployments of nodes/10
  replicas, each spread over zones on its own app, maxSkew 1, DoNotSchedule (kube's
  SchedulingPodTopologySpreading); a fifth of the bound pods are earlier replicas.
- `node-affinity` (goal 20,000 pods/s; kube-scheduler 220): `--pods` pending pods of 50
  Deployments, each requiring zone In 3 of the 10 zones and arch or disk NotIn one value
  (kube's SchedulingNodeAffinity).
- `distinct` (goal 25,000 pods/s and a peak under 200 MiB): `--pods` pods, each its own
  owner and spec (image, requests, selector, tolerations), the worst case for
  equivalence classes: nothing is shared between pods.
- `daemonset` (goal 50,000 pods/s, as `basic`): two DaemonSets' pods, each naming its
  node (`spec.nodeName`), so each a spec of its own, made for the nodes the planner makes
  them for: one tolerating every taint, on every node, and one selecting `disk: ssd`, on
  the ssd nodes without a NoSchedule taint; and a pod of each for one node in a hundred
  that has gone since. Those on a node not ready or gone fit nowhere.

Pending pods come workload by workload (`--order grouped`, the default), as a control pass
lists them: the planner creates each workload's pods together. `--order interleaved` draws
each pod's workload at random instead, the harder order for classes kept between pods.

For each case: `place` on all of it (building the cluster columns included, best of
`--repeat` runs), its pods/s, placed and unschedulable counts; then the baseline,
`tests.scheduler.reference.reference_place`, on the first `--sample` pods of the same
instance (all nodes, all bound pods), with `place` on that sample too and whether both
gave the same `Placements`. The baseline's time for the whole case is its setup (timed
on no pending pod) plus its per-pod time on the sample times the pods; when that fits in
`--budget` seconds (each case; `--budget 0` for a quick run) it is run on the whole
case instead, and compared there too. The extrapolation assumes the cost per pod stays
what it was for the first pods; a twin whose per-pod cost grows as pods are placed makes
the estimate optimistic for it. The ratio is `place`'s pods/s over the baseline's, on the
whole case.

Why the baseline is fair: the twin is the plain implementation a careful engineer would
write from `docs/scheduler.md`, one node at a time in plain Python, with what does not
change between pods (node labels, taints, capacities) prepared once per call and what
does (free room, pods per owner, domain counts) kept up to date as each pod is bound, not
rebuilt per pod. It is the same function the property tests hold `place` to, so the
speed-up is measured against code that gives the same answers, not a strawman. It is
timed in the same process on the same instance, so machine noise hits both.

Memory: the `distinct` case is run once more under `tracemalloc` (which sees numpy's
array allocations as well as Python objects) to get the peak of what `place` allocates
(the instance itself is built before and not counted), and the process's peak RSS is
printed at the end. Figures are printed, never asserted; the last line of output is one
JSON object with them. A case that raises prints its traceback and records `error`; the
script then exits with status 1 after the JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import resource
import sys
import time
import traceback
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gitops.model import (
    Affinity,
    Container,
    LabelSelector,
    Node,
    NodeName,
    NodeSelectorTerm,
    ObjectKey,
    Placements,
    Pod,
    PodAffinityTerm,
    PodName,
    PodSpec,
    Requirement,
    Taint,
    Toleration,
    TopologySpreadConstraint,
)
from gitops.scheduler import place
from tests.scheduler.reference import reference_place

GiB = 2**30
MiB = 2**20
NAMESPACE = "default"
HOSTNAME = "kubernetes.io/hostname"
ZONE = "topology.kubernetes.io/zone"
ARCH = "kubernetes.io/arch"
ZONES = 10
GOAL_NODES = 5000
Placer = Callable[[Sequence[Pod], Sequence[Node], Sequence[Pod]], Placements]


@dataclass(frozen=True)
class Instance:
    pending: list[Pod]
    nodes: list[Node]
    bound: list[Pod]
    owners: int

    def first(self, count: int) -> Instance:
        return Instance(self.pending[:count], self.nodes, self.bound, self.owners)


@dataclass(frozen=True)
class Template:
    """One Deployment: its key, its pod spec and its pods' labels."""

    owner: ObjectKey
    spec: PodSpec
    labels: tuple[tuple[str, str], ...]

    def pod(self, name: str, node: NodeName | None = None) -> Pod:
        return Pod(
            NAMESPACE,
            PodName(name),
            self.owner,
            self.owner.name,
            self.spec,
            labels=self.labels,
            node=node,
        )


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    goal_pods_per_s: float
    kube: str  # kube-scheduler's CI threshold for the same kind of pods, pods/s
    build: Callable[[argparse.Namespace], Instance]
    goal_peak_mib: float | None = None


# --- instances --------------------------------------------------------------------------


def cluster_nodes(count: int, rng: random.Random) -> list[Node]:
    nodes = []
    for i in range(count):
        name = NodeName(f"node-{i:05d}")
        taints: tuple[Taint, ...] = ()
        roll = rng.random()
        if roll < 0.05:
            taints = (Taint("dedicated", "gpu", "NoSchedule"),)
        elif roll < 0.08:
            taints = (Taint("dedicated", "db", "NoSchedule"), Taint("spot", "", "PreferNoSchedule"))
        elif roll < 0.11:
            taints = (Taint("spot", "", "PreferNoSchedule"),)
        nodes.append(
            Node(
                name,
                cpu_milli=rng.choice([4000, 8000, 16000, 32000]),
                memory_bytes=rng.choice([8, 16, 32, 64]) * GiB,
                labels=(
                    ("disk", rng.choice(["ssd", "hdd"])),
                    (ARCH, rng.choice(["amd64", "amd64", "arm64"])),
                    (HOSTNAME, name),
                    (ZONE, f"zone-{rng.randrange(ZONES)}"),
                ),
                taints=taints,
                ready=rng.random() >= 0.02,
                max_pods=rng.choice([30, 60, 110]),
            )
        )
    return nodes


def container(rng: random.Random, image: str) -> Container:
    return Container(
        name="main",
        image=image,
        cpu_request_milli=rng.choice([0, 50, 100, 250, 500, 1000]),
        memory_request_bytes=rng.choice([64, 128, 256, 512, 1024]) * MiB,
    )


def app_labels(name: str) -> tuple[tuple[str, str], ...]:
    return (("app", name),)


def app_selector(name: str) -> LabelSelector:
    return LabelSelector(match_labels=app_labels(name))


def basic_constraints(
    d: int,
) -> tuple[tuple[tuple[str, str], ...], tuple[Toleration, ...]]:
    """Today's mix: a fifth select ssd, some of the rest arm64 in one zone; a fifth tolerate."""
    selector: tuple[tuple[str, str], ...] = ()
    if d % 5 == 0:
        selector = (("disk", "ssd"),)
    elif d % 7 == 0:
        selector = ((ARCH, "arm64"), (ZONE, "zone-1"))
    tolerations: tuple[Toleration, ...] = ()
    if d % 10 == 1:
        tolerations = (Toleration("dedicated", "Equal", "gpu", "NoSchedule"),)
    elif d % 10 == 2:
        tolerations = (Toleration("dedicated", "Exists"), Toleration("spot", "Exists"))
    return selector, tolerations


def basic_templates(rng: random.Random, count: int = 50, prefix: str = "app") -> list[Template]:
    templates = []
    for d in range(count):
        name = f"{prefix}{d}"
        selector, tolerations = basic_constraints(d)
        spec = PodSpec(
            containers=(container(rng, f"{name}:1"),),
            node_selector=selector,
            tolerations=tolerations,
        )
        templates.append(Template(ObjectKey("Deployment", NAMESPACE, name), spec, app_labels(name)))
    return templates


def pods_of(templates: Sequence[Template], count: int, rng: random.Random, *, order: str) -> list[Pod]:
    """`count` pending pods, each of a template drawn at random; with `--order grouped` (the
    default) listed workload by workload, as a control pass creates them, with
    `--order interleaved` in the order drawn (owners interleaved at random)."""
    drawn = []
    for i in range(count):
        k = rng.randrange(len(templates))
        drawn.append((k, templates[k].pod(f"{templates[k].owner.name}-{i}")))
    if order == "grouped":
        drawn.sort(key=lambda item: item[0])
    return [pod for _, pod in drawn]


def bound_pods(
    templates: Sequence[Template], nodes: Sequence[Node], count: int, rng: random.Random
) -> list[Pod]:
    """`count` running pods of `templates` on random nodes (constraints not applied: they
    are what the cluster already runs)."""
    bound = []
    for i in range(count):
        template = templates[rng.randrange(len(templates))]
        where = nodes[rng.randrange(len(nodes))].name
        bound.append(template.pod(f"old-{template.owner.name}-{i}", node=where))
    return bound


def basic(args: argparse.Namespace) -> Instance:
    rng = random.Random(args.seed)
    nodes = cluster_nodes(args.nodes, rng)
    templates = basic_templates(rng)
    return Instance(
        pods_of(templates, args.pods, rng, order=args.order),
        nodes,
        bound_pods(templates, nodes, args.nodes, rng),
        len(templates),
    )


def anti_affinity(args: argparse.Namespace) -> Instance:
    rng = random.Random(args.seed)
    nodes = cluster_nodes(args.nodes, rng)
    background = basic_templates(rng)
    replicas = min(200, args.nodes // 3)
    templates = []
    for d in range(10):
        name = f"anti{d}"
        term = PodAffinityTerm(app_selector(name), HOSTNAME, namespaces=(NAMESPACE,))
        spec = PodSpec(
            containers=(container(rng, f"{name}:1"),),
            affinity=Affinity(anti_required=(term,)),
        )
        templates.append(Template(ObjectKey("Deployment", NAMESPACE, name), spec, app_labels(name)))
    earlier = args.nodes // 10
    bound = bound_pods(background, nodes, args.nodes - earlier, rng)
    # Earlier replicas run one per node per Deployment, as their anti-affinity wants.
    for d, template in enumerate(templates):
        for i, node in enumerate(rng.sample(nodes, earlier // len(templates))):
            bound.append(template.pod(f"old-{template.owner.name}-{d}-{i}", node=node.name))
    return Instance(
        pods_of(templates, replicas * len(templates), rng, order=args.order), nodes, bound, len(templates)
    )


def topology_spread(args: argparse.Namespace) -> Instance:
    rng = random.Random(args.seed)
    nodes = cluster_nodes(args.nodes, rng)
    background = basic_templates(rng)
    templates = []
    for d in range(10):
        name = f"spread{d}"
        constraint = TopologySpreadConstraint(1, ZONE, "DoNotSchedule", app_selector(name))
        spec = PodSpec(containers=(container(rng, f"{name}:1"),), topology_spread=(constraint,))
        templates.append(Template(ObjectKey("Deployment", NAMESPACE, name), spec, app_labels(name)))
    earlier = args.nodes // 5
    bound = bound_pods(background, nodes, args.nodes - earlier, rng)
    bound += bound_pods(templates, nodes, earlier, rng)
    pending = pods_of(templates, (args.nodes // 10) * len(templates), rng, order=args.order)
    return Instance(pending, nodes, bound, len(templates))


def node_affinity(args: argparse.Namespace) -> Instance:
    rng = random.Random(args.seed)
    nodes = cluster_nodes(args.nodes, rng)
    templates = []
    for d in range(50):
        name = f"affine{d}"
        zones = tuple(f"zone-{(d + k) % ZONES}" for k in range(3))
        excluded = Requirement(ARCH, "NotIn", ("arm64",)) if d % 2 else Requirement("disk", "NotIn", ("hdd",))
        term = NodeSelectorTerm(expressions=(Requirement(ZONE, "In", zones), excluded))
        _, tolerations = basic_constraints(d)
        spec = PodSpec(
            containers=(container(rng, f"{name}:1"),),
            tolerations=tolerations,
            affinity=Affinity(node_required=(term,)),
        )
        templates.append(Template(ObjectKey("Deployment", NAMESPACE, name), spec, app_labels(name)))
    return Instance(
        pods_of(templates, args.pods, rng, order=args.order),
        nodes,
        bound_pods(templates, nodes, args.nodes, rng),
        len(templates),
    )


def distinct(args: argparse.Namespace) -> Instance:
    rng = random.Random(args.seed)
    nodes = cluster_nodes(args.nodes, rng)
    pending = []
    for i in range(args.pods):
        name = f"solo{i}"
        selector, tolerations = basic_constraints(i)
        spec = PodSpec(
            containers=(
                Container(
                    name="main",
                    image=f"{name}:1",
                    cpu_request_milli=rng.randrange(0, 1001, 10),
                    memory_request_bytes=rng.randrange(32, 1025) * MiB,
                ),
            ),
            node_selector=selector,
            tolerations=tolerations,
        )
        template = Template(ObjectKey("Deployment", NAMESPACE, name), spec, app_labels(name))
        pending.append(template.pod(f"{name}-0"))
    bound = bound_pods(basic_templates(rng), nodes, args.nodes, rng)
    return Instance(pending, nodes, bound, len(pending))


def daemonset(args: argparse.Namespace) -> Instance:
    rng = random.Random(args.seed)
    nodes = cluster_nodes(args.nodes, rng)
    templates = [
        Template(
            ObjectKey("DaemonSet", NAMESPACE, name),
            PodSpec(
                containers=(container(rng, f"{name}:1"),), node_selector=selector, tolerations=tolerations
            ),
            app_labels(name),
        )
        for name, selector, tolerations in (
            ("logs", (), (Toleration(operator="Exists"),)),
            ("ssd-cache", (("disk", "ssd"),), ()),
        )
    ]
    gone = [NodeName(f"gone-{i}") for i in range(len(nodes) // 100)]
    ssd = [
        n.name
        for n in nodes
        if ("disk", "ssd") in n.labels and all(t.effect != "NoSchedule" for t in n.taints)
    ]
    pending = [
        Template(template.owner, dataclasses.replace(template.spec, node_name=name), template.labels).pod(
            f"{template.owner.name}-{name}"
        )
        for template, names in zip(templates, ([n.name for n in nodes], ssd), strict=True)
        for name in names + gone
    ]
    return Instance(pending, nodes, bound_pods(basic_templates(rng), nodes, args.nodes, rng), len(templates))


CASES = (
    Case("basic", "resources, node selectors, taints", 50_000, "680-810", basic),
    Case("anti-affinity", "required pod anti-affinity on hostname", 2_000, "60", anti_affinity),
    Case("topology-spread", "topology spread over zones, maxSkew 1", 5_000, "460", topology_spread),
    Case("node-affinity", "required node affinity: zone In 3 of 10, NotIn", 20_000, "220", node_affinity),
    Case("distinct", "all-distinct specs, basic constraints", 25_000, "-", distinct, goal_peak_mib=200),
    Case("daemonset", "two DaemonSets: a pod naming each node", 50_000, "-", daemonset),
)


# --- measuring --------------------------------------------------------------------------


def timed(placer: Placer, case: Instance, repeat: int = 1) -> tuple[float, Placements]:
    """Best time of `repeat` runs, with the result of the last."""
    best = float("inf")
    result = Placements()
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        result = placer(case.pending, case.nodes, case.bound)
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_mib(case: Instance) -> float:
    """Peak of what `place` allocates on `case` (Python objects and numpy arrays)."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        place(case.pending, case.nodes, case.bound)
        return tracemalloc.get_traced_memory()[1] / MiB
    finally:
        tracemalloc.stop()


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rate(pods: int, seconds: float) -> float:
    return pods / seconds if seconds > 0 else float("inf")


def failed(what: str, figures: dict[str, Any], key: str = "error") -> None:
    """Record the exception being handled under `key`, its traceback on stderr."""
    error = sys.exception()
    sys.stdout.flush()
    print(f"  {what} raised:", file=sys.stderr)
    traceback.print_exc()
    sys.stderr.flush()
    print(f"  {what} raised {type(error).__name__}: {error} (traceback on stderr)")
    figures[key] = f"{what}: {type(error).__name__}: {error}"


def figure(who: str, scope: str, seconds: float, pods: int, note: str = "", *, approx: str = " ") -> None:
    """One timing line: who ran, on what, how long, how many pods per second."""
    line = f"  {who:<10} {scope:<10} {approx}{seconds:8.3f} s {rate(pods, seconds):11,.0f} pods/s   {note}"
    print(line.rstrip())


def run(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    instance = case.build(args)
    pods = len(instance.pending)
    print(f"== {case.name}: {case.what} ==")
    print(
        f"  instance: {len(instance.nodes):,} nodes, {len(instance.bound):,} bound, "
        f"{pods:,} pending of {instance.owners:,} owners (generated in {time.perf_counter() - started:.2f} s)"
    )
    # same_placements stays None (null) when the two could not be compared.
    figures: dict[str, Any] = {
        "pods": pods,
        "goal_pods_per_s": case.goal_pods_per_s,
        "met": False,
        "same_placements": None,
    }

    try:
        fast, result = timed(place, instance, args.repeat)
    except Exception:
        failed("place", figures)
        return figures
    figures |= {
        "seconds": round(fast, 4),
        "pods_per_s": round(rate(pods, fast)),
        "placed": len(result.assigned),
        "unschedulable": len(result.unschedulable),
    }
    note = f"placed {len(result.assigned):,}, unschedulable {len(result.unschedulable):,}"
    figure("place", "all", fast, pods, note)
    if result.unschedulable:
        print(f"    e.g. {next(iter(result.unschedulable.values()))[:150]}")

    baseline_rate: float | None = None
    stage, key = "place on the sample", "error"
    try:
        sample = instance.first(args.sample)
        taken = len(sample.pending)
        fast_sample, fast_result = timed(place, sample)
        stage, key = "reference", "baseline_error"
        setup, _ = timed(reference_place, instance.first(0))
        slow_sample, slow_result = timed(reference_place, sample)
        same = fast_result == slow_result
        figure("place", f"first {taken:,}", fast_sample, taken)
        note = f"same placements: {same}; its setup (no pod) {setup:.3f} s"
        figure("reference", f"first {taken:,}", slow_sample, taken, note)
        figures |= {
            "sample": taken,
            "sample_ratio": round(slow_sample / fast_sample, 1),
            "same_placements": same,
            "same_placements_on": taken,
        }
        estimate = setup + max(slow_sample - setup, 0.0) / max(taken, 1) * pods
        if taken == pods:
            baseline_rate, figures["baseline"] = rate(pods, slow_sample), "measured"
        elif estimate <= args.budget:
            slow, slow_result = timed(reference_place, instance)
            figure("reference", "all", slow, pods, f"same placements: {slow_result == result}")
            same = same and slow_result == result
            figures |= {"same_placements": same, "same_placements_on": pods}
            baseline_rate, figures["baseline"] = rate(pods, slow), "measured"
        else:
            note = f"estimated from the first {taken:,} (over the {args.budget:,.0f} s budget)"
            figure("reference", "all", estimate, pods, note, approx="~")
            baseline_rate, figures["baseline"] = rate(pods, estimate), "estimated"
    except Exception:
        failed(stage, figures, key)
    if baseline_rate is not None:
        ratio = rate(pods, fast) / baseline_rate
        figures |= {"baseline_pods_per_s": round(baseline_rate, 1), "ratio": round(ratio, 1)}
        approx = "~" if figures["baseline"] == "estimated" else ""
        print(f"  ratio      {approx}{ratio:,.0f}x on all {pods:,} pods")

    met = rate(pods, fast) >= case.goal_pods_per_s
    goal = f">= {case.goal_pods_per_s:,.0f} pods/s"
    if case.goal_peak_mib is not None:
        goal += f", peak < {case.goal_peak_mib:,.0f} MiB"
        try:
            peak = peak_mib(instance)
        except Exception:
            failed("place under tracemalloc", figures)
            met = False
        else:
            met = met and peak < case.goal_peak_mib
            figures |= {"peak_mib": round(peak, 1), "goal_peak_mib": case.goal_peak_mib}
            print(f"  memory     place's peak under tracemalloc {peak:,.1f} MiB")
    figures["met"] = met
    at = "" if args.nodes == GOAL_NODES else f" (goals are set at {GOAL_NODES:,} nodes)"
    print(f"  goal       {goal} (kube-scheduler CI: {case.kube} pods/s): {'met' if met else 'NOT met'}{at}")
    return figures


def main() -> None:
    names = [case.name for case in CASES]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=GOAL_NODES)
    parser.add_argument(
        "--pods", type=int, default=10_000, help="pending pods of basic, node-affinity, distinct"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sample", type=int, default=200, help="first pods of each case run by the baseline")
    parser.add_argument(
        "--budget",
        type=float,
        default=30.0,
        help="seconds the baseline may take on a whole case (each; 0: always estimate)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of place per case; the best is kept")
    parser.add_argument(
        "--order",
        choices=("grouped", "interleaved"),
        default="grouped",
        help="pending pods workload by workload (as a control pass lists them) or interleaved at random",
    )
    parser.add_argument(
        "--cases", default="all", help=f"'all' or a comma-separated subset of {','.join(names)}"
    )
    args = parser.parse_args()
    chosen = (
        names if args.cases == "all" else [name.strip() for name in args.cases.split(",") if name.strip()]
    )
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"--cases: unknown {', '.join(unknown)}; expected 'all' or some of {', '.join(names)}")

    results = {case.name: run(case, args) for case in CASES if case.name in chosen}
    report: dict[str, Any] = {"nodes": args.nodes, "seed": args.seed, "order": args.order, "cases": results}
    if "distinct" in results:
        report["distinct_peak_mib"] = results["distinct"].get("peak_mib")
    report["rss_mib"] = round(rss_mib(), 1)
    print(f"process peak RSS {report['rss_mib']:,.1f} MiB")
    print(json.dumps(report))
    if any("error" in figures or "baseline_error" in figures for figures in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()

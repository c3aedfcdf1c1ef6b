"""Controller passes while Deployments roll, over a large cluster: `decide` with the
`Settled` memo the controller keeps between passes, against `decide` without it, both in
this process on the same rollout.

    python bench/rollout_pass.py [--nodes 5000] [--pods 150000] [--deployments 1500]
        [--rollout 0.1] [--repeat 2]

The cluster is `bench/noop_pass.py`'s (`steady`: `--nodes` nodes, `--deployments`
Deployments holding `--pods` replicas, every pod bound, Running and ready). Then the first
share `--rollout` of the Deployments get a new image, and passes of `decide` run until every
one of them holds only pods of the new template and nothing is left to do. Between two
passes the agents do what the pass said as the server's do: a new pod is bound, Running and
ready by the next pass, and a stopped pod is still there, terminating (its name kept from
new pods, its resources held), for one pass, then gone (its agent reported it stopped).
This is the planner, scheduler and rollouts of a pass alone; reading the pods from the
store and writing the pass's changes are not part of it (`bench/scale.py --rollout` times
whole rollouts in the server).

Each way runs the whole rollout `--repeat` times from the same start; each pass's best time
is kept. Both ways must make the very same decisions at each pass. The figures: the passes,
the sum of their times (`rollout_decide_s`), the mean and the longest pass, and the ratio
of the baseline's sum to the memo's. The last line is one JSON object of the figures.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.noop_pass import cluster_parser, say, steady
from gitops.model import ClusterState, PodId
from gitops.planner.settled import Settled
from gitops.reconcile import Decision, decide
from tests.planner.factories import deployment


def rolled(state: ClusterState, share: float) -> tuple[ClusterState, int]:
    """`state` with the first `share` of its Deployments given a new image (`noop_pass`'s
    Deployments, `:2` for `:1`), and how many."""
    count = max(1, round(len(state.desired) * share))
    desired = list(state.desired)
    for i, manifest in enumerate(desired[:count]):
        container = manifest.spec["template"]["spec"]["containers"][0]
        image = str(container["image"]).replace(":1", ":2")
        requests = container.get("resources", {})
        replicas = int(manifest.spec["replicas"])
        desired[i] = deployment(manifest.key.name, replicas, image=image, resources=requests)
    return dataclasses.replace(state, desired=tuple(desired)), count


def carried_out(state: ClusterState, decision: Decision, now: float) -> ClusterState:
    """`state` after the agents did what `decision` says, as the server's do: the pods
    stopped before this pass are gone; those it stops are terminating; those it places are
    bound, Running and ready (`gitops.reconcile.settle`, but for the terminating pods)."""
    stopping: set[PodId] = {a.pod.id for a in (*decision.plan.stop, *decision.evicted, *decision.preempted)}
    assigned = decision.placements.assigned
    pods = []
    for pod in [*state.pods, *(a.pod for a in decision.plan.create)]:
        if pod.terminating_at is not None:
            continue  # its agent reported it stopped
        if pod.id in stopping:
            pods.append(dataclasses.replace(pod, terminating_at=now, ready=False))
            continue
        node = assigned.get(pod.id)
        if node is None:
            pods.append(pod)
        else:
            ran = dataclasses.replace(pod, node=node, phase="Running", ready=True, ready_since=now, reason="")
            pods.append(ran)
    return dataclasses.replace(
        state,
        pods=tuple(sorted(pods, key=lambda p: (p.namespace, p.name))),  # as the pod cache gives them
        rollouts=dict(decision.rollouts),
        jobs=dict(decision.jobs),
        crons=dict(decision.crons),
        scales=dict(decision.scales),
        version="",
    )


def rollout(state: ClusterState, now: float, settled: Settled | None) -> tuple[list[float], list[Decision]]:
    """Each pass's time and decision, from `state` until a pass decides nothing."""
    times, decisions = [], []
    for _ in range(200):
        # What lives on is frozen between passes, as the server's `gitops.heap.Heap` does:
        # the collector walks only what the pass makes.
        gc.collect()
        gc.freeze()
        started = time.perf_counter()
        decision = decide(state, now, settled=settled)
        times.append(time.perf_counter() - started)
        decisions.append(decision)
        if decision.empty:
            gc.unfreeze()
            return times, decisions
        state, now = carried_out(state, decision, now), now + 1.0
    raise SystemExit("the rollout did not end in 200 passes")


def best_of(state: ClusterState, now: float, repeat: int, memo: bool) -> tuple[list[float], list[Decision]]:
    """The rollout `repeat` times from `state`: each pass's best time, and the decisions."""
    best: list[float] = []
    decisions: list[Decision] = []
    for _ in range(repeat):
        settled = None
        if memo:
            settled = Settled()
            decide(state, now - 1.0, settled=settled)  # the memo as the quiet passes before left it
        times, decisions = rollout(state, now, settled)
        best = times if not best else [min(a, b) for a, b in zip(best, times, strict=True)]
    return best, decisions


def show(way: str, times: list[float]) -> None:
    say(f"{way}: {len(times)} passes, {sum(times):.2f} s in all, longest {max(times) * 1000:.0f} ms")


def digest(decisions: list[Decision]) -> str:
    """A digest of what each pass decided (the pods it creates and stops, where it places
    them, the rollouts' states), to hold one code's passes against another's."""
    h = hashlib.sha256()
    for d in decisions:
        h.update(repr(sorted(a.pod.id for a in d.plan.create)).encode())
        h.update(repr(sorted(a.pod.id for a in d.plan.stop)).encode())
        h.update(repr(sorted(d.placements.assigned.items())).encode())
        h.update(repr(sorted(d.rollouts.items(), key=lambda kv: kv[0].ref)).encode())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = cluster_parser(__doc__)
    parser.add_argument("--rollout", type=float, default=0.1, help="the share of the Deployments rolled")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    say(f"rollout passes: {args.nodes} nodes, {args.pods} pods in {args.deployments} Deployments")
    args.pending = 0  # (what `steady` reads)
    start, now = steady(args)
    state, count = rolled(start, args.rollout)
    say(f"{count} Deployments get a new image")
    baseline, plain = best_of(state, now, args.repeat, memo=False)
    show("without the memo", baseline)
    memo, kept = best_of(state, now, args.repeat, memo=True)
    show("with the memo", memo)
    same = plain == kept
    say(f"both decide the same at each pass: {same}")
    say(f"ratio: {sum(baseline) / sum(memo):.2f}x")
    figures = {
        "nodes": args.nodes,
        "pods": len(start.pods),
        "deployments": args.deployments,
        "rolled": count,
        "passes": len(memo),
        "rollout_decide_s": round(sum(memo), 3),
        "pass_ms_mean": round(sum(memo) / len(memo) * 1000, 1),
        "pass_ms_max": round(max(memo) * 1000, 1),
        "baseline_s": round(sum(baseline), 3),
        "ratio": round(sum(baseline) / sum(memo), 2),
        "same": same,
        "decisions": digest(kept),
    }
    print(json.dumps(figures), flush=True)
    return figures


if __name__ == "__main__":
    main()

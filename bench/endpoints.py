"""What a move of a few pods costs the Services' endpoints at scale: `KeptEndpoints` (only
the Services the changed pods belong to computed and encoded again) against the full
computation (`all_endpoints` over every pod, every Service encoded), in this process on the
same state.

    python bench/endpoints.py [--nodes 5000] [--pods 150000] [--services 1500]
        [--changed 1 100 1000] [--repeat 5]

The state: `--nodes` Ready nodes and `--pods` Running, ready pods spread over them, in
`--services` apps of one Deployment and one ClusterIP Service each (port 80 to 8080). For
each count of `--changed`, that many pods (spread over the apps) flip their readiness, and
both ways compute every Service's endpoints from the new pods and encode the Services they
computed as JSON text (what `gitops.api.agentsync.SharedEndpoints` sends agents). Each way is
timed `--repeat` times (the best is kept; the pods flip back and forth), and the results are
checked equal. Baseline: the full computation, which is what every move of any pod cost
before (`all_endpoints` indexes pods by label once per call: no quadratic walk).

Then what the move costs to send: the bytes each agent holding the Services before the
move gets, the Services that changed whole (the baseline: what agents got before) against
as edits of the ones they hold (`gitops.edits.service_edits`, each checked to give the
whole Service back), the time making the edits took, and how long the next move waits at
`--nodes` agents for that fan-out (`SharedEndpoints`' pace). The last line is one JSON
object of the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gitops.api.agentsync import FANOUT_BYTES_PER_S, MAX_PACE
from gitops.codec import encode
from gitops.edits import edited_service, service_edits
from gitops.model import (
    Container,
    Node,
    NodeName,
    ObjectKey,
    Pod,
    PodName,
    PodSpec,
    ServiceEndpoints,
    pod_changes,
)
from gitops.planner import all_endpoints
from gitops.planner.services import KeptEndpoints
from tests.planner.factories import service


def say(line: str) -> None:
    print(line, flush=True)


def texts(services: tuple[ServiceEndpoints, ...], only: set[ObjectKey] | None = None) -> int:
    """Encode `services` (those of `only`) as JSON text, as agents get them; the bytes."""
    size = 0
    for s in services:
        if only is None or ObjectKey("Service", s.namespace, s.name) in only:
            size += len(json.dumps(encode(s), separators=(",", ":")).encode())
    return size


def sent(held: tuple[ServiceEndpoints, ...], now: tuple[ServiceEndpoints, ...]) -> tuple[int, int, float]:
    """What an agent holding `held` gets of the Services that changed in `now`: their bytes
    whole, as edits of those held, and the seconds making the edits took (each checked to
    give the Service whole back)."""
    before = {(s.namespace, s.name): s for s in held}
    whole_bytes = edits_bytes = 0
    took = 0.0
    for new in now:
        old = before.get((new.namespace, new.name))
        if old == new:
            continue
        value = encode(new)
        whole = json.dumps(value, separators=(",", ":")).encode()
        whole_bytes += len(whole)
        if old is None:
            edits_bytes += len(whole)
            continue
        began = time.perf_counter()
        text = service_edits(old, new, value, whole)
        took += time.perf_counter() - began
        edits_bytes += len(text)
        entry = json.loads(text)
        if "edits" in entry:
            old_text = json.dumps(encode(old), separators=(",", ":"))
            if edited_service(json.loads(old_text), entry) != json.loads(whole):
                raise SystemExit(f"the edits of {new.namespace}/{new.name} do not give it whole")
    return whole_bytes, edits_bytes, took


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=150_000)
    parser.add_argument("--services", type=int, default=1500)
    parser.add_argument("--changed", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    spec = PodSpec(containers=(Container(name="app", image="app:1"),))
    nodes = [
        Node(
            NodeName(f"node-{i}"),
            f"10.1.{i // 250}.{i % 250 + 1}",
            ready=True,
            pod_cidr=f"10.{100 + i // 250}.{i % 250}.0/24",
        )
        for i in range(args.nodes)
    ]
    pods = [
        Pod(
            "default",
            PodName(f"app{p % args.services}-{p}"),
            ObjectKey("Deployment", "default", f"app{p % args.services}"),
            "h",
            spec,
            labels=(("app", f"app{p % args.services}"),),
            node=NodeName(f"node-{p % args.nodes}"),
            phase="Running",
            ready=True,
            pod_ip=f"10.{64 + (p >> 16)}.{(p >> 8) & 255}.{p & 255}",
        )
        for p in range(args.pods)
    ]
    pods.sort(key=lambda p: p.id)
    desired = [service(f"app{d}", {"app": f"app{d}"}) for d in range(args.services)]
    vips = {s.key: f"10.96.{d // 250}.{d % 250 + 1}" for d, s in enumerate(desired)}
    say(f"{args.nodes} nodes, {len(pods)} pods, {args.services} Services")

    kept = KeptEndpoints()
    began = time.perf_counter()
    first = kept.update(desired, vips, pods, nodes, None, changed=None)
    size = texts(first)
    say(
        f"first computation (every Service): {time.perf_counter() - began:.3f} s, {size / 1e6:.1f} MB of JSON"
    )

    held = first
    figures: dict[str, Any] = {
        "nodes": args.nodes,
        "pods": args.pods,
        "services": args.services,
        "json_mb": round(size / 1e6, 1),
    }
    for count in args.changed:
        step = max(1, len(pods) // count)
        at = list(range(0, len(pods), step))[:count]
        best_full = best_kept = best_edits = float("inf")
        whole_bytes = edits_bytes = 0
        for _ in range(args.repeat):
            before = pods
            pods = list(pods)
            for i in at:
                pods[i] = dataclasses.replace(pods[i], ready=not pods[i].ready)
            changed, _, swapped = pod_changes(before, pods)

            began = time.perf_counter()
            full = all_endpoints(desired, vips, pods, nodes)
            texts(full)
            best_full = min(best_full, time.perf_counter() - began)

            began = time.perf_counter()
            ours = kept.update(desired, vips, pods, nodes, None, changed=changed + swapped)
            texts(ours, set(kept.recomputed))
            best_kept = min(best_kept, time.perf_counter() - began)
            if ours != full:
                raise SystemExit("the kept endpoints differ from the full computation")
            whole_bytes, edits_bytes, took = sent(held, ours)
            best_edits = min(best_edits, took)
            held = ours
        ratio = best_full / best_kept
        say(
            f"{count:>6} pods changed: kept {best_kept * 1000:8.1f} ms "
            f"({len(kept.recomputed)} Services computed), "
            f"full (baseline) {best_full * 1000:8.1f} ms: {ratio:.1f}x"
        )
        paces = [min(MAX_PACE, size * args.nodes / FANOUT_BYTES_PER_S) for size in (whole_bytes, edits_bytes)]
        say(
            f"{count:>6} pods changed: each agent gets {edits_bytes / 1e3:,.1f} kB as edits "
            f"(made in {best_edits * 1000:.1f} ms), {whole_bytes / 1e3:,.1f} kB whole (baseline): "
            f"{whole_bytes / max(1, edits_bytes):.1f}x; the next move waits {paces[1]:.2f} s "
            f"at {args.nodes} agents ({paces[0]:.2f} s whole)"
        )
        figures[f"edits_{count}_kb"] = round(edits_bytes / 1e3, 1)
        figures[f"whole_{count}_kb"] = round(whole_bytes / 1e3, 1)
        figures[f"edits_ratio_{count}"] = round(whole_bytes / max(1, edits_bytes), 1)
        figures[f"edits_{count}_ms"] = round(best_edits * 1000, 2)
        figures[f"pace_edits_{count}_s"] = round(paces[1], 2)
        figures[f"pace_whole_{count}_s"] = round(paces[0], 2)
        figures[f"kept_{count}_ms"] = round(best_kept * 1000, 2)
        figures[f"full_{count}_ms"] = round(best_full * 1000, 2)
        figures[f"ratio_{count}"] = round(ratio, 1)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()

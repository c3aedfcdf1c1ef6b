"""Preview speed: a 1,000-object change against a 100-node, 3,000-pod cluster.

    python bench/plan.py [--nodes 100] [--deployments 500] [--replicas 6] [--configmaps 500]

The base revision has `--deployments` Deployments of `--replicas` pods each (3,000 pods by
default) and a Service each, settled on `--nodes` nodes by the real control loop. The
head revision changes every Deployment's image (a rolling update of every pod) and adds
`--configmaps` ConfigMaps: 1,000 changed objects. The preview is timed end to end
(manifests as files in, report out) and split into validation, object diff, planning and
scheduling (the planner and scheduler are timed by wrapping the functions the control
pass calls); rendering Markdown is timed apart. The baseline, in the same process, is
the same preview with the scheduler replaced by its plain per-node reference twin
(tests/scheduler/reference.py), which gives identical placements.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gitops.preview.compute as compute_module
import gitops.reconcile as reconcile_module
from gitops.model import ClusterState, Node, NodeName
from gitops.planner import podspec
from gitops.preview import RevisionInfo, preview
from gitops.preview.compute import converge
from gitops.preview.render import to_markdown
from gitops.schemas.loader import SourceFile
from gitops.schemas.validate import validate_files
from tests.scheduler.reference import reference_place

GiB = 2**30


def deployment(i: int, image: str) -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app{i}
spec:
  replicas: {{replicas}}
  selector:
    matchLabels: {{{{app: app{i}}}}}
  template:
    metadata:
      labels: {{{{app: app{i}}}}}
    spec:
      containers:
        - name: main
          image: {image}
          resources:
            requests: {{{{cpu: 50m, memory: 64Mi}}}}
---
apiVersion: v1
kind: Service
metadata:
  name: app{i}
spec:
  selector: {{{{app: app{i}}}}}
  ports:
    - port: 80
      targetPort: 8080
"""


def configmap(i: int) -> str:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config{i}\ndata:\n  key: value-{i}\n"


def revision(args: argparse.Namespace, *, head: bool) -> list[SourceFile]:
    files = []
    for i in range(args.deployments):
        text = deployment(i, f"app{i}:{2 if head else 1}").format(replicas=args.replicas)
        files.append(SourceFile(f"apps/app{i}.yaml", text.encode()))
    if head:
        files += [SourceFile(f"config/config{i}.yaml", configmap(i).encode()) for i in range(args.configmaps)]
    return files


class Clock:
    """Seconds spent inside wrapped functions, by name."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - start

        return timed


@contextmanager
def instrumented(clock: Clock, placer: Callable[..., Any]) -> Iterator[None]:
    saved = (
        reconcile_module.plan,
        reconcile_module.place,
        compute_module.validate_files,
        compute_module.diff_objects,
    )
    reconcile_module.plan = clock.wrap("planning", reconcile_module.plan)  # type: ignore[assignment]
    reconcile_module.place = clock.wrap("scheduling", placer)  # type: ignore[assignment]
    compute_module.validate_files = clock.wrap("validation", compute_module.validate_files)  # type: ignore[assignment]
    compute_module.diff_objects = clock.wrap("diff", compute_module.diff_objects)  # type: ignore[assignment]
    try:
        yield
    finally:
        (
            reconcile_module.plan,
            reconcile_module.place,
            compute_module.validate_files,
            compute_module.diff_objects,
        ) = saved


def run(
    label: str,
    args: argparse.Namespace,
    *,
    state: ClusterState,
    base: list[Any],
    head: list[SourceFile],
    placer: Callable[..., Any],
) -> tuple[float, Any]:
    clock = Clock()
    podspec._TEMPLATES.clear()  # each run resolves the head's templates from scratch
    with instrumented(clock, placer):
        start = time.perf_counter()
        result = preview(head, base, state, head=RevisionInfo("head"), now=1000.0, secret_key=b"bench")
        total = time.perf_counter() - start
    other = total - sum(clock.spent.values())
    print(
        f"{label}: {total:.3f} s for {len(result.objects):,} changed objects, "
        f"{len(result.actions):,} pod actions in {result.passes} passes"
    )
    for name in ("validation", "diff", "planning", "scheduling"):
        spent = clock.spent.get(name, 0.0)
        print(f"  {name:<11} {spent:7.3f} s  {spent / total:6.1%}")
    print(f"  {'other':<11} {other:7.3f} s  {other / total:6.1%}  (rollout bookkeeping, settling, warnings)")
    return total, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--deployments", type=int, default=500)
    parser.add_argument("--replicas", type=int, default=6)
    parser.add_argument("--configmaps", type=int, default=500)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    nodes = tuple(
        Node(NodeName(f"node-{i:03d}"), f"10.0.{i // 250}.{i % 250}", 16000, 64 * GiB)
        for i in range(args.nodes)
    )
    base = list(validate_files(revision(args, head=False)).manifests)
    start = time.perf_counter()
    state = converge(ClusterState(desired=tuple(base), pods=(), nodes=nodes), now=0.0)
    state = dataclasses.replace(state, version="bench")
    print(
        f"state: {len(state.nodes)} nodes, {len(state.pods):,} pods, {len(base):,} objects "
        f"(settled in {time.perf_counter() - start:.2f} s)"
    )
    head = revision(args, head=True)

    # Rounds alternate the two so neither gains from running second (warm caches in
    # jsonschema and the interpreter); the best round of each is compared.
    fast = slow = float("inf")
    result = reference = None
    for round_ in range(1, args.rounds + 1):
        print(f"round {round_}:")
        t, result = run("preview", args, state=state, base=base, head=head, placer=reconcile_module.place)
        fast = min(fast, t)
        if not args.no_baseline:
            t, reference = run(
                "baseline (per-node reference scheduler)",
                args,
                state=state,
                base=base,
                head=head,
                placer=reference_place,
            )
            slow = min(slow, t)
    assert result is not None
    start = time.perf_counter()
    markdown = to_markdown(result)
    print(f"markdown: {time.perf_counter() - start:.3f} s ({len(markdown):,} characters)")
    print(f"best preview {fast:.3f} s; goal under 2 s -> {'met' if fast < 2.0 else 'NOT met'}")
    if reference is not None:
        same = [(a.pod, a.node) for a in reference.actions] == [(a.pod, a.node) for a in result.actions]
        print(
            f"best baseline {slow:.3f} s; speed ratio {slow / fast:.2f}x; same pod actions and nodes: {same}"
        )


if __name__ == "__main__":
    main()

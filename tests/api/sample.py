"""A small cluster in a store, for the status page, read-only API and metrics tests.

Two nodes (one tainted, one with a `<script>` in a label value), a Deployment whose pods
take an env value from a Secret and carry a `<script>` label, a Service, an applied and a
rejected revision, and pods reported Running with the Secret value in a log tail.
"""

from __future__ import annotations

from pathlib import Path

from gitops.controller import reconcile_once
from gitops.metrics import Metrics
from gitops.model import Node, NodeName, PodStatus, Revision, Taint
from gitops.store import Store
from tests.planner.factories import deployment, secret, service

SECRET_VALUE = "Zq9-very-secret-7731"
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
NOW = 1_000.0


def node(name: str, **extra: object) -> Node:
    return Node(
        NodeName(name),
        address=f"192.0.2.{len(name)}",
        cpu_milli=4000,
        memory_bytes=8 * 2**30,
        **extra,  # type: ignore[arg-type]
    )


def sample_store(path: Path, *, metrics: Metrics | None = None) -> Store:
    store = Store(f"sqlite:///{path / 'state.db'}")
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    web = deployment(
        "web",
        replicas=3,
        env=env,
        labels={"app": "web", "note": HOSTILE},
        resources={"requests": {"cpu": "250m", "memory": "64Mi"}},
    )
    store.apply_revision(
        Revision(
            "git:repo", "a" * 40, message="Deploy web\n\nbody", author="Tess Ter", committed_at=NOW - 60
        ),
        [secret("creds", token=SECRET_VALUE), web, service("web", {"app": "web"})],
        [],
        NOW - 50,
    )
    store.reject_revision(
        Revision("git:repo", "b" * 40, message="Break it", author="Tess Ter", committed_at=NOW - 30),
        ['apps/web.yaml:14:9: Deployment default/web: spec.replicas: expected integer >= 0, got "three"'],
        [],
        NOW - 20,
    )
    store.register_node(node("n1", labels=(("zone", "a"), ("evil", HOSTILE))), "t1", NOW - 40)
    store.register_node(node("n2", taints=(Taint("dedicated", "gpu", "NoSchedule"),)), "t2", NOW - 40)
    reconcile_once(store, NOW - 30, metrics=metrics)
    report_running(store, NOW - 10)
    return store


def report_running(store: Store, now: float) -> None:
    """Every bound pod's agent says it runs and is ready; one log tail echoes the Secret."""
    by_node: dict[str, list[PodStatus]] = {}
    for i, pod in enumerate(store.pods()):
        if pod.node is None or pod.phase == "Running":
            continue
        by_node.setdefault(pod.node, []).append(
            PodStatus(
                pod.id,
                "Running",
                ready=True,
                pod_ip=f"172.17.0.{i + 2}",
                restarts=1,
                last_log=f"starting with token={SECRET_VALUE}\n" if i == 0 else "",
            )
        )
    for name in ("n1", "n2"):
        store.heartbeat(name, by_node.get(name, []), now)

"""A control plane that lost its database adopts the running pods of StatefulSets and
DaemonSets as it does Deployments': a StatefulSet's pod as its ordinal (with its own claim,
now held on the pod's node), a DaemonSet's as the pod of its node; never one the workload
has no place for. A Job's pods are not adopted: what the Job counted is gone."""

from __future__ import annotations

from pathlib import Path

from gitops.model import Manifest, Node, NodeName, ObjectKey, PodStatus, Revision
from gitops.planner.plan import configs_of
from gitops.planner.podspec import resolve_template
from gitops.store import Store
from tests.planner.factories import manifest

POD = {"containers": [{"name": "main", "image": "db:1"}]}
LABELS = {"app": "db"}


def statefulset() -> Manifest:
    return manifest(
        "StatefulSet",
        "db",
        spec={
            "replicas": 2,
            "serviceName": "db",
            "selector": {"matchLabels": LABELS},
            "template": {"metadata": {"labels": LABELS}, "spec": POD},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}}],
        },
    )


def daemonset() -> Manifest:
    labels = {"app": "agent"}
    return manifest(
        "DaemonSet",
        "agent",
        spec={"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": POD}},
    )


def job() -> Manifest:
    return manifest("Job", "once", spec={"template": {"spec": {**POD, "restartPolicy": "Never"}}})


def test_running_pods_of_statefulsets_and_daemonsets_are_adopted_where_they_have_a_place(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 4000, 2**32), "t", now=0.0)
    objects = [statefulset(), daemonset(), job()]
    store.apply_revision(Revision("git:x", "a" * 40), objects, [], now=0.0)
    configs = configs_of(objects)
    db, agent, once = (resolve_template(m, configs).hash for m in objects)

    def found(pod: str, template: str, owner: str) -> PodStatus:
        return PodStatus(pod, "Running", True, template_hash=template, owner=owner)  # type: ignore[arg-type]

    reported = [
        found("default/db-1", db, "StatefulSet/default/db"),
        found("default/db-7", db, "StatefulSet/default/db"),  # beyond its replicas: no place
        found("default/agent-bcdfg", agent, "DaemonSet/default/agent"),
        found("default/agent-zzzzz", agent, "DaemonSet/default/agent"),  # a second on one node
        found("default/once-bcdfg", once, "Job/default/once"),
    ]
    assert store.heartbeat("n1", reported, now=5.0, adopt=True)
    pods = {p.name: p for p in store.pods()}
    assert sorted(pods) == ["agent-bcdfg", "db-1"]
    db1 = pods["db-1"]
    assert (db1.owner, db1.node, db1.spec.hostname, db1.spec.subdomain) == (
        ObjectKey("StatefulSet", "default", "db"),
        "n1",
        "db-1",
        "db",
    )
    assert db1.spec.claims == ("default/data-db-1",)
    assert store.claims() == {"default/data-db-1": "n1"}  # the data is where the pod runs
    assert pods["agent-bcdfg"].spec.node_name == "n1"
    assert {e.reason for e in store.events()} >= {"Adopted"}


def test_reports_written_together_adopt_no_more_than_the_workload_has_places_for(tmp_path: Path) -> None:
    """Reports of one batch (one transaction) read the desired objects once and see each
    other's adoptions: two nodes reporting a container each of a Deployment with one
    replica get one adopted, and every object is read once for the batch."""
    from sqlalchemy import event

    from gitops.store import Report
    from tests.planner.factories import deployment

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    for name in ("n1", "n2"):
        store.register_node(Node(NodeName(name), "192.0.2.10", 4000, 2**32), "t", now=0.0)
    web = deployment(replicas=1)
    store.apply_revision(Revision("git:x", "a" * 40), [web], [], now=0.0)
    template = resolve_template(web, configs_of([web])).hash
    selects: list[str] = []
    event.listen(
        store.engine,
        "before_cursor_execute",
        lambda *a: selects.append(a[2]) if a[2].rstrip().endswith("FROM objects") else None,  # every object
    )

    def found(suffix: str) -> PodStatus:
        pod = f"default/web-{template}-{suffix}"
        return PodStatus(pod, "Running", True, template_hash=template, owner="Deployment/default/web")  # type: ignore[arg-type]

    results = store.heartbeats(
        [
            Report("n1", (found("bcdfg"),), now=5.0, adopt=True),
            Report("n2", (found("hjklm"),), now=5.0, adopt=True),
        ]
    )
    assert len(selects) == 1
    assert results == [True, False]  # the second found the one replica taken by the first's adoption
    assert [(p.name, p.node) for p in store.pods()] == [(f"web-{template}-bcdfg", "n1")]

"""/metrics speaks Prometheus' text format, and its numbers move with syncs and binds."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gitops.api.app import create_app
from gitops.controller import reconcile_once
from gitops.metrics import Metrics
from gitops.model import Node, NodeName, Revision
from gitops.store import Store
from gitops.sync.service import SyncService
from gitops.sync.sources import FolderSource, SourceMissing
from tests.api.sample import NOW, sample_store
from tests.planner.factories import deployment

GOOD = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: web:1
"""


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def test_cluster_figures_are_read_from_the_store(tmp_path: Path) -> None:
    store = sample_store(tmp_path)
    got = samples(TestClient(create_app(store, join_token="j", clock=lambda: NOW)))
    assert got[("gitops_pods", (("phase", "Running"),))] == 3
    assert got[("gitops_pods", (("phase", "Pending"),))] == 0
    assert got[("gitops_revisions_total", (("status", "applied"),))] == 1
    assert got[("gitops_revisions_total", (("status", "rejected"),))] == 1
    assert got[("gitops_node_heartbeat_age_seconds", (("node", "n1"),))] == 10
    assert got[("gitops_node_ready", (("node", "n2"),))] == 1


def test_syncs_are_counted_by_outcome_and_timed(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    metrics = Metrics()
    client = TestClient(create_app(store, join_token="j", metrics=metrics))
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "web.yaml").write_text(GOOD)
    sync = SyncService(store, FolderSource(folder), metrics=metrics)
    source = sync.source.name

    sync.sync()
    sync.sync()
    (folder / "web.yaml").write_text(GOOD.replace("replicas: 2", "replicas: three"))
    sync.sync()
    got = samples(client)
    for outcome, n in (("applied", 1), ("unchanged", 1), ("rejected", 1)):
        assert got[("gitops_syncs_total", (("outcome", outcome), ("source", source)))] == n
    assert got[("gitops_sync_duration_seconds_count", (("source", source),))] == 3
    assert got[("gitops_revisions_total", (("status", "rejected"),))] == 1

    (folder / "web.yaml").unlink()
    folder.rmdir()
    with pytest.raises(SourceMissing):
        sync.sync()
    got = samples(client)
    assert got[("gitops_syncs_total", (("outcome", "failed"), ("source", source)))] == 1


def test_scheduling_latency_is_the_wait_from_creation_to_bind(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    metrics = Metrics()
    client = TestClient(create_app(store, join_token="j", metrics=metrics, clock=lambda: 200.0))
    store.apply_revision(Revision("git:x", "1" * 40), [deployment(replicas=2)], [], 100.0)
    reconcile_once(store, 100.0, metrics=metrics)  # no nodes: created, pending
    assert samples(client)[("gitops_scheduling_latency_seconds_count", ())] == 0
    store.register_node(Node(NodeName("n1"), "192.0.2.1", 4000, 2**32), "t", 107.0)
    reconcile_once(store, 107.5, metrics=metrics)
    got = samples(client)
    assert got[("gitops_scheduling_latency_seconds_count", ())] == 2
    assert got[("gitops_scheduling_latency_seconds_sum", ())] == 15.0
    assert got[("gitops_scheduling_latency_seconds_bucket", (("le", "5.0"),))] == 0
    assert got[("gitops_scheduling_latency_seconds_bucket", (("le", "10.0"),))] == 2
    assert got[("gitops_pods", (("phase", "Pending"),))] == 2


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    first, second = Metrics(), Metrics()
    first.observe_sync("a", "applied", 0.1)
    a = samples(TestClient(create_app(store, join_token="j", metrics=first)))
    b = samples(TestClient(create_app(store, join_token="j", metrics=second)))
    assert a[("gitops_syncs_total", (("outcome", "applied"), ("source", "a")))] == 1
    assert not any(name == "gitops_syncs_total" for name, _ in b)


def test_the_measured_use_is_written_as_prometheus_client_writes_it() -> None:
    """`/metrics/resource` is written line by line (`render_usage`), not through
    prometheus_client's samples: the same text as its `generate_latest` gives for the same
    gauges, labels that need escaping and values of every kind included."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    from gitops.metrics import render_usage, usage_text
    from gitops.model import ContainerUsage, PodUsage

    samples = [
        PodUsage("default/web-1", 1.0, (ContainerUsage("app", 12.5, 2**20), ContainerUsage("side", 0.0, 0))),
        PodUsage('odd/a"b\\c\nd', 2.0, (ContainerUsage('x"y', 1e-7, 3),)),
        PodUsage("big/p", 3.0, (ContainerUsage("c", 123456789.25, 2**62),)),
    ]

    class Twin:
        def collect(self) -> list[GaugeMetricFamily]:
            labels = ["namespace", "pod", "container"]
            cpu = GaugeMetricFamily(
                "gitops_container_cpu_usage_millicores",
                "CPU a container used over its agent's last sampling window, in thousandths of a CPU.",
                labels=labels,
            )
            memory = GaugeMetricFamily(
                "gitops_container_memory_working_set_bytes",
                "A container's memory working set (usage minus inactive file pages), as last measured.",
                labels=labels,
            )
            for s in samples:
                namespace, _, name = s.pod.partition("/")
                for c in s.containers:
                    cpu.add_metric([namespace, name, c.container], c.cpu_milli)
                    memory.add_metric([namespace, name, c.container], float(c.memory_bytes))
            return [cpu, memory]

    registry = CollectorRegistry()
    registry.register(Twin())  # type: ignore[arg-type]
    assert render_usage(samples) == generate_latest(registry)
    parts = list(usage_text(samples, per=1))  # a part a pod: the same text
    assert len(parts) == 6 and b"".join(parts) == generate_latest(registry)
    families = {f.name: f for f in text_string_to_metric_families(render_usage(samples).decode())}
    assert families["gitops_container_cpu_usage_millicores"].samples[2].labels == {
        "namespace": "odd",
        "pod": 'a"b\\c\nd',
        "container": 'x"y',
    }

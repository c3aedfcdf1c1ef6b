"""Prometheus metrics: what the control plane did (counted as it happens) and what the
cluster looks like (read from the store at each scrape).

One `Metrics` per control plane, each with its own `CollectorRegistry` (never the
process-global one, so that tests and benchmarks can build many apps in one process). The
sync service records each sync's duration and outcome, the controller records how long
each pod waited between creation and its bind to a node; the HTTP API serves
`render()` at `/metrics`, and every container's measured use apart, `render_resource()` at
`/metrics/resource` (as kubelet serves it beside its `/metrics`: 300,000 series at 150,000
pods, which a scrape of the control plane's own figures need not read and render). Pods by
phase, revisions by status and agent heartbeat ages are not kept in memory at all: a
collector asks the store when Prometheus scrapes, so they are right after a restart and
agree with the status page.

Names (all prefixed `gitops_`):

- `sync_duration_seconds{source}` histogram; `syncs_total{source,outcome}` counter with
  outcome `applied`, `rejected`, `unchanged` or `failed`
- `revisions_total{status}`: revisions recorded in the store, `applied` or `rejected`
- `pods{phase}` gauge
- `scheduling_latency_seconds` histogram: pod creation to bind
- `controller_pass_seconds` histogram: one control-loop pass, reading to writing;
  `controller_pass_writes` gauge: the write statements (rows) of the last pass (0 when it
  had nothing to do)
- `node_heartbeat_age_seconds{node}` and `node_ready{node}` gauges
- `proxy_rules_skipped{node}` gauge: service rules a node's proxy skipped as invalid
- `agent_sync_seconds` histogram: an agent's sync call in the server, from its handler's
  start to its answer (a quiet heartbeat answered from memory, or one that reads or writes)
- `agent_calls_yielded_seconds_total` counter: how long agents' sync calls waited, in all,
  for the controller deciding or writing thousands of pods (`gitops.loop.Precedence`)
- `problem_seconds{component}` gauge: how long a part of the control plane (the controller,
  a source's sync, the status view) has been failing; absent while it works
- at `/metrics/resource`: `container_cpu_usage_millicores{namespace,pod,container}` and
  `container_memory_working_set_bytes{namespace,pod,container}` gauges, as the agents last
  measured them
- `gc_seconds_total{generation}` counter: the interpreter's cyclic garbage collector's time,
  by generation (0 and 1 young, 2 full), since the process began counting (`gitops.heap`);
  `gc_pause_seconds{generation}` histogram: its pauses, which stall every thread; and
  `gc_collected_objects_total{generation}` counter: the unreachable objects it found
"""

from __future__ import annotations

import itertools
import time
import typing
from collections.abc import Callable, Collection, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gitops.health import Health
from gitops.heap import HEAP, PAUSE_BOUNDS
from gitops.model import PodUsage
from gitops.store import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
SYNC_OUTCOMES = ("applied", "rejected", "unchanged", "failed")
REVISION_STATUSES = ("applied", "rejected")

_SYNC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_PASS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_AGENT_SYNC_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SCHEDULING_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class _StoreCollector(Collector):
    """Cluster figures read from the store at scrape time."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    def collect(self) -> Iterable[Metric]:
        revisions = CounterMetricFamily(
            "gitops_revisions", "Revisions recorded in the store, by status.", labels=["status"]
        )
        counts = self.store.revision_counts()
        for status in sorted({*REVISION_STATUSES, *counts}):
            revisions.add_metric([status], counts.get(status, 0))
        yield revisions

        pods = GaugeMetricFamily("gitops_pods", "Pods by phase.", labels=["phase"])
        phases = self.store.pod_phase_counts()
        for phase in sorted({*PHASES, *phases}):
            pods.add_metric([phase], phases.get(phase, 0))
        yield pods

        now = self.clock()
        age = GaugeMetricFamily(
            "gitops_node_heartbeat_age_seconds",
            "Seconds since the node's agent last reported.",
            labels=["node"],
        )
        ready = GaugeMetricFamily("gitops_node_ready", "1 when the node is Ready, else 0.", labels=["node"])
        for record in self.store.nodes(now):
            age.add_metric([record.node.name], max(0.0, now - record.heartbeat_at))
            ready.add_metric([record.node.name], 1.0 if record.node.ready else 0.0)
        yield age
        yield ready


_CPU = "gitops_container_cpu_usage_millicores"
_MEMORY = "gitops_container_memory_working_set_bytes"
_USAGE_HELP = {
    _CPU: "CPU a container used over its agent's last sampling window, in thousandths of a CPU.",
    _MEMORY: "A container's memory working set (usage minus inactive file pages), as last measured.",
}


_value = typing.cast("Callable[[float], str]", floatToGoString)  # as prometheus_client writes a value


USAGE_PART = 2000  # pods' lines at most in a part of `usage_text`


def usage_text(samples: Collection[PodUsage], per: int = USAGE_PART) -> Iterator[bytes]:
    """Every container's measured CPU and memory in Prometheus' text format, as cAdvisor's
    container metrics give it (for the autoscaler too), and as `generate_latest` writes a
    gauge family: written line by line, in parts of `per` pods' lines, to be sent as they
    are made (`samples` is read once for each family). prometheus_client makes a sample (a
    tuple and a dict of its labels) of each series first: at 150,000 pods, 300,000 of each
    per scrape, and the rendering's peak was 174 MiB and 2.4 s; made whole here, 96 MiB and
    0.5 s; in parts, what a part holds (docs/scale.md)."""
    for family, help_text in _USAGE_HELP.items():
        lines = [f"# HELP {family} {help_text}\n# TYPE {family} gauge\n"]
        for count, sample in enumerate(samples, 1):
            namespace, _, name = sample.pod.partition("/")
            pod = f'",namespace="{_label(namespace)}",pod="{_label(name)}"}} '  # (labels in name order)
            for c in sample.containers:
                value = c.cpu_milli if family == _CPU else float(c.memory_bytes)
                lines.append(f'{family}{{container="{_label(c.container)}{pod}{_value(value)}\n')
            if count % per == 0:
                yield "".join(lines).encode()
                lines.clear()
        if lines:
            yield "".join(lines).encode()


def render_usage(samples: Collection[PodUsage]) -> bytes:
    """`usage_text` whole."""
    return b"".join(usage_text(samples))


def _label(value: str) -> str:
    """A label's value escaped as the text format wants it (as prometheus_client does)."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


class _HealthCollector(Collector):
    """What fails now in the control plane, read at scrape time."""

    def __init__(self, health: Health) -> None:
        self.health = health

    def collect(self) -> Iterable[Metric]:
        failing = GaugeMetricFamily(
            "gitops_problem_seconds",
            "How long a part of the control plane has been failing (absent when it works).",
            labels=["component"],
        )
        now = self.health.clock()
        for problem in self.health.problems():
            failing.add_metric([problem.component], max(0.0, now - problem.since))
        yield failing


class _HeapCollector(Collector):
    """The collector's time by generation (`gitops.heap.HEAP`), read at scrape time."""

    def collect(self) -> Iterable[Metric]:
        seconds = CounterMetricFamily(
            "gitops_gc_seconds",
            "Seconds the interpreter's cyclic garbage collector took, by generation (2: full collections).",
            labels=["generation"],
        )
        pauses = HistogramMetricFamily(
            "gitops_gc_pause_seconds",
            "The collector's pauses (every thread waits for them), by generation.",
            labels=["generation"],
        )
        collected = CounterMetricFamily(
            "gitops_gc_collected_objects",
            "Unreachable objects the collector found, by generation.",
            labels=["generation"],
        )
        for generation, spent in enumerate(HEAP.seconds):
            seconds.add_metric([str(generation)], spent)
            counts = list(itertools.accumulate(HEAP.pauses[generation]))
            pauses.add_metric(
                [str(generation)],
                [*((repr(b), c) for b, c in zip(PAUSE_BOUNDS, counts, strict=False)), ("+Inf", counts[-1])],
                sum_value=spent,
            )
            collected.add_metric([str(generation)], HEAP.collected[generation])
        yield from (seconds, pauses, collected)


class Metrics:
    """The control plane's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.sync_duration = Histogram(
            "gitops_sync_duration_seconds",
            "Time to fetch, validate and apply or reject one revision of a source.",
            ["source"],
            buckets=_SYNC_BUCKETS,
            registry=self.registry,
        )
        self.syncs = Counter(
            "gitops_syncs",
            "Syncs of a source by outcome: applied, rejected, unchanged or failed.",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.scheduling_latency = Histogram(
            "gitops_scheduling_latency_seconds",
            "Time from a pod's creation to its bind to a node.",
            buckets=_SCHEDULING_BUCKETS,
            registry=self.registry,
        )
        self.controller_pass = Histogram(
            "gitops_controller_pass_seconds",
            "Time of one control-loop pass, from reading the state to writing the decision.",
            buckets=_PASS_BUCKETS,
            registry=self.registry,
        )
        self.controller_pass_writes = Gauge(
            "gitops_controller_pass_writes",
            "Write statements (rows) the last control-loop pass sent to the database.",
            registry=self.registry,
        )
        self.leader = Gauge(
            "gitops_leader",
            "1 while this control plane leads (holds the lease: syncs, previews, the controller), else 0.",
            registry=self.registry,
        )
        self.proxy_rules_skipped = Gauge(
            "gitops_proxy_rules_skipped",
            "Service rules a node's proxy could not program and skipped (see the node's events).",
            ["node"],
            registry=self.registry,
        )
        self.agent_sync = Histogram(
            "gitops_agent_sync_seconds",
            "Time of an agent's sync call in the server, from its handler's start to its answer.",
            buckets=_AGENT_SYNC_BUCKETS,
            registry=self.registry,
        )
        self.agent_calls_yielded = Counter(
            "gitops_agent_calls_yielded_seconds",
            "Seconds agents' sync calls waited, in all, for the controller deciding or writing many pods.",
            registry=self.registry,
        )
        # Every container's measured use, apart (`render_resource`, as kubelet serves it at
        # `/metrics/resource` beside its own `/metrics`): at 150,000 pods it is 300,000
        # series, seconds of a scrape and a storm of garbage, which a scrape of the control
        # plane's own figures need not pay for.
        self._measured: Callable[[], Collection[PodUsage]] = tuple
        self._store_collector: _StoreCollector | None = None
        self._health_collector: _HealthCollector | None = None
        HEAP.count_time()
        self.registry.register(_HeapCollector())

    def watch_store(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        """Expose the store's figures (once; later calls are ignored)."""
        if self._store_collector is None:
            self._store_collector = _StoreCollector(store, clock)
            self.registry.register(self._store_collector)

    def watch_usage(self, measured: Callable[[], Collection[PodUsage]]) -> None:
        """Expose what the agents measured, as `measured` gives it, at `/metrics/resource`."""
        self._measured = measured

    def watch_health(self, health: Health) -> None:
        """Expose what fails now (`gitops.health`), once."""
        if self._health_collector is None:
            self._health_collector = _HealthCollector(health)
            self.registry.register(self._health_collector)

    def observe_sync(self, source: str, outcome: str, seconds: float) -> None:
        self.sync_duration.labels(source=source).observe(seconds)
        self.syncs.labels(source=source, outcome=outcome).inc()

    def observe_binds(self, waited: Iterable[float]) -> None:
        for seconds in waited:
            self.scheduling_latency.observe(max(0.0, seconds))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def render_resource(self) -> Iterator[bytes]:
        """Every container's measured CPU and memory (`/metrics/resource`), in parts to send
        as they are made: at 150,000 pods the whole text is 40 MB."""
        return usage_text(self._measured())

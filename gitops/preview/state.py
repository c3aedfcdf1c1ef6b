"""Cluster state a preview runs on: a snapshot file, an API answer, or a nodes file.

A snapshot is `ClusterState` as JSON (`gitops state export`, `GET /api/v1/state`), format
`gitops-state/1`: desired objects, pods, nodes, and what the controller remembers between
passes (rollout, Job, CronJob and autoscaler states, each claim's node, the pods' latest
usage samples), so a preview from it decides as the controller would. It never holds a
Secret value: Secret data, every pod env value and mounted file taken from a Secret (or
equal to a current Secret value) are replaced by `<redacted>`, and log tails are dropped.
A preview does not need them: pods are compared by template hash, and `unredact` puts the
branch's own values back where a redacted one sat, so reasons name what really changed.

A nodes file describes an empty cluster for previews without a running server:

    nodes:
      - name: web            # with count: web-1 .. web-3
        count: 3
        cpu: "4"
        memory: 8Gi
        labels: {zone: a}
        taints: [{key: dedicated, value: db, effect: NoSchedule}]
        maxPods: 110

Bad input is refused with `file:line:col: field: message`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from gitops.codec import decode_as, encode, state_version
from gitops.model import (
    ClusterState,
    Container,
    CronState,
    JobState,
    Manifest,
    MountedFile,
    Node,
    NodeName,
    Pod,
    PodUsage,
    RolloutState,
    ScaleState,
    SourceLocation,
    Taint,
)
from gitops.planner.cron import job_manifest
from gitops.planner.plan import PLANNERS, configs_of
from gitops.planner.podspec import config_values, resolve_template
from gitops.schemas.loader import Document, SourceFile, format_path, load_file
from gitops.schemas.quantity import parse_cpu, parse_memory

FORMAT = "gitops-state/1"
REDACTED = "<redacted>"


class StateError(ValueError):
    """A state file or nodes file that cannot be used; the message says where and why."""


# --- snapshots ------------------------------------------------------------------------


def _secret_values(desired: Sequence[Manifest]) -> set[bytes]:
    return {v for m in desired if m.key.kind == "Secret" for v in config_values(m).values() if v}


def _redact_manifest(m: Manifest) -> Manifest:
    if m.key.kind != "Secret":
        return m
    body = dict(m.body)
    for section in ("data", "stringData"):
        values = body.get(section)
        if isinstance(values, Mapping):
            body[section] = dict.fromkeys(values, REDACTED)
    # The hash stays the real content's: it tells which version runs. A redacted Secret
    # must never be resolved into a pod spec (previews resolve the branch's own objects).
    return dataclasses.replace(m, body=body)


def _redact_pod(pod: Pod, secrets: set[bytes]) -> Pod:
    """Every value the pod took from a Secret (by the spec's own marks: a Secret rotated since
    the pod was made no longer holds its value), and any value equal to a current one."""

    def redact(container: Container) -> Container:
        hidden = set(container.secret_env)
        env = tuple(
            (k, REDACTED if k in hidden or v.encode(errors="surrogateescape") in secrets else v)
            for k, v in container.env
        )
        files = tuple(
            dataclasses.replace(f, content=REDACTED.encode()) if f.secret or f.content in secrets else f
            for f in container.files
        )
        return dataclasses.replace(container, env=env, files=files)

    statuses = tuple(dataclasses.replace(c, last_log="") for c in pod.containers)
    return dataclasses.replace(pod, spec=pod.spec.with_containers(redact), last_log="", containers=statuses)


def redacted(state: ClusterState) -> ClusterState:
    """`state` without any Secret value; its version is unchanged."""
    secrets = _secret_values(state.desired)
    return dataclasses.replace(
        state,
        desired=tuple(_redact_manifest(m) for m in state.desired),
        pods=tuple(_redact_pod(p, secrets) for p in state.pods),
    )


def to_json(state: ClusterState) -> dict[str, Any]:
    """The snapshot document of `state`, always redacted."""
    clean = redacted(state)
    return {
        "format": FORMAT,
        "version": state.version or state_version(state),
        "desired": [encode(m) for m in clean.desired],
        "pods": [encode(p) for p in clean.pods],
        "nodes": [encode(n) for n in clean.nodes],
        "not_ready_since": dict(clean.not_ready_since),
        "rollouts": [encode(r) for r in clean.rollouts.values()],
        "claims": dict(clean.claims),
        "jobs": [encode(j) for j in clean.jobs.values()],
        "crons": [encode(c) for c in clean.crons.values()],
        "scales": [encode(s) for s in clean.scales.values()],
        # A sample with a non-finite reading is no sample to an autoscaler, and is not JSON.
        "usage": [
            encode(u) for u in clean.usage.values() if all(math.isfinite(c.cpu_milli) for c in u.containers)
        ],
    }


def from_json(data: Any, where: str) -> ClusterState:
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        raise StateError(f"{where}: not a gitops state snapshot (format {found!r}, expected {FORMAT!r})")
    try:
        rollouts = [decode_as(RolloutState, r) for r in data.get("rollouts") or []]
        jobs = [decode_as(JobState, j) for j in data.get("jobs") or []]
        crons = [decode_as(CronState, c) for c in data.get("crons") or []]
        scales = [decode_as(ScaleState, s) for s in data.get("scales") or []]
        usage = [decode_as(PodUsage, u) for u in data.get("usage") or []]
        return ClusterState(
            desired=tuple(decode_as(Manifest, m) for m in data.get("desired") or []),
            pods=tuple(decode_as(Pod, p) for p in data.get("pods") or []),
            nodes=tuple(decode_as(Node, n) for n in data.get("nodes") or []),
            not_ready_since={NodeName(k): float(v) for k, v in (data.get("not_ready_since") or {}).items()},
            rollouts={r.deployment: r for r in rollouts},
            version=str(data.get("version") or ""),
            claims={str(k): NodeName(str(v)) for k, v in (data.get("claims") or {}).items()},
            jobs={j.job: j for j in jobs},
            crons={c.cronjob: c for c in crons},
            scales={s.hpa: s for s in scales},
            usage={u.pod: u for u in usage},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateError(f"{where}: malformed state snapshot: {exc}") from exc


def unredact(state: ClusterState, desired: Sequence[Manifest]) -> ClusterState:
    """Put `desired`'s values where a pod's env value or file was redacted.

    A redacted value is taken to equal what the branch asks for, so a Secret value
    change alone shows in the object diff, not as a pod env change. Pods of every workload
    kind are filled, a CronJob's runs' pods from its job template.
    """
    configs = configs_of(desired)
    workloads = [m for m in desired if m.key.kind in PLANNERS]
    for cronjob in (m for m in desired if m.key.kind == "CronJob"):
        runs = state.crons[cronjob.key].runs if cronjob.key in state.crons else ()
        workloads += [job_manifest(cronjob, run) for run in runs]
    templates = {}
    for m in workloads:
        try:
            templates[m.key] = resolve_template(m, configs).spec
        except Exception:  # noqa: S112 - the planner reports it on the workload
            continue
    pods = []
    for pod in state.pods:
        spec = templates.get(pod.owner)
        if spec is None:
            pods.append(pod)
            continue
        wanted = {c.name: c for c in spec.all_containers}

        def fill(container: Container, wanted: dict[str, Container] = wanted) -> Container:
            target = wanted.get(container.name)
            if target is None:
                return container
            wanted_env = dict(target.env)
            wanted_files = {f.path: f for f in target.files}
            env = tuple((k, wanted_env.get(k, v) if v == REDACTED else v) for k, v in container.env)
            files: list[MountedFile] = []
            for f in container.files:
                found = wanted_files.get(f.path)
                files.append(found if f.content == REDACTED.encode() and found is not None else f)
            return dataclasses.replace(container, env=env, files=tuple(files))

        filled = pod.spec.with_containers(fill)
        pods.append(pod if filled == pod.spec else dataclasses.replace(pod, spec=filled))
    return dataclasses.replace(state, pods=tuple(pods))


# --- nodes files ----------------------------------------------------------------------

_NODE_FIELDS = {"name", "count", "cpu", "memory", "labels", "taints", "maxPods", "address"}
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _fail(doc: Document, path: tuple[str | int, ...], message: str, *, key: bool = False) -> StateError:
    field = format_path(path)
    return StateError(f"{doc.location(path, key=key)}: {field + ': ' if field else ''}{message}")


def _string_map(doc: Document, path: tuple[str | int, ...], value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise _fail(doc, path, f"expected a mapping of strings, got {type(value).__name__}")
    return tuple(sorted((str(k), str(v)) for k, v in value.items()))


HOSTNAME = "kubernetes.io/hostname"


def _node_entries(doc: Document, i: int, entry: Any) -> list[Node]:
    path: tuple[str | int, ...] = ("nodes", i)
    if not isinstance(entry, Mapping):
        raise _fail(doc, path, "expected a mapping with name, cpu and memory")
    unknown = sorted(set(entry) - _NODE_FIELDS)
    if unknown:
        raise _fail(
            doc, (*path, unknown[0]), f"unknown field; expected one of {sorted(_NODE_FIELDS)}", key=True
        )
    for required in ("name", "cpu", "memory"):
        if required not in entry:
            raise _fail(doc, path, f"{required} is required")
    name = entry["name"]
    if not isinstance(name, str) or not name:
        raise _fail(doc, (*path, "name"), "expected a non-empty string")
    try:
        cpu = parse_cpu(entry["cpu"])
    except ValueError as exc:
        raise _fail(doc, (*path, "cpu"), str(exc)) from exc
    try:
        memory = parse_memory(entry["memory"])
    except ValueError as exc:
        raise _fail(doc, (*path, "memory"), str(exc)) from exc
    taints = []
    raw_taints = entry.get("taints") or []
    if not isinstance(raw_taints, list):
        raise _fail(doc, (*path, "taints"), "expected a list of {key, value, effect}")
    for j, t in enumerate(raw_taints):
        if not isinstance(t, Mapping) or "key" not in t:
            raise _fail(doc, (*path, "taints", j), "expected {key, value, effect}")
        effect = t.get("effect", "NoSchedule")
        if effect not in _EFFECTS:
            raise _fail(
                doc, (*path, "taints", j, "effect"), f"expected one of {list(_EFFECTS)}, got {effect!r}"
            )
        taints.append(Taint(str(t["key"]), str(t.get("value", "")), effect))
    count = entry.get("count", 0)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0 or count > 100_000:
        raise _fail(doc, (*path, "count"), f"expected an integer from 0 to 100000, got {count!r}")
    max_pods = entry.get("maxPods", 110)
    if not isinstance(max_pods, int) or isinstance(max_pods, bool) or max_pods < 0:
        raise _fail(doc, (*path, "maxPods"), f"expected an integer >= 0, got {max_pods!r}")
    node = Node(
        name=NodeName(name),
        address=str(entry.get("address", "")),
        cpu_milli=cpu,
        memory_bytes=memory,
        labels=_string_map(doc, (*path, "labels"), entry.get("labels")),
        taints=tuple(taints),
        max_pods=max_pods,
    )
    names = [name] if not count else [f"{name}-{k}" for k in range(1, count + 1)]
    # Each node has its hostname label, as an agent gives its node (unless the file sets it).
    return [
        dataclasses.replace(
            node,
            name=NodeName(each),
            labels=tuple(sorted({HOSTNAME: each, **dict(node.labels)}.items())),
        )
        for each in names
    ]


def nodes_file(path: str, content: bytes) -> ClusterState:
    """An empty cluster of the nodes `content` describes."""
    documents, problems = load_file(SourceFile(path, content))
    if problems:
        raise StateError("\n".join(str(p) for p in problems))
    if len(documents) != 1 or not isinstance(documents[0].body, Mapping):
        raise StateError(f"{SourceLocation(path, 1, 1)}: expected one YAML document with a 'nodes' list")
    doc = documents[0]
    entries = doc.body.get("nodes")
    if not isinstance(entries, list):
        raise _fail(doc, ("nodes",), "expected a list of nodes")
    nodes: list[Node] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        for node in _node_entries(doc, i, entry):
            if node.name in seen:
                raise _fail(
                    doc,
                    ("nodes", i, "name"),
                    f"node {node.name} is already defined by nodes[{seen[node.name]}]",
                )
            seen[node.name] = i
            nodes.append(node)
    state = ClusterState(desired=(), pods=(), nodes=tuple(nodes))
    return dataclasses.replace(state, version=state_version(state))


def load_state(where: str, content: bytes) -> ClusterState:
    """A snapshot (JSON) or a nodes file (YAML), told apart by content."""
    text = content.lstrip()
    if text.startswith(b"{"):
        try:
            data = json.loads(content)
        except json.JSONDecodeError as exc:
            raise StateError(f"{where}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc
        return from_json(data, where)
    return nodes_file(where, content)

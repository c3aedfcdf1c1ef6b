"""State snapshots carry no Secret value; nodes files describe an empty cluster or fail clearly."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from gitops.controller import reconcile_once
from gitops.model import Node, NodeName, Revision, Taint
from gitops.preview.state import REDACTED, StateError, from_json, load_state, to_json, unredact
from gitops.schemas.loader import SourceFile
from gitops.schemas.validate import validate_files
from gitops.store import Store
from tests.preview.repos import deployment

SECRET = "s3cr3t-value-never-shown"


def secret_cluster(tmp_path: Path) -> Store:
    encoded = base64.b64encode(SECRET.encode()).decode()
    docs = {
        "s.yaml": f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  password: {encoded}\n",
        "web.yaml": deployment(
            replicas=2,
            env="env:\n  - name: PASSWORD\n    valueFrom: {secretKeyRef: {name: db, key: password}}\n",
        ),
    }
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.1", 4000, 2**32), "t", now=1.0)
    manifests = validate_files([SourceFile(k, v.encode()) for k, v in docs.items()]).manifests
    store.apply_revision(Revision("git:x", "a" * 40), manifests, [], now=1.0)
    reconcile_once(store, now=2.0)
    return store


def test_a_snapshot_holds_no_secret_value_and_round_trips(tmp_path: Path) -> None:
    store = secret_cluster(tmp_path)
    state = store.snapshot(3.0)
    assert any(v == SECRET for p in state.pods for _, v in p.spec.main.env)  # the store has it
    text = json.dumps(to_json(state))
    assert SECRET not in text and base64.b64encode(SECRET.encode()).decode() not in text
    again = from_json(json.loads(text), "snapshot.json")
    assert again.version == state.version
    assert [p.id for p in again.pods] == [p.id for p in state.pods]
    assert {v for p in again.pods for k, v in p.spec.main.env if k == "PASSWORD"} == {REDACTED}
    back = unredact(again, list(state.desired))
    assert [p.spec for p in back.pods] == [p.spec for p in state.pods]


def test_a_nodes_file_expands_counts_and_reads_quantities_labels_and_taints(tmp_path: Path) -> None:
    state = load_state(
        "nodes.yaml",
        b"nodes:\n"
        b"  - {name: web, count: 2, cpu: '1500m', memory: 2Gi, labels: {zone: a}}\n"
        b"  - name: gpu\n    cpu: 8\n    memory: 1G\n    maxPods: 4\n"
        b"    taints: [{key: dedicated, value: gpu, effect: NoSchedule}]\n",
    )
    assert [(n.name, n.cpu_milli, n.memory_bytes, n.max_pods) for n in state.nodes] == [
        ("web-1", 1500, 2 * 2**30, 110),
        ("web-2", 1500, 2 * 2**30, 110),
        ("gpu", 8000, 10**9, 4),
    ]
    # Each node has its hostname label, as an agent's node has.
    assert state.nodes[0].labels == (("kubernetes.io/hostname", "web-1"), ("zone", "a"))
    assert state.nodes[2].labels == (("kubernetes.io/hostname", "gpu"),)
    assert state.nodes[2].taints == (Taint("dedicated", "gpu", "NoSchedule"),)
    assert not state.pods and state.version


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"nodes: 3\n", "nodes.yaml:1:8: nodes: expected a list of nodes"),
        (b"nodes:\n  - {name: a, memory: 1Gi}\n", "nodes.yaml:2:5: nodes[0]: cpu is required"),
        (
            b"nodes:\n  - {name: a, cpu: 1, memory: lots}\n",
            "nodes.yaml:2:31: nodes[0].memory: invalid memory quantity",
        ),
        (
            b"nodes:\n  - {name: a, cpu: 1, memory: 1, colour: red}\n",
            "nodes.yaml:2:34: nodes[0].colour: unknown field",
        ),
        (
            b"nodes:\n  - {name: a, cpu: 1, memory: 1}\n  - {name: a, cpu: 1, memory: 1}\n",
            "nodes.yaml:3:12: nodes[1].name: node a is already defined by nodes[0]",
        ),
        (
            b"nodes:\n  - {name: a, cpu: 1, memory: 1, taints: [{key: k, effect: Never}]}\n",
            "nodes.yaml:2:60: nodes[0].taints[0].effect: expected one of",
        ),
        (b'{"format": "other/2"}', "nodes.yaml: not a gitops state snapshot (format 'other/2'"),
        (b"{not json", "nodes.yaml:1:2: invalid JSON"),
    ],
)
def test_bad_state_files_name_the_file_line_and_field(content: bytes, message: str) -> None:
    with pytest.raises(StateError) as caught:
        load_state("nodes.yaml", content)
    assert str(caught.value).startswith(message), str(caught.value)

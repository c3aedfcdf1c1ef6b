"""`gitops plan --format json` on 48 nodes in four zones: where constrained pods land, and
why the ones that fit nowhere do not."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gitops.cli import main
from tests.preview.repos import Repo, deployment

ZONES = "abcd"
NODES = "nodes:\n" + "".join(
    f"  - {{name: {z}, count: 12, cpu: '4', memory: 8Gi, labels: {{topology.kubernetes.io/zone: {z}}}}}\n"
    for z in ZONES
)

SPREAD = """\
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: DoNotSchedule
    labelSelector: {matchLabels: {app: web}}
"""
ONE_PER_NODE = """\
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - labelSelector: {matchLabels: {app: crowd}}
        topologyKey: kubernetes.io/hostname
"""
BESIDE_CROWD = """\
affinity:
  podAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - labelSelector: {matchLabels: {app: crowd}}
        topologyKey: kubernetes.io/hostname
"""
ZONE_B = """\
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - {key: topology.kubernetes.io/zone, operator: In, values: [b]}
"""


def plan(tmp_path: Path, capsys: pytest.CaptureFixture[str], files: dict[str, str]) -> dict[str, Any]:
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(NODES)
    repo = Repo(tmp_path / "repo")
    repo.commit(files, "apps")
    code = main(["plan", "--repo", str(repo.path), "--state", str(nodes), "--format", "json"])
    out, err = capsys.readouterr()
    assert code == 2, err
    document: dict[str, Any] = json.loads(out)
    return document


def landed(document: dict[str, Any], owner: str) -> list[str]:
    return [
        p["node"] for p in document["pods"] if p["action"] == "create" and p["owner"].endswith(f"/{owner}")
    ]


def zones(nodes: list[str]) -> Counter[str]:
    return Counter(node.split("-")[0] for node in nodes)


def test_a_deployment_spread_by_zone_lands_6_6_6_6(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = plan(tmp_path, capsys, {"web.yaml": deployment("web", replicas=24, extra=SPREAD)})
    assert zones(landed(document, "web")) == {"a": 6, "b": 6, "c": 6, "d": 6}


def test_anti_affine_replicas_land_one_per_node_and_followers_beside_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = plan(
        tmp_path,
        capsys,
        {
            "crowd.yaml": deployment("crowd", replicas=10, extra=ONE_PER_NODE),
            "sidekick.yaml": deployment("sidekick", replicas=10, extra=BESIDE_CROWD),
        },
    )
    crowd = landed(document, "crowd")
    assert len(crowd) == 10 and len(set(crowd)) == 10
    sidekicks = landed(document, "sidekick")
    assert len(sidekicks) == 10 and set(sidekicks) <= set(crowd)
    placements = [p["placement"] for p in document["pods"] if p["action"] == "create"]
    assert all(placement.startswith("score ") for placement in placements)


def test_node_affinity_to_one_zone_keeps_pods_in_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = plan(tmp_path, capsys, {"web.yaml": deployment("web", replicas=20, extra=ZONE_B)})
    assert zones(landed(document, "web")) == {"b": 20}


def test_more_anti_affine_replicas_than_nodes_place_one_per_node_and_name_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = plan(tmp_path, capsys, {"crowd.yaml": deployment("crowd", replicas=60, extra=ONE_PER_NODE)})
    placed = [node for node in landed(document, "crowd") if node]
    assert len(placed) == 48 and len(set(placed)) == 48
    (unschedulable,) = document["unschedulable"]
    assert unschedulable["pods"] == 12
    assert unschedulable["reason"] == (
        "0/48 nodes: 48 would violate pod anti-affinity (app=crowd on kubernetes.io/hostname)"
    )


HIGH = """\
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata:
  name: high
value: 1000
"""


def test_a_preview_names_the_victims_of_preemption_and_where_the_preemptors_land(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every node runs a 3-cpu batch pod of 4; two 2-cpu pods of higher priority come."""
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text(NODES)
    repo = Repo(tmp_path / "repo")
    repo.commit({"batch.yaml": deployment("batch", replicas=48, cpu="3")}, "batch")
    api = deployment("api", replicas=2, cpu="2", extra="priorityClassName: high\n")
    repo.commit({"api.yaml": api, "high.yaml": HIGH}, "api")
    args = ["plan", "--repo", str(repo.path), "--base", "HEAD~1", "--state", str(nodes), "--format", "json"]
    assert main(args) == 2
    document = json.loads(capsys.readouterr().out)
    first = [p for p in document["pods"] if p["pass"] == 0]
    (victim,) = [p for p in first if p["action"] == "stop"]
    assert victim["owner"] == "Deployment default/batch"
    preemptor, follower = (p for p in first if p["action"] == "create")
    node = victim["node"]
    assert victim["reason"] == f"preempted by {preemptor['pod']} on {node} (priority 1000 > 0)"
    assert preemptor["node"] is None and follower["node"] is None  # nothing lands beside a pod stopping
    assert preemptor["placement"] == f"to land on {node} once {victim['pod']} is gone (preempted)"
    assert follower["placement"] == f"to land on {node} once its terminating pods are gone"
    landed = [p for p in document["pods"] if p["action"] == "place"]
    assert {(p["pod"], p["node"], p["pass"]) for p in landed} == {
        (preemptor["pod"], node, 1),
        (follower["pod"], node, 1),
    }
    assert document["counts"]["pods_placed"] == 2 and document["counts"]["pods_stopped"] == 1
    # The text form shows the same.
    assert main(args[:-2]) == 2
    text = capsys.readouterr().out
    assert f"- {victim['pod']} on {node}: preempted by {preemptor['pod']}" in text
    assert f"> {preemptor['pod']} lands on {node}" in text

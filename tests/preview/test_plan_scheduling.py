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

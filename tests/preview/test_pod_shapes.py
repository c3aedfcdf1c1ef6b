"""A preview shows a pod's init containers and sidecars, and why a claim pins its pods to
a node, in text, Markdown and JSON (which stays valid against its schema)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from gitops.cli import main
from tests.preview.repos import Repo, deployment, nodes

SCHEMA = json.loads((Path(__file__).parents[2] / "gitops" / "preview" / "preview.schema.json").read_text())
DB = """\
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: db}
spec:
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      initContainers:
        - {name: migrate, image: db:1}
        - {name: proxy, image: envoy:1, restartPolicy: Always}
      containers:
        - name: db
          image: db:1
          volumeMounts: [{name: data, mountPath: /data}]
      volumes:
        - {name: data, persistentVolumeClaim: {claimName: data}}
"""


@pytest.fixture
def planned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    state = tmp_path / "nodes.yaml"
    state.write_text(nodes(3))
    repo = Repo(tmp_path / "repo")
    base = repo.commit({"apps/web.yaml": deployment()}, "base")
    repo.commit({"apps/db.yaml": DB}, "a database")
    out = {}
    for fmt in ("text", "markdown", "json"):
        main(["plan", "--repo", str(repo.path), "--base", base, "--state", str(state), "--format", fmt])
        out[fmt] = capsys.readouterr().out
    return out


def test_the_json_names_each_container_and_why_a_claim_pins_its_pods(planned: dict[str, str]) -> None:
    document = json.loads(planned["json"])
    jsonschema.validate(document, SCHEMA)
    created = [p for p in document["pods"] if p["action"] == "create"]
    assert len(created) == 2
    assert created[0]["containers"] == [
        {"name": "migrate", "kind": "init"},
        {"name": "proxy", "kind": "sidecar"},
        {"name": "db", "kind": "app"},
    ]
    first, second = created
    node = first["node"]
    assert first["placement"].startswith(
        f"claim default/data is first used here: its volume will be on {node}; score 0.97 against 0.97 on "
    )
    assert second["node"] == node  # the second replica follows the claim, though two nodes are empty
    assert second["placement"] == (
        f"claim default/data's volume is on {node}; the only node that passes every check"
    )


def test_text_and_markdown_show_the_containers_and_the_pinning(planned: dict[str, str]) -> None:
    line = next(line for line in planned["text"].splitlines() if line.strip().startswith("+ default/db-"))
    assert "(init: migrate; sidecar: proxy; containers: db)" in line
    assert "[claim default/data" in line
    assert "(init: migrate; sidecar: proxy; containers: db)" in planned["markdown"]
    assert "claim default/data" in planned["markdown"]

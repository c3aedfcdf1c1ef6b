"""The GitHub Actions example runs: its Preview step, as written, against a real repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.preview.repos import Repo, deployment, git

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "github-actions"


def preview_step() -> dict[str, object]:
    workflow = yaml.safe_load((EXAMPLE / "gitops-preview.yml").read_text())
    steps = workflow["jobs"]["preview"]["steps"]
    (step,) = [s for s in steps if s.get("id") == "plan"]
    return step


def run_step(tmp_path: Path, repo: Repo) -> tuple[str, str]:
    shim = tmp_path / "bin" / "gitops"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m gitops.cli "$@"\n')
    shim.chmod(0o755)
    output = tmp_path / "github_output"
    output.write_text("")
    env = {
        **os.environ,
        "PATH": f"{shim.parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(EXAMPLE.parents[1]),
        "GITHUB_OUTPUT": str(output),
        "BASE": "main",  # the workflow's origin/<base_ref>; this repository has no remote
        "STATE": str(EXAMPLE / "cluster-nodes.yaml"),
        "MANIFESTS": "",
    }
    script = str(preview_step()["run"])
    subprocess.run(["bash", "-e", "-c", script], cwd=repo.path, env=env, check=True)
    return (repo.path / "preview.md").read_text(), output.read_text()


def test_the_preview_step_writes_the_comment_and_reports_changes(tmp_path: Path) -> None:
    assert set(preview_step()["env"]) == {"BASE", "STATE", "MANIFESTS"}  # type: ignore[arg-type]
    repo = Repo(tmp_path / "repo")
    repo.commit({"web.yaml": deployment(replicas=2)}, "base")
    repo.commit({}, "branch point")
    git(repo.path, "checkout", "-q", "-b", "feature")
    repo.commit({"web.yaml": deployment(replicas=4)}, "scale")
    comment, outputs = run_step(tmp_path, repo)
    assert outputs.strip() == "status=2"
    assert comment.startswith("### gitops preview of ")
    assert "scale up: 2 -&gt; 4 replicas" not in comment  # '>' is left alone, only '<' and '&' escaped
    assert "scale up: 2 -> 4 replicas" in comment
    # New pods land on the example's web nodes (the db node is tainted).
    assert len(re.findall(r"\| create \| default/web-\S+ \| web-[123] \|", comment)) == 2


def test_the_preview_step_reports_invalid_manifests_with_status_1(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.commit({"web.yaml": deployment()}, "base")
    git(repo.path, "checkout", "-q", "-b", "feature")
    repo.commit({"web.yaml": deployment(image="")}, "no image")
    comment, outputs = run_step(tmp_path, repo)
    assert outputs.strip() == "status=1"
    assert "The branch is invalid" in comment
    assert "web.yaml:" in comment and "Deployment default/web" in comment

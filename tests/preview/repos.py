"""Small real git repositories of manifests, built commit by commit in a test."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

ENV = {
    "GIT_AUTHOR_NAME": "Pat Preview",
    "GIT_AUTHOR_EMAIL": "pat@example.org",
    "GIT_COMMITTER_NAME": "Pat Preview",
    "GIT_COMMITTER_EMAIL": "pat@example.org",
}


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env={**os.environ, **ENV}
    )
    return done.stdout.strip()


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        git(path, "init", "-q", "-b", "main")

    def commit(self, files: dict[str, str | None], message: str) -> str:
        """Write (or, for None, delete) files and commit; returns the commit id."""
        for name, content in files.items():
            target = self.path / name
            if content is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "--allow-empty", "-m", message)
        return git(self.path, "rev-parse", "HEAD")


def deployment(
    name: str = "web",
    *,
    replicas: int = 3,
    image: str = "web:1",
    cpu: str = "100m",
    memory: str = "64Mi",
    extra: str = "",
    strategy: str = "",
    env: str = "",
) -> str:
    text = f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
{textwrap.indent(strategy, "  ")}  template:
    metadata:
      labels: {{app: {name}}}
    spec:
{textwrap.indent(extra, "      ")}      containers:
        - name: main
          image: {image}
{textwrap.indent(env, "          ")}          resources:
            requests: {{cpu: {cpu}, memory: {memory}}}
"""
    return text


def service(name: str = "web", selector: str = "web") -> str:
    return f"""\
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector: {{app: {selector}}}
  ports:
    - port: 80
      targetPort: 8080
"""


def nodes(count: int = 3, cpu: str = "2", memory: str = "4Gi", extra: str = "") -> str:
    return f"""\
nodes:
  - name: node
    count: {count}
    cpu: "{cpu}"
    memory: {memory}
{extra}"""

"""Manifest repositories hosted by the server itself, so people can `git push` to it.

A hosted repository is a bare git repository under the server's state folder
(`<state>/repos/NAME.git`). The HTTP side (`gitops.api.githttp`) serves it through
`git http-backend`; this module creates it, configures it for pushes over HTTP, and
installs the `pre-receive` hook (`gitops.sync.prereceive`) that validates what is pushed to
the deployed branch before git accepts it: an invalid revision never enters the repository,
so it never reaches the store either.

The repository is also an ordinary source: `HostedRepo.source` is a `GitSource` reading
the deployed branch of the bare repository, synced like any other and triggered at once
when a push to that branch is accepted.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import gitops
from gitops.model import Revision
from gitops.schemas.validate import DEFAULT_POLICY
from gitops.sync.sources import GitSource, SourceMissing

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
HOOK_MARK = "# installed by gitops"


def check_name(name: str) -> str:
    """The repository name without a `.git` suffix; ValueError with the rule when invalid."""
    bare = name.removesuffix(".git")
    if not NAME.match(bare) or ".." in bare:
        raise ValueError(
            f"repository name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter "
            "or digit (at most 100 characters)"
        )
    return bare


class HostedSource(GitSource):
    """The deployed branch of a hosted repository; says plainly when nothing was pushed yet."""

    def __init__(self, repo: HostedRepo, cache_dir: Path) -> None:
        super().__init__(str(repo.path), cache_dir, branch=repo.branch, path=repo.manifest_path)
        self.hosted = repo

    def latest(self) -> Revision:
        if self.hosted.head() is None:
            raise SourceMissing(
                f"hosted repository {self.hosted.name} has no branch {self.branch} yet: "
                f"push one to /git/{self.hosted.name}.git"
            )
        return super().latest()


class HostedRepo:
    """One bare repository served at `/git/NAME.git`, deploying `branch` (at `manifest_path`)."""

    def __init__(self, name: str, state_dir: Path, *, branch: str = "main", manifest_path: str = "") -> None:
        self.name = check_name(name)
        # The server's policy, given to the push hook: a push is judged as a sync would judge it.
        self.policy = DEFAULT_POLICY
        self.branch = branch
        self.manifest_path = manifest_path.strip("/")
        self.root = Path(state_dir).resolve() / "repos"
        self.path = self.root / f"{self.name}.git"
        self.source = HostedSource(self, Path(state_dir).resolve() / "git" / f"hosted_{self.name}")

    @property
    def ref(self) -> str:
        return f"refs/heads/{self.branch}"

    def ensure(self) -> None:
        """Create the bare repository if needed and (re)install its configuration and hook."""
        if not (self.path / "HEAD").exists():
            self.root.mkdir(parents=True, exist_ok=True)
            _git(self.root, "init", "--bare", "--quiet", "-b", self.branch, str(self.path))
        # http-backend refuses receive-pack without this (or an authenticated REMOTE_USER).
        _git(self.path, "config", "http.receivepack", "true")
        _git(self.path, "config", "receive.denyDeleteCurrent", "true")
        hook = self.path / "hooks" / "pre-receive"
        hook.parent.mkdir(exist_ok=True)
        hook.write_text(self.hook_script())
        hook.chmod(0o755)

    def hook_script(self) -> str:
        """The `pre-receive` hook: this interpreter running `gitops.sync.prereceive`."""
        package_parent = str(Path(gitops.__file__).resolve().parent.parent)
        command = shlex.join(
            [
                sys.executable,
                "-m",
                "gitops.sync.prereceive",
                "--branch",
                self.branch,
                "--path",
                self.manifest_path,
                *self.policy.options(),
            ]
        )
        return (
            "#!/bin/sh\n"
            f"{HOOK_MARK}: validates pushes to the deployed branch; rewritten at every start.\n"
            f"PYTHONPATH={shlex.quote(package_parent)}${{PYTHONPATH:+:$PYTHONPATH}}\n"
            "export PYTHONPATH\n"
            f"exec {command}\n"
        )

    def head(self) -> str | None:
        """The commit the deployed branch points at, or None before the first push."""
        result = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{self.ref}^{{commit}}"],
            cwd=self.path,
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout.strip() or None


def _git(cwd: Path, *args: str) -> None:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {cwd} failed: {result.stderr.strip()}")

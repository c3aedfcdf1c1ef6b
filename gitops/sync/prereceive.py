"""The `pre-receive` hook of hosted repositories: refuse a push whose manifests are invalid.

git runs this hook after receiving a push and before moving any branch, with one line
`<old> <new> <ref>` per updated ref on stdin and the pushed objects readable (still in
quarantine). Everything the hook writes to stderr reaches the pusher's terminal prefixed
with `remote: `; a non-zero exit refuses the whole push, so nothing changes in the
repository and nothing reaches the store.

- The deployed branch: the new commit is read exactly as the sync service will read it
  (`commit_files`) and validated whole (`validate_files`). Any error refuses the push and
  prints every error as `file:line:col: Kind ns/name: field: message`. Deleting the
  deployed branch is refused: it would prune everything deployed from it.
- Other branches are accepted (they are previews, not deployed); their errors are shown as
  warnings so the pusher learns early.
- Tags and other refs are accepted as they are.

Run as `python -m gitops.sync.prereceive --branch main [--path DIR] [--allow-host-path
PREFIX ...]` from the hook script that `gitops.sync.hosted` installs; the server's policy
(`--allow-host-path`) must be given to it, so that a push is judged as the sync will judge it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

import git

from gitops.model import Diagnostic
from gitops.schemas.validate import DEFAULT_POLICY, Policy, validate_files
from gitops.sync.sources import commit_files


@dataclass(frozen=True)
class Update:
    old: str
    new: str
    ref: str

    @property
    def deleted(self) -> bool:
        return set(self.new) == {"0"}


@dataclass(frozen=True)
class Verdict:
    """Lines for the pusher, and whether the push may go ahead."""

    accepted: bool
    lines: tuple[str, ...]


def parse_updates(text: str) -> list[Update]:
    updates = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            updates.append(Update(*parts))
    return updates


def _position(d: Diagnostic) -> tuple[str, int, int]:
    loc = d.location
    return (loc.file, loc.line, loc.col) if loc is not None else ("", 0, 0)


def problems_of(
    repo: git.Repo, sha: str, path: str, *, policy: Policy = DEFAULT_POLICY
) -> tuple[list[str], list[str], int]:
    """Errors, warnings and the object count of commit `sha`, as the sync service sees them
    (under the server's `policy`)."""
    files, problems = commit_files(repo.commit(sha), path)
    result = validate_files(files, policy=policy)
    errors = [str(d) for d in sorted([*problems, *result.errors], key=_position)]
    return errors, [str(d) for d in result.warnings], len(result.manifests)


def judge(
    repo: git.Repo,
    updates: Sequence[Update],
    branch: str,
    path: str = "",
    *,
    policy: Policy = DEFAULT_POLICY,
) -> Verdict:
    deployed = f"refs/heads/{branch}"
    lines: list[str] = []
    accepted = True
    for update in updates:
        short = update.new[:12]
        if update.ref == deployed:
            if update.deleted:
                accepted = False
                lines.append(
                    f"gitops: refusing to delete {branch}: it is the deployed branch, and deleting it "
                    "would remove everything deployed from this repository"
                )
                continue
            errors, warnings, count = problems_of(repo, update.new, path, policy=policy)
            lines += warnings
            if errors:
                accepted = False
                lines += errors
                lines.append(f"gitops: refusing {short} on {branch}: {len(errors)} error(s)")
            else:
                lines.append(f"gitops: {short} on {branch} is valid ({count} object(s)); deploying it now")
        elif update.ref.startswith("refs/heads/") and not update.deleted:
            errors, _, _ = problems_of(repo, update.new, path, policy=policy)
            name = update.ref.removeprefix("refs/heads/")
            if errors:
                lines += [f"{e} (warning: {name} is not deployed)" for e in errors]
                lines.append(
                    f"gitops: accepted {short} on {name} with {len(errors)} error(s): "
                    f"only {branch} is deployed, and it would refuse them"
                )
    if not accepted:
        lines.append("gitops: push refused: nothing was changed, and what runs keeps running")
    return Verdict(accepted, tuple(lines))


def main(argv: Sequence[str] | None = None, stdin: TextIO = sys.stdin, stderr: TextIO = sys.stderr) -> int:
    p = argparse.ArgumentParser(prog="gitops-pre-receive")
    p.add_argument("--branch", default="main")
    p.add_argument("--path", default="")
    p.add_argument("--allow-host-path", action="append", default=[], metavar="PREFIX")
    p.add_argument("--allow-privileged", action="store_true")
    args = p.parse_args(argv)
    try:
        repo = git.Repo(os.environ.get("GIT_DIR", "."))
        policy = Policy(host_paths=tuple(args.allow_host_path), privileged=args.allow_privileged)
        verdict = judge(repo, parse_updates(stdin.read()), args.branch, args.path, policy=policy)
    except Exception as exc:  # refuse rather than let an unchecked revision through
        print(f"gitops: cannot validate this push ({type(exc).__name__}: {exc}); refused", file=stderr)
        return 1
    for line in verdict.lines:
        print(line, file=stderr)
    return 0 if verdict.accepted else 1


if __name__ == "__main__":
    sys.exit(main())

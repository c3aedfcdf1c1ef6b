"""Previews of git revisions: read two commits, hand them to the pure preview.

`preview_commits` is what `gitops plan` and the service's branch previews share: it reads
the base and head commits' manifest files (with the same refusals as a sync), validates
the base for the object diff, and calls `gitops.preview.preview`.

`BranchPreviews` keeps a preview for every branch of a git source other than the one it
deploys (or every ref matching a configured refspec such as `refs/pull/*/head`): on each
refresh it fetches those refs into the source's mirror, recomputes the previews of refs
whose head or base moved, and forgets refs that are gone. Previews are stored with the
state version they were computed on; the API marks one stale when the state has moved on.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import git
import structlog

from gitops.health import Health
from gitops.loop import Backoff, Loop
from gitops.model import ClusterState, Revision
from gitops.preview import Preview, RevisionInfo, preview
from gitops.preview.render import to_json, to_markdown
from gitops.schemas.validate import DEFAULT_POLICY, Policy, validate_files
from gitops.store import Store
from gitops.sync.sources import FetchError, GitSource, commit_files, fetch, read_revision, revision_of

log = structlog.get_logger(__name__)


def _info(revision: Revision) -> RevisionInfo:
    return RevisionInfo(revision.id, revision.message, revision.author)


def preview_commits(
    base: git.Commit | None,
    head: git.Commit,
    path: str,
    state: ClusterState,
    *,
    state_source: str,
    settle_base: bool,
    now: float,
    secret_key: bytes,
    cluster_key: bool = False,
    not_ready_toleration: float = 60.0,
    policy: Policy = DEFAULT_POLICY,
) -> Preview:
    """Preview `head` against `base`, both validated under the server's `policy`."""
    head_files, problems = commit_files(head, path)
    base_manifests = []
    base_info = None
    notes = []
    if base is not None:
        files, base_problems = commit_files(base, path)
        checked = validate_files(files, policy=policy)
        broken = {e.object for e in checked.errors}
        base_manifests = [m for m in checked.manifests if m.key not in broken]
        base_info = _info(revision_of(base, ""))
        errors = len(base_problems) + len(checked.errors)
        if errors:
            notes.append(
                f"the base revision {base.hexsha[:12]} itself has {errors} "
                f"error{'s' if errors != 1 else ''}; objects it could not read count as created"
            )
    result = preview(
        head_files,
        base_manifests,
        state,
        head=_info(revision_of(head, "")),
        base_info=base_info,
        state_source=state_source,
        now=now,
        settle_base=settle_base,
        not_ready_toleration=not_ready_toleration,
        problems=[str(p) for p in problems],
        secret_key=secret_key,
        cluster_key=cluster_key,
        policy=policy,
    )
    return dataclasses.replace(result, notes=(*notes, *result.notes)) if notes else result


def preview_revisions(
    repo_dir: Path,
    base: str | None,
    head: str,
    path: str,
    state: ClusterState,
    *,
    state_source: str,
    settle_base: bool,
    now: float,
    secret_key: bytes,
    policy: Policy = DEFAULT_POLICY,
) -> Preview:
    """`gitops plan`: two revisions of a local repository (names git understands).
    `secret_key` is a one-time key: the cluster's own never leaves its server."""
    read_revision(repo_dir, head, path)  # clear errors for a bad repository or revision
    repo = git.Repo(repo_dir)
    base_commit = None
    if base is not None:
        read_revision(repo_dir, base, path)
        base_commit = repo.commit(base)
    return preview_commits(
        base_commit,
        repo.commit(head),
        path,
        state,
        state_source=state_source,
        settle_base=settle_base,
        now=now,
        secret_key=secret_key,
        policy=policy,
    )


class BranchPreviews:
    """Previews of a git source's other branches (or of a refspec), kept in the store."""

    def __init__(
        self,
        store: Store,
        source: GitSource,
        cache_dir: Path,
        *,
        refspec: str = "refs/heads/*",
        interval: float = 30.0,
        clock: Callable[[], float] = time.time,
        not_ready_toleration: float = 60.0,
        health: Health | None = None,
        policy: Policy = DEFAULT_POLICY,
        fence: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        if refspec.count("*") != 1 or not refspec.startswith("refs/"):
            raise ValueError(
                f"preview refspec {refspec!r}: expected refs/... with one '*', e.g. refs/pull/*/head"
            )
        self.store = store
        # A mirror of its own: fetching beside the sync service's fetches would race on refs.
        self.source = GitSource(source.url, cache_dir, branch=source.branch, path=source.path)
        self.name = source.name
        self.refspec = refspec
        self.clock = clock
        self.not_ready_toleration = not_ready_toleration
        self.policy = policy  # the server's: a preview judges a branch as its sync would
        self.loop = Loop(
            "previews",
            self.refresh,
            interval=interval,
            backoff=Backoff(first=min(1.0, interval), cap=min(30.0, max(1.0, interval))),
            source=self.name,
            health=health,
            component=f"previews {self.name}",
            background=True,
            around=fence,
        )
        self._lock = threading.Lock()

    @property
    def _local_prefix(self) -> str:
        return "refs/previews/" + self.refspec.removeprefix("refs/")

    def _fetch(self, repo: git.Repo) -> dict[str, str]:
        """Fetch the previewed refs; their names (as the remote calls them) and commits."""
        fetch(repo, self.source.url, f"+{self.refspec}:{self._local_prefix}")
        before, _, after = self.refspec.partition("*")
        local_before = "refs/previews/" + before.removeprefix("refs/")
        heads = {}
        for ref in repo.references:
            name = ref.path
            if not name.startswith(local_before) or not name.endswith(after):
                continue
            remote = "refs/" + name.removeprefix("refs/previews/")
            if remote == f"refs/heads/{self.source.branch}":
                continue
            heads[remote] = ref.commit.hexsha
        return heads

    def refresh(self) -> int:
        """Recompute previews whose head or base moved; returns how many were computed."""
        with self._lock:
            repo = self.source.mirror()
            heads = self._fetch(repo)
            if not heads:
                self.store.forget_previews(self.name, keep=set())
                return 0
            try:
                base_sha = self.source.latest().id
            except (git.GitCommandError, FetchError):
                # Branches to preview, but not yet the deployed one (a new hosted repository).
                log.info("preview.waiting", source=self.name, reason=f"no branch {self.source.branch} yet")
                return 0
            state = self.store.snapshot(self.clock(), every_usage=True)  # the branches' autoscalers too
            known = {p.ref: p for p in self.store.previews(self.name)}
            computed = 0
            for ref, sha in sorted(heads.items()):
                old = known.get(ref)
                if old is not None and old.head == sha and old.base == base_sha:
                    continue
                started = time.monotonic()
                result = preview_commits(
                    repo.commit(base_sha),
                    repo.commit(sha),
                    self.source.path,
                    state,
                    state_source="this server",
                    settle_base=False,
                    now=self.clock(),
                    not_ready_toleration=self.not_ready_toleration,
                    secret_key=self.store.keys.digest_key,
                    cluster_key=True,
                    policy=self.policy,
                )
                self.store.save_preview(
                    source=self.name,
                    ref=ref,
                    base=base_sha,
                    head=sha,
                    state_version=state.version,
                    computed_at=self.clock(),
                    report=to_json(result),
                    markdown=to_markdown(result),
                )
                computed += 1
                log.info(
                    "preview.computed",
                    source=self.name,
                    ref=ref,
                    head=sha[:12],
                    status=to_json(result)["status"],
                    seconds=round(time.monotonic() - started, 3),
                )
            self.store.forget_previews(self.name, keep=set(heads))
            return computed

    @property
    def interval(self) -> float:
        return self.loop.interval

    def trigger(self) -> None:
        self.loop.trigger()

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()

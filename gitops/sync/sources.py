"""Where manifests come from: a git repository or a local folder.

A source answers two questions: what is the newest revision (`latest`), and which manifest
files does a revision hold (`files`). Only `*.yaml` / `*.yml` files are read. Hostile
trees are refused file by file with a diagnostic rather than followed: symbolic links that
leave the repository, and files larger than the loader's limit (checked before reading).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import git

from gitops.model import Diagnostic, Revision, SourceLocation
from gitops.redact import redact_url
from gitops.schemas.loader import MAX_FILE_BYTES, SourceFile

MANIFEST_SUFFIXES = (".yaml", ".yml")

Files = tuple[list[SourceFile], list[Diagnostic]]


class SourceMissing(LookupError):
    """The source is not there (yet): a folder not created, a hosted repository not pushed."""


class Source(Protocol):
    name: str

    def latest(self) -> Revision: ...

    def files(self, revision: Revision) -> Files: ...


def _is_manifest(name: str) -> bool:
    return name.lower().endswith(MANIFEST_SUFFIXES)


def _too_big(path: str, size: int) -> Diagnostic:
    return Diagnostic(
        "error",
        f"file is {size} bytes; manifests are limited to {MAX_FILE_BYTES} bytes",
        SourceLocation(path, 1, 1),
    )


def _escapes(path: str, target: str) -> Diagnostic:
    return Diagnostic(
        "error",
        f"symbolic link points outside the repository ({target}); refused",
        SourceLocation(path, 1, 1),
    )


def read_folder(root: Path) -> Files:
    """Read every manifest under `root`, refusing links that leave it."""
    root = root.resolve()
    files: list[SourceFile] = []
    problems: list[Diagnostic] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        for name in list(dirnames):
            entry = here / name
            if entry.is_symlink():
                rel = entry.relative_to(root).as_posix()
                target = entry.resolve()
                if not target.is_relative_to(root):
                    problems.append(_escapes(rel, os.readlink(entry)))
        for name in sorted(filenames):
            if not _is_manifest(name) or name.startswith("."):
                continue
            entry = here / name
            rel = entry.relative_to(root).as_posix()
            real = entry.resolve()
            if entry.is_symlink() and not real.is_relative_to(root):
                problems.append(_escapes(rel, os.readlink(entry)))
                continue
            if not real.is_file():
                continue
            size = real.stat().st_size
            if size > MAX_FILE_BYTES:
                problems.append(_too_big(rel, size))
                continue
            files.append(SourceFile(rel, real.read_bytes()))
    return files, problems


def folder_digest(files: Sequence[SourceFile], problems: Sequence[Diagnostic], key: bytes = b"") -> str:
    """A folder's revision id: a hash of its manifest files, keyed (HMAC) when `key` is given,
    since the files hold Secret values and the id is published."""
    h = hmac.new(key, digestmod=hashlib.sha256) if key else hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        h.update(f.path.encode() + b"\0" + hashlib.sha256(f.content).digest())
    for p in problems:
        h.update(str(p).encode())
    return h.hexdigest()


class FolderSource:
    """A local folder; its revision is the hash of the manifest files it holds, keyed with
    `digest_key` (the control plane gives its cluster key)."""

    def __init__(self, path: Path, *, digest_key: bytes = b"") -> None:
        self.path = Path(path)
        self.name = f"dir:{self.path.resolve()}"
        self.digest_key = digest_key
        self._cache: tuple[str, Files] | None = None

    def latest(self) -> Revision:
        if not self.path.is_dir():
            raise SourceMissing(f"manifest folder {self.path} does not exist")
        files, problems = read_folder(self.path)
        digest = folder_digest(files, problems, self.digest_key)
        self._cache = (digest, (files, problems))
        return Revision(source=self.name, id=digest[:16], message=f"folder {self.path}")

    def files(self, revision: Revision) -> Files:
        if self._cache is not None and self._cache[0].startswith(revision.id):
            return self._cache[1]
        files, problems = read_folder(self.path)
        return files, problems


class GitSource:
    """A branch of a git repository (any URL git can fetch), read without a checkout.

    Credentials in the URL (`https://user:token@host/...`) are used to fetch and never shown:
    the source's `name`, which revisions, the page, the API and logs carry, has them replaced
    by `***`, and git's own error messages are redacted before they are raised."""

    def __init__(self, url: str, cache_dir: Path, *, branch: str = "main", path: str = "") -> None:
        self.url = url
        self.branch = branch
        self.path = path.strip("/")
        self.cache_dir = Path(cache_dir)
        self.name = f"git:{redact_url(url)}#{branch}" + (f":{self.path}" if self.path else "")
        self._repo: git.Repo | None = None

    def mirror(self) -> git.Repo:
        if self._repo is None:
            if (self.cache_dir / "HEAD").exists():
                self._repo = git.Repo(self.cache_dir)
            else:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                self._repo = git.Repo.init(self.cache_dir, bare=True)
        return self._repo

    def latest(self) -> Revision:
        repo = self.mirror()
        fetch(repo, self.url, f"+refs/heads/{self.branch}:refs/heads/{self.branch}")
        return revision_of(repo.commit(f"refs/heads/{self.branch}"), self.name)

    def files(self, revision: Revision) -> Files:
        return commit_files(self.mirror().commit(revision.id), self.path)


class FetchError(RuntimeError):
    """A git fetch failed; the message is git's, with URL credentials redacted."""


# Git asks this helper for the credentials; it answers from the environment of the one
# fetch, so the password is never on a command line (`ps` shows those to every user).
_CREDENTIALS = '!f() { echo "username=$GITOPS_GIT_USERNAME"; echo "password=$GITOPS_GIT_PASSWORD"; }; f'


def fetch(repo: git.Repo, url: str, refspec: str) -> None:
    """`git fetch url refspec --prune --no-tags` into `repo`. Credentials written in the URL
    go to git through the environment, not its command line, and never into messages."""
    parts = urlsplit(url)
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    options: list[str] = []
    if parts.scheme in ("http", "https") and (parts.username or parts.password):
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        env["GITOPS_GIT_USERNAME"] = unquote(parts.username or "")
        env["GITOPS_GIT_PASSWORD"] = unquote(parts.password or "")
        options = ["-c", "credential.helper=", "-c", f"credential.helper={_CREDENTIALS}"]
    command = ["git", *options, "fetch", url, refspec, "--prune", "--no-tags"]
    try:
        repo.git.execute(command, env=env)
    except git.GitCommandError as exc:
        detail = str(exc.stderr or "").strip().removeprefix("stderr: ").strip("'\n ") or f"exit {exc.status}"
        raise FetchError(redact_url(f"git fetch {url} failed: {detail}")) from None


def mirror_folder(root: Path, url: str) -> Path:
    """Where the mirror of `url` is kept: named by a hash, so no credential is in a path."""
    return root / hashlib.sha256(url.encode()).hexdigest()[:24]


def commit_files(commit: git.Commit, path: str = "") -> Files:
    """The manifest files of `commit` under `path`, refusing links that leave the tree."""
    path = path.strip("/")
    files: list[SourceFile] = []
    problems: list[Diagnostic] = []
    try:
        tree = commit.tree / path if path else commit.tree
    except KeyError:
        problems.append(
            Diagnostic(
                "error",
                f"path {path!r} does not exist in {commit.hexsha[:12]}",
                SourceLocation(path),
            )
        )
        return files, problems
    prefix = f"{path}/" if path else ""
    for item in tree.traverse():
        if not isinstance(item, git.Blob) or not _is_manifest(item.name):
            continue
        rel = str(item.path)[len(prefix) :]
        blob = item
        if item.mode == 0o120000:
            target = item.data_stream.read().decode(errors="replace")
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(item.path), target))
            if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                problems.append(_escapes(rel, target))
                continue
            try:
                linked = commit.tree / resolved
            except KeyError:
                problems.append(
                    Diagnostic("error", f"symbolic link target {target} does not exist", SourceLocation(rel))
                )
                continue
            if not isinstance(linked, git.Blob) or linked.mode == 0o120000:
                problems.append(
                    Diagnostic("error", f"symbolic link target {target} is not a file", SourceLocation(rel))
                )
                continue
            blob = linked
        if blob.size > MAX_FILE_BYTES:
            problems.append(_too_big(rel, blob.size))
            continue
        files.append(SourceFile(rel, blob.data_stream.read()))
    return sorted(files, key=lambda f: f.path), problems


def revision_of(commit: git.Commit, source: str) -> Revision:
    return Revision(
        source=source,
        id=commit.hexsha,
        message=str(commit.message).strip(),
        author=f"{commit.author.name} <{commit.author.email}>",
        committed_at=float(commit.committed_date),
    )


def read_revision(repo_dir: Path, rev: str, path: str = "") -> tuple[Revision, Files]:
    """A revision (any name git understands: branch, tag, sha, HEAD~1) of a local repository."""
    try:
        repo = git.Repo(repo_dir)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise ValueError(f"{repo_dir}: not a git repository") from exc
    try:
        commit = repo.commit(rev)
    except (git.BadName, ValueError) as exc:
        raise ValueError(f"{repo_dir}: no revision {rev!r} (try a branch, tag or commit)") from exc
    return revision_of(commit, f"git:{repo_dir}"), commit_files(commit, path)

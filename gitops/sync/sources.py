"""Where manifests come from: a git repository or a local folder.

A source answers two questions: what is the newest revision (`latest`), and which manifest
files does a revision hold (`files`). Only `*.yaml` / `*.yml` files are read, less those a
`.gitopsignore` at the source's root excludes (`gitops.sync.ignore`). A folder holding a
`kustomization.yaml` is rendered by kustomize instead, and its folder tree is not read as
plain manifests (`gitops.sync.kustomize`); a folder on disk and a commit are read the same
way, from a listing of their files (`_Entry`). Hostile trees are refused file by file with a
diagnostic rather than followed: symbolic links that leave the repository, and files larger
than the loader's limit (checked before reading).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from gitops.model import Diagnostic, Revision, SourceLocation
from gitops.redact import redact_url
from gitops.schemas.loader import MAX_FILE_BYTES, SourceFile
from gitops.sync import kustomize
from gitops.sync.ignore import IGNORE_FILE, NO_RULES, IgnoreRules

if TYPE_CHECKING:
    import git

# GitPython (80 ms to import) is imported by the functions that read git, so that reading a
# folder (`gitops validate`) does not pay for it.

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
    return Diagnostic("error", _leaves(target), SourceLocation(path, 1, 1))


@dataclass(frozen=True)
class _Entry:
    """A regular file of a source (a symbolic link to one stands for the file), read on demand."""

    path: str
    size: int
    read: Callable[[], bytes]
    manifest: bool
    """named like a manifest, and not hidden from the reader that listed it"""
    refused: str = ""
    """why a symbolic link is not followed (it leaves the source, or leads to no file): such
    an entry is never read, and is reported wherever it would have been"""


def _link(path: str, manifest: bool, refused: str) -> _Entry:
    return _Entry(path, 0, _never_read, manifest, refused)


def _never_read() -> bytes:
    raise AssertionError("a refused link is never read")


def _leaves(target: str) -> str:
    return f"symbolic link points outside the repository ({target}); refused"


def _assemble(entries: Sequence[_Entry], problems: list[Diagnostic]) -> Files:
    """The manifest files of a listing: plain ones, and what its kustomizations render."""
    by_path = {e.path: e for e in entries}
    rules = _ignore_rules(by_path.get(IGNORE_FILE), problems)
    roots = kustomize.roots(p for p, e in by_path.items() if not e.refused and not rules.ignores(p))
    files: list[SourceFile] = []
    for entry in sorted(entries, key=lambda e: e.path):
        kustomized = any(kustomize.covers(root, entry.path) for root in roots)
        if rules.ignores(entry.path) or not (entry.manifest or kustomized):
            continue
        if entry.refused:
            problems.append(Diagnostic("error", entry.refused, SourceLocation(entry.path)))
            continue
        if not entry.manifest:
            continue
        if entry.size > MAX_FILE_BYTES:
            problems.append(_too_big(entry.path, entry.size))
            continue
        if not kustomized:
            files.append(SourceFile(entry.path, entry.read()))
    if roots:
        sizes = {p: e.size for p, e in by_path.items() if not e.refused}
        rendered, trouble = kustomize.render(roots, sizes, lambda path: by_path[path].read())
        files += rendered
        problems += trouble
    return sorted(files, key=lambda f: f.path), problems


def _ignore_rules(entry: _Entry | None, problems: list[Diagnostic]) -> IgnoreRules:
    if entry is None:
        return NO_RULES
    if entry.refused:
        problems.append(Diagnostic("error", entry.refused, SourceLocation(entry.path)))
        return NO_RULES
    if entry.size > MAX_FILE_BYTES:
        problems.append(_too_big(entry.path, entry.size))
        return NO_RULES
    return IgnoreRules.parse(entry.read())


def read_folder(root: Path) -> Files:
    """Read every manifest under `root`, refusing links that leave it."""
    root = root.resolve()
    entries: list[_Entry] = []
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
            entry = here / name
            rel = entry.relative_to(root).as_posix()
            manifest = _is_manifest(name) and not name.startswith(".")
            real = entry.resolve()
            if entry.is_symlink() and not real.is_relative_to(root):
                entries.append(_link(rel, manifest, _leaves(os.readlink(entry))))
                continue
            if not real.is_file():
                continue
            entries.append(_Entry(rel, real.stat().st_size, real.read_bytes, manifest))
    return _assemble(entries, problems)


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
        import git  # noqa: PLC0415 - see the imports

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
    import git  # noqa: PLC0415 - see the imports

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
    import git  # noqa: PLC0415 - see the imports

    path = path.strip("/")
    entries: list[_Entry] = []
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
        return [], problems
    prefix = f"{path}/" if path else ""
    for item in tree.traverse():
        if not isinstance(item, git.Blob):
            continue
        rel = str(item.path)[len(prefix) :]
        manifest = _is_manifest(item.name)
        blob = item
        if item.mode == 0o120000:
            target = item.data_stream.read().decode(errors="replace")
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(item.path), target))
            if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                entries.append(_link(rel, manifest, _leaves(target)))
                continue
            try:
                linked = commit.tree / resolved
            except KeyError:
                entries.append(_link(rel, manifest, f"symbolic link target {target} does not exist"))
                continue
            if not isinstance(linked, git.Blob) or linked.mode == 0o120000:
                entries.append(_link(rel, manifest, f"symbolic link target {target} is not a file"))
                continue
            blob = linked
        entries.append(_Entry(rel, blob.size, functools.partial(_blob_content, blob), manifest))
    return _assemble(entries, problems)


def _blob_content(blob: git.Blob) -> bytes:
    content: bytes = blob.data_stream.read()
    return content


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
    import git  # noqa: PLC0415 - see the imports

    try:
        repo = git.Repo(repo_dir)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise ValueError(f"{repo_dir}: not a git repository") from exc
    try:
        commit = repo.commit(rev)
    except (git.BadName, ValueError) as exc:
        raise ValueError(f"{repo_dir}: no revision {rev!r} (try a branch, tag or commit)") from exc
    return revision_of(commit, f"git:{repo_dir}"), commit_files(commit, path)

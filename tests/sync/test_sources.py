"""Sources read manifests from real git repositories and folders, refusing hostile trees."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gitops.schemas.loader import MAX_FILE_BYTES
from gitops.sync.sources import FolderSource, GitSource, read_folder
from tests.conftest import require

DOC = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n"


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Ann Author",
        "GIT_AUTHOR_EMAIL": "ann@example.org",
        "GIT_COMMITTER_NAME": "Ann Author",
        "GIT_COMMITTER_EMAIL": "ann@example.org",
    }
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, Path]:
    require(subprocess.run(["git", "--version"], capture_output=True, check=False).returncode == 0, "git")
    remote = tmp_path / "remote.git"
    work = tmp_path / "work"
    git(tmp_path, "init", "--bare", "-b", "main", str(remote))
    git(tmp_path, "init", "-b", "main", str(work))
    return remote, work


def commit_all(work: Path, remote: Path, message: str, branch: str = "main") -> str:
    git(work, "add", "-A")
    git(work, "commit", "-m", message)
    git(work, "push", str(remote), f"HEAD:{branch}")
    return git(work, "rev-parse", "HEAD").strip()


def test_git_source_reads_the_branch_head_with_its_commit_details(
    repo: tuple[Path, Path], tmp_path: Path
) -> None:
    remote, work = repo
    (work / "apps").mkdir()
    (work / "apps" / "ns.yaml").write_text(DOC)
    (work / "README.md").write_text("not a manifest")
    sha = commit_all(work, remote, "add demo namespace\n\nbody")
    source = GitSource(str(remote), tmp_path / "cache", branch="main")
    revision = source.latest()
    assert (revision.id, revision.message, revision.author) == (
        sha,
        "add demo namespace\n\nbody",
        "Ann Author <ann@example.org>",
    )
    files, problems = source.files(revision)
    assert [(f.path, f.content.decode()) for f in files] == [("apps/ns.yaml", DOC)]
    assert problems == []


def test_git_source_follows_new_commits_and_reads_only_its_path(
    repo: tuple[Path, Path], tmp_path: Path
) -> None:
    remote, work = repo
    (work / "prod").mkdir()
    (work / "staging").mkdir()
    (work / "prod" / "a.yml").write_text(DOC)
    (work / "staging" / "b.yaml").write_text(DOC)
    commit_all(work, remote, "one")
    source = GitSource(str(remote), tmp_path / "cache", branch="main", path="prod")
    first = source.latest()
    assert [f.path for f in source.files(first)[0]] == ["a.yml"]
    (work / "prod" / "c.yaml").write_text(DOC)
    second_sha = commit_all(work, remote, "two")
    second = source.latest()
    assert second.id == second_sha != first.id
    assert [f.path for f in source.files(second)[0]] == ["a.yml", "c.yaml"]


def test_git_symlinks_leaving_the_repository_are_refused(repo: tuple[Path, Path], tmp_path: Path) -> None:
    remote, work = repo
    (work / "ok.yaml").write_text(DOC)
    os.symlink("../../../etc/passwd.yaml", work / "evil.yaml")
    os.symlink("/etc/hostname.yaml", work / "abs.yaml")
    os.symlink("ok.yaml", work / "inside.yaml")
    commit_all(work, remote, "links")
    source = GitSource(str(remote), tmp_path / "cache", branch="main")
    files, problems = source.files(source.latest())
    assert sorted(f.path for f in files) == ["inside.yaml", "ok.yaml"]
    assert sorted(str(p) for p in problems) == [
        "abs.yaml:1:1: symbolic link points outside the repository (/etc/hostname.yaml); refused",
        "evil.yaml:1:1: symbolic link points outside the repository (../../../etc/passwd.yaml); refused",
    ]


def test_a_missing_branch_is_a_clear_error(repo: tuple[Path, Path], tmp_path: Path) -> None:
    remote, work = repo
    (work / "ok.yaml").write_text(DOC)
    commit_all(work, remote, "one")
    source = GitSource(str(remote), tmp_path / "cache", branch="nope")
    with pytest.raises(Exception, match="nope"):
        source.latest()


def test_folder_source_refuses_links_out_and_huge_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "apps").mkdir(parents=True)
    (root / "apps" / "ns.yaml").write_text(DOC)
    (tmp_path / "outside.yaml").write_text(DOC)
    os.symlink(tmp_path / "outside.yaml", root / "apps" / "out.yaml")
    os.symlink(tmp_path, root / "linked-dir")
    with open(root / "big.yaml", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    files, problems = read_folder(root)
    assert [f.path for f in files] == ["apps/ns.yaml"]
    messages = sorted(str(p) for p in problems)
    assert messages == [
        "apps/out.yaml:1:1: symbolic link points outside the repository "
        f"({tmp_path / 'outside.yaml'}); refused",
        f"big.yaml:1:1: file is {MAX_FILE_BYTES + 1} bytes; manifests are limited to {MAX_FILE_BYTES} bytes",
        f"linked-dir:1:1: symbolic link points outside the repository ({tmp_path}); refused",
    ]


def test_folder_revision_changes_exactly_when_a_manifest_changes(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(DOC)
    source = FolderSource(tmp_path)
    first = source.latest()
    (tmp_path / "notes.txt").write_text("ignored")
    assert source.latest().id == first.id
    (tmp_path / "a.yaml").write_text(DOC.replace("demo", "demo2"))
    assert source.latest().id != first.id


def test_a_folder_revision_id_is_keyed_when_the_server_gives_a_key(tmp_path: Path) -> None:
    """The id is published and the files hold Secret values: a plain hash would let anyone
    who knows the other files test guesses of a value."""
    (tmp_path / "s.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {pw: guessme}\n"
    )
    plain = FolderSource(tmp_path).latest().id
    one = FolderSource(tmp_path, digest_key=b"one").latest().id
    two = FolderSource(tmp_path, digest_key=b"two").latest().id
    assert len({plain, one, two}) == 3
    assert FolderSource(tmp_path, digest_key=b"one").latest().id == one

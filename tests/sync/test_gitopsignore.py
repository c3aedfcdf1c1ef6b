"""A `.gitopsignore` at a source's root keeps files from being read as manifests, from
folders and commits alike."""

from __future__ import annotations

from pathlib import Path

import git
import pytest

from gitops.sync import kustomize
from gitops.sync.ignore import IgnoreRules
from gitops.sync.sources import FolderSource, commit_files, read_folder
from tests.conftest import require
from tests.preview.repos import Repo


def configmap(name: str) -> str:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n"


LAYOUT = {
    ".gitopsignore": (
        "# drafts are not deployed\n"
        "drafts/\n"
        "!drafts/keep.yaml\n"
        "*.draft.yaml\n"
        "!keep.draft.yaml\n"
        "/top-only.yaml\n"
    ),
    "ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n",
    "drafts/broken.yaml": "kind: [not yaml\n",
    "drafts/keep.yaml": configmap("in-ignored-folder"),
    "a.draft.yaml": configmap("draft"),
    "keep.draft.yaml": configmap("kept"),
    "top-only.yaml": configmap("top"),
    "sub/top-only.yaml": configmap("sub"),
}
READ = ["keep.draft.yaml", "ns.yaml", "sub/top-only.yaml"]


def write(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    return root


def commit(repo_dir: Path, files: dict[str, str]) -> git.Commit:
    sha = Repo(repo_dir).commit(files, "manifests")
    return git.Repo(repo_dir).commit(sha)


def test_ignored_files_are_not_read_from_a_folder(tmp_path: Path) -> None:
    files, problems = read_folder(write(tmp_path, LAYOUT))
    assert problems == []
    assert [f.path for f in files] == READ


def test_ignored_files_are_not_read_from_a_commit(tmp_path: Path) -> None:
    files, problems = commit_files(commit(tmp_path, LAYOUT))
    assert problems == []
    assert [f.path for f in files] == READ


def test_a_git_source_path_has_its_own_gitopsignore(tmp_path: Path) -> None:
    """The file at the source's root counts, not one elsewhere in the repository."""
    layout = {
        ".gitopsignore": "*.yaml\n",
        "prod/.gitopsignore": "old.yaml\n",
        "prod/new.yaml": configmap("new"),
        "prod/old.yaml": configmap("old"),
    }
    files, problems = commit_files(commit(tmp_path, layout), "prod")
    assert problems == []
    assert [f.path for f in files] == ["new.yaml"]


def test_a_folder_revision_follows_what_the_gitopsignore_leaves(tmp_path: Path) -> None:
    write(tmp_path, {"a.yaml": configmap("a"), "b.yaml": configmap("b")})
    source = FolderSource(tmp_path)
    both = source.latest()
    (tmp_path / ".gitopsignore").write_text("b.yaml\n")
    one = source.latest()
    assert one.id != both.id
    assert [f.path for f in source.files(one)[0]] == ["a.yaml"]


def test_an_ignored_kustomization_is_neither_rendered_nor_checked(tmp_path: Path) -> None:
    layout = {
        ".gitopsignore": "experimental/\n",
        "experimental/kustomization.yaml": "resources: [https://example.org/x.yaml]\n",
        "experimental/x.yaml": configmap("x"),
        "app.yaml": configmap("app"),
    }
    for files, problems in (
        read_folder(write(tmp_path / "dir", layout)),
        commit_files(commit(tmp_path / "repo", layout)),
    ):
        assert problems == []
        assert [f.path for f in files] == ["app.yaml"]


BASE = {
    "base/cm.yaml": configmap("settings"),
    "base/kustomization.yaml": "resources: [cm.yaml]\n",
    "prod/kustomization.yaml": "resources: [../base]\nnamePrefix: prod-\n",
}


@pytest.mark.parametrize("ignore", ["", "base/\n"])
def test_an_ignored_base_still_serves_the_overlay_using_it(tmp_path: Path, ignore: str) -> None:
    """Ignoring decides what is deployed: kustomize still reads the base for the overlay."""
    require(kustomize.find_kustomize() is not None, "kustomize (scripts/setup installs it)")
    layout = {**BASE, ".gitopsignore": ignore}
    deployed = ["settings", "prod-settings"] if not ignore else ["prod-settings"]
    for files, problems in (
        read_folder(write(tmp_path / "dir", layout)),
        commit_files(commit(tmp_path / "repo", layout)),
    ):
        assert problems == []
        names = [f.content.decode().rsplit("name: ", 1)[1].strip() for f in files]
        assert sorted(names) == sorted(deployed)
        assert {f.path for f in files} == {"base/cm.yaml"}


def test_a_file_in_an_ignored_folder_cannot_be_taken_back() -> None:
    """As in git: a later `!pattern` does not reach into an excluded folder."""
    rules = IgnoreRules.parse(b"logs/\n!logs/keep.yaml\n*.tmp\n!important.tmp\n")
    assert rules.ignores("logs/keep.yaml")
    assert rules.ignores("a/logs/x.yaml")
    assert rules.ignores("x.tmp") and not rules.ignores("important.tmp")
    assert not rules.ignores("logs.yaml")
    assert not IgnoreRules().ignores("anything.yaml")

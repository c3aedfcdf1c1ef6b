"""Folders holding a kustomization are rendered by a real kustomize, from folders and commits."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import git
import pytest

from gitops.schemas.validate import validate_files
from gitops.sync import kustomize
from gitops.sync.sources import FolderSource, commit_files, folder_digest, read_folder
from tests.conftest import require
from tests.preview.repos import Repo

NAMESPACE = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
"""

BASE_APP = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: main
          image: web:1
          envFrom:
            - configMapRef: {name: web-config}
          resources:
            requests: {cpu: 100m, memory: 64Mi}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - port: 80
"""

BASE = """\
resources:
  - app.yaml
configMapGenerator:
  - name: web-config
    literals: [LEVEL=debug]
"""

OVERLAY = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: shop
namePrefix: prod-
commonLabels:
  env: prod
resources:
  - ../../base
configMapGenerator:
  - name: web-config
    behavior: replace
    literals: [LEVEL=info]
  - name: extra
    envs: [extra.env]
"""

# A manifest in a kustomization's folder that the kustomization does not name: Argo CD
# renders the kustomization and never reads it.
STRAY = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stray\n"

LAYOUT = {
    "namespace.yaml": NAMESPACE,
    "base/app.yaml": BASE_APP,
    "base/kustomization.yaml": BASE,
    "overlays/prod/kustomization.yaml": OVERLAY,
    "overlays/prod/extra.env": "COLOUR=blue\n",
    "overlays/prod/stray.yaml": STRAY,
    ".gitopsignore": "base/\n",
}


@pytest.fixture(autouse=True)
def fresh_renders() -> Iterator[None]:
    kustomize.clear_cache()
    yield
    kustomize.clear_cache()


@pytest.fixture
def has_kustomize() -> None:
    require(kustomize.find_kustomize() is not None, "kustomize (scripts/setup installs it)")


def write(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(content))
    return root


def commit(repo_dir: Path, files: dict[str, str]) -> git.Commit:
    repo = Repo(repo_dir)
    sha = repo.commit(files, "manifests")
    return git.Repo(repo_dir).commit(sha)


def test_an_overlay_of_a_base_renders_and_validates(tmp_path: Path, has_kustomize: None) -> None:
    files, problems = read_folder(write(tmp_path, LAYOUT))
    assert problems == []
    result = validate_files(files)
    assert result.errors == ()
    keys = {str(m.key): m for m in result.manifests}
    config = next(k for k in keys if k.startswith("ConfigMap shop/prod-web-config-"))
    extra = next(k for k in keys if k.startswith("ConfigMap shop/prod-extra-"))
    assert sorted(keys) == sorted(
        ["Namespace shop", "Deployment shop/prod-web", "Service shop/prod-web", config, extra]
    )
    deployment = keys["Deployment shop/prod-web"].body
    assert deployment["metadata"] == {"labels": {"env": "prod"}, "name": "prod-web", "namespace": "shop"}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": config.removeprefix("ConfigMap shop/")}}]
    assert keys[config].body["data"] == {"LEVEL": "info"}
    assert keys[extra].body["data"] == {"COLOUR": "blue"}
    # Objects are attributed to the file that declared them, at the line their document begins.
    assert str(keys["Deployment shop/prod-web"].location) == "base/app.yaml:1:1"
    assert str(keys["Service shop/prod-web"].location) == "base/app.yaml:21:1"
    assert str(keys[config].location) == "overlays/prod/kustomization.yaml:10:1"
    assert str(keys[extra].location) == "overlays/prod/kustomization.yaml:13:1"
    assert str(keys["Namespace shop"].location) == "namespace.yaml:1:1"
    assert all(b"config.kubernetes.io/origin" not in f.content for f in files)


def test_a_commit_renders_exactly_as_the_same_folder_does(tmp_path: Path, has_kustomize: None) -> None:
    """Both read paths give the same files, and rendering twice gives the same bytes: revision
    ids are hashes of them."""
    from_folder = read_folder(write(tmp_path / "folder", LAYOUT))
    kustomize.clear_cache()
    from_commit = commit_files(commit(tmp_path / "repo", LAYOUT))
    assert from_commit == from_folder
    kustomize.clear_cache()
    again = read_folder(tmp_path / "folder")
    assert folder_digest(*again) == folder_digest(*from_folder)
    source = FolderSource(tmp_path / "folder")
    first = source.latest()
    (tmp_path / "folder" / "overlays" / "prod" / "extra.env").write_text("COLOUR=green\n")
    assert source.latest().id != first.id


def test_a_git_source_path_is_the_root_kustomize_may_read(tmp_path: Path, has_kustomize: None) -> None:
    layout = {f"deploy/{name}": content for name, content in LAYOUT.items()}
    files, problems = commit_files(commit(tmp_path, layout), "deploy")
    assert problems == []
    assert "Deployment shop/prod-web" in {str(m.key) for m in validate_files(files).manifests}


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (
            "namePrefix: [prod-",
            "overlays/prod/kustomization.yaml:5:13: invalid YAML: while parsing a flow sequence "
            "expected ',' or ']', but got ':'",
        ),
        (
            "namePrefx: prod-",
            "overlays/prod/kustomization.yaml:1:1: kustomize build failed: invalid Kustomization: "
            'json: unknown field "namePrefx"',
        ),
    ],
)
def test_a_broken_kustomization_is_an_error_naming_its_file(
    tmp_path: Path, has_kustomize: None, broken: str, message: str
) -> None:
    layout = {**LAYOUT, "overlays/prod/kustomization.yaml": OVERLAY.replace("namePrefix: prod-", broken)}
    files, problems = read_folder(write(tmp_path, layout))
    assert [f.path for f in files] == ["namespace.yaml"]
    assert [str(p) for p in problems] == [message]


def test_kustomize_errors_name_files_relative_to_the_source(tmp_path: Path, has_kustomize: None) -> None:
    layout = {
        "app/kustomization.yaml": "resources: [app.yaml]\npatches:\n  - path: missing-patch.yaml\n",
        "app/app.yaml": STRAY,
    }
    _, problems = commit_files(commit(tmp_path, layout))
    [problem] = [str(p) for p in problems]
    assert problem.startswith("app/kustomization.yaml:1:1: kustomize build failed: ")
    assert "app/missing-patch.yaml" in problem
    assert "gitops-kustomize-" not in problem


def test_references_kustomize_must_not_follow_are_refused_where_written(
    tmp_path: Path, has_kustomize: None
) -> None:
    layout = {
        "app/kustomization.yaml": """\
            resources:
              - https://github.com/kubernetes-sigs/kustomize//examples/helloWorld?ref=v5.0.0
              - github.com/kubernetes-sigs/kustomize/examples/multibases
              - ../../elsewhere
              - /etc/kubernetes
              - missing.yaml
              - ../plain
            configMapGenerator:
              - name: remote
                files: [https://example.org/settings.json]
            """,
        "plain/cm.yaml": STRAY.replace("stray", "plain"),
    }
    files, problems = read_folder(write(tmp_path, layout))
    assert [f.path for f in files] == ["plain/cm.yaml"]
    offline = "gitops runs kustomize without network access: copy what it names into the source"
    assert [str(p) for p in problems] == [
        "app/kustomization.yaml:2:5: resources[0]: https://github.com/kubernetes-sigs/kustomize//"
        f"examples/helloWorld?ref=v5.0.0 is a remote base; {offline}",
        "app/kustomization.yaml:3:5: resources[1]: github.com/kubernetes-sigs/kustomize/examples/"
        f"multibases does not exist here, and kustomize would fetch it as a remote base; {offline}",
        "app/kustomization.yaml:4:5: resources[2]: ../../elsewhere is outside the source; "
        "kustomize may only read the source's own files",
        "app/kustomization.yaml:5:5: resources[3]: /etc/kubernetes is an absolute path; "
        "name files of the source relative to this folder",
        "app/kustomization.yaml:6:5: resources[4]: missing.yaml does not exist",
        "app/kustomization.yaml:7:5: resources[5]: ../plain is a folder without a kustomization.yaml",
        "app/kustomization.yaml:10:13: configMapGenerator[0].files[0]: "
        f"https://example.org/settings.json is a URL; {offline}",
    ]


@pytest.mark.parametrize("ignore", ["base/\n", ""])
def test_a_remote_base_of_a_base_is_refused_once(tmp_path: Path, has_kustomize: None, ignore: str) -> None:
    """Whether the base is built itself or only through the overlay."""
    layout = {
        "overlay/kustomization.yaml": "resources: [../base]\n",
        "base/kustomization.yaml": "resources:\n  - https://example.org/manifests.yaml\n",
        ".gitopsignore": ignore,
    }
    _, problems = commit_files(commit(tmp_path, layout))
    assert [str(p) for p in problems] == [
        "base/kustomization.yaml:2:5: resources[0]: https://example.org/manifests.yaml is a remote base; "
        "gitops runs kustomize without network access: copy what it names into the source"
    ]


def test_links_are_copied_in_and_links_leaving_the_source_refused(
    tmp_path: Path, has_kustomize: None
) -> None:
    layout = {
        "app/kustomization.yaml": "configMapGenerator:\n  - name: settings\n    envs: [shared.env]\n",
        "common/shared.env": "MODE=fast\n",
        "leak/kustomization.yaml": "configMapGenerator:\n  - name: leak\n    envs: [secret.env]\n",
    }
    write(tmp_path / "work", layout)
    os.symlink("../common/shared.env", tmp_path / "work" / "app" / "shared.env")
    os.symlink("../../../../etc/passwd", tmp_path / "work" / "leak" / "secret.env")
    for files, problems in (read_folder(tmp_path / "work"), commit_files(commit(tmp_path / "work", {}))):
        manifests = validate_files(files).manifests
        [settings] = [m for m in manifests if m.key.name.startswith("settings-")]
        assert settings.body["data"] == {"MODE": "fast"}
        messages = [str(p) for p in problems]
        assert messages[0].startswith("leak/secret.env:1:1: symbolic link points outside the repository")
        assert messages[1].startswith("leak/kustomization.yaml:1:1: kustomize build failed: ")
        assert "etc/passwd" not in messages[1]
        assert len(messages) == 2


def test_without_kustomize_the_error_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("GITOPS_KUSTOMIZE", raising=False)
    files, problems = read_folder(write(tmp_path / "src", LAYOUT))
    assert [f.path for f in files] == ["namespace.yaml"]
    assert [str(p) for p in problems] == [
        "overlays/prod/kustomization.yaml:1:1: this folder is a kustomization, and rendering it needs "
        f"kustomize: {kustomize.INSTALL_HINT}"
    ]
    assert "scripts/setup" in kustomize.INSTALL_HINT


def test_only_the_topmost_kustomization_folders_are_built() -> None:
    found = kustomize.roots(
        [
            "a/kustomization.yaml",
            "a/b/kustomization.yml",
            "c/Kustomization",
            "c-d/kustomization.yaml",
            "x.yaml",
        ]
    )
    assert found == ["a", "c", "c-d"]
    assert kustomize.roots(["kustomization.yaml", "a/kustomization.yaml"]) == [""]
    assert kustomize.covers("a", "a/b/c.yaml") and not kustomize.covers("a", "ab/c.yaml")


def test_a_kustomization_at_the_source_root_renders_the_whole_source(
    tmp_path: Path, has_kustomize: None
) -> None:
    layout = {
        "kustomization.yaml": "resources: [apps/cm.yaml]\nnamePrefix: all-\n",
        "apps/cm.yaml": STRAY,
        "apps/unused.yaml": NAMESPACE,
    }
    files, problems = read_folder(write(tmp_path, layout))
    assert problems == []
    assert [(f.path, f.content) for f in files] == [
        ("apps/cm.yaml", b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: all-stray\n")
    ]

"""Previews group repeated warnings for people, after the pod actions; JSON keeps every one."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from gitops.cli import main
from gitops.model import ObjectKey, SourceLocation
from gitops.preview import PodAction, Preview, RevisionInfo
from gitops.preview.diff import FieldChange, ObjectChange
from gitops.preview.render import to_json, to_markdown, to_text
from tests.preview.repos import Repo, deployment, nodes

SCHEMA = json.loads((Path(__file__).parents[2] / "gitops" / "preview" / "preview.schema.json").read_text())
IGNORED = "field is not acted on by gitops and is ignored"
SECURITY = "stdin: true\n"
UNUSED = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: leftover\ndata:\n  a: b\n"
GROUPED = (
    f"warning (5x): spec.template.spec.containers[*].stdin: {IGNORED} \u2014 "
    "apps/a.yaml:16:11, apps/b.yaml:16:11, apps/c.yaml:16:11 and 2 more"
)
SINGLE = "cm.yaml:1:1: ConfigMap default/leftover: no workload uses this ConfigMap"
MD_GROUPED = GROUPED.replace("*", "\\*")  # Markdown escapes it: no emphasis


def ignored(name: str) -> str:
    return (
        f"apps/{name}.yaml:16:11: Deployment default/{name}: "
        f"spec.template.spec.containers[0].stdin: {IGNORED} (warning)"
    )


def made(**fields: object) -> Preview:
    return Preview(
        head=RevisionInfo("a" * 40, "branch"),
        base=None,
        state_version="v1",
        state_source="nodes.yaml",
        **fields,  # type: ignore[arg-type]
    )


WARNINGS = (*(ignored(n) for n in "abcde"), SINGLE)
ACTION = PodAction(0, "create", "create", "default/a-1", "Deployment default/a", "node-1", "new")


@pytest.fixture
def planned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """`gitops plan` of a branch adding five Deployments that set an ignored field, and an
    unused ConfigMap, in each format."""
    state = tmp_path / "nodes.yaml"
    state.write_text(nodes(3))
    repo = Repo(tmp_path / "repo")
    base = repo.commit({"apps/web.yaml": deployment()}, "base")
    added = {f"apps/{n}.yaml": deployment(n, replicas=1, env=SECURITY) for n in "abcde"}
    repo.commit({**added, "cm.yaml": UNUSED}, "five more")
    out = {}
    for fmt in ("text", "markdown", "json"):
        assert (
            main(["plan", "--repo", str(repo.path), "--base", base, "--state", str(state), "--format", fmt])
            == 2
        )
        out[fmt] = capsys.readouterr().out
    return out


def test_markdown_folds_the_grouped_warnings_after_the_pod_actions(planned: dict[str, str]) -> None:
    md = planned["markdown"]
    pods = md.index("<details><summary>Pod actions (5)</summary>")
    warnings = md.index("<details><summary>6 warnings</summary>")
    assert pods < warnings < md.index("<sub>Computed on")
    section = md[warnings : md.index("</details>", warnings)]
    assert section.count("\n- ") == 2
    assert f"- {MD_GROUPED}\n" in section
    assert f"- {SINGLE}\n" in section
    assert "stdin" not in md[:pods].replace("stdin: true", "")


def test_text_prints_the_grouped_warnings_after_the_pod_actions(planned: dict[str, str]) -> None:
    lines = planned["text"].splitlines()
    start = lines.index("Warnings:")
    assert lines.index("  pass 0 (what the next control pass does):") < start
    assert lines[start + 1 :] == [f"  {GROUPED}", f"  {SINGLE}"]


def test_json_keeps_every_warning_on_its_own(planned: dict[str, str]) -> None:
    doc = json.loads(planned["json"])
    jsonschema.validate(doc, SCHEMA)
    assert doc["warnings"] == [*(ignored(n) for n in "abcde"), SINGLE]


def test_a_single_warning_prints_as_written_in_text_and_markdown() -> None:
    p = made(warnings=(ignored("a"),), actions=(ACTION,))
    assert f"Warnings:\n  {ignored('a')}\n" in to_text(p)
    md = to_markdown(p)
    assert f"<details><summary>1 warning</summary>\n\n- {ignored('a')}\n" in md


def test_two_different_warnings_stay_two_lines() -> None:
    p = made(warnings=(ignored("a"), SINGLE), actions=(ACTION,))
    text = to_text(p)
    assert f"Warnings:\n  {ignored('a')}\n  {SINGLE}\n" in text
    assert "(2x)" not in text


def test_errors_are_never_grouped() -> None:
    errors = tuple(
        f"apps/{n}.yaml:6:13: Deployment default/{n}: spec.replicas: expected integer" for n in "abcd"
    )
    p = made(errors=errors, warnings=WARNINGS)
    text = to_text(p)
    assert all(f"  {e}\n" in text for e in errors)
    assert "(4x)" not in text
    md = to_markdown(p)
    assert all(e in md for e in errors)
    assert to_json(p)["errors"] == list(errors)


def test_a_markdown_preview_too_big_for_its_objects_still_shows_the_warnings() -> None:
    fields = tuple(FieldChange(f"data.key{i}", None, "x" * 40) for i in range(50))
    objects = tuple(
        ObjectChange(ObjectKey("ConfigMap", "default", f"c{i}"), "created", SourceLocation("c.yaml"), fields)
        for i in range(100)
    )
    md = to_markdown(made(objects=objects, actions=(ACTION,), warnings=WARNINGS), limit=20_000)
    assert len(md) < 20_000
    assert "more sections not shown" in md
    assert md.index("more sections not shown") < md.index("<details><summary>6 warnings</summary>")
    assert MD_GROUPED in md


def test_markdown_warnings_from_a_manifest_are_escaped() -> None:
    hostile = "apps/x.yaml:1:1: ConfigMap default/x: <script>x()</script> | `tick` (warning)"
    md = to_markdown(made(warnings=(hostile, hostile), actions=(ACTION,)))
    assert "<script>" not in md
    assert "warning (2x): &lt;script>x()&lt;/script> \\| &#96;tick&#96;" in md

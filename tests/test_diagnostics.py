"""Repeated warnings are told once, with a count and their first locations; errors never are."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitops.cli import main
from gitops.diagnostics import field_shape, group_warnings, parse_diagnostic
from gitops.model import Diagnostic, ObjectKey, SourceLocation
from gitops.schemas import SourceFile, validate_files
from tests.preview.repos import deployment

IGNORED = "field is not acted on by gitops and is ignored"
SECURITY = "stdin: true\n"


def ignored(file: str, line: int, name: str, index: int = 0) -> Diagnostic:
    return Diagnostic(
        "warning",
        IGNORED,
        SourceLocation(file, line, 9),
        ObjectKey("Deployment", "default", name),
        f"spec.template.spec.containers[{index}].stdin",
    )


def test_five_warnings_of_one_shape_in_five_files_are_one_line_with_three_places_and_the_rest_counted() -> (
    None
):
    warnings = [ignored(f"apps/{n}.yaml", 10 + i, n, index=i % 2) for i, n in enumerate("abcde")]
    (group,) = group_warnings(warnings)
    assert group.count == 5
    assert group.members == tuple(warnings)
    assert str(group) == (
        f"warning (5x): spec.template.spec.containers[*].stdin: {IGNORED} \u2014 "
        "apps/a.yaml:10:9, apps/b.yaml:11:9, apps/c.yaml:12:9 and 2 more"
    )


def test_a_warning_that_occurs_once_prints_as_it_always_did() -> None:
    warning = ignored("apps/a.yaml", 20, "a")
    (group,) = group_warnings([warning])
    assert str(group) == str(warning)
    assert str(group).endswith(f"containers[0].stdin: {IGNORED} (warning)")


def test_different_messages_or_field_shapes_stay_apart_in_the_order_they_came() -> None:
    probe = Diagnostic("warning", "host is ignored", SourceLocation("a.yaml", 3, 1), None, "spec.host")
    other_field = Diagnostic("warning", IGNORED, SourceLocation("a.yaml", 5, 1), None, "spec.paused")
    warnings = [ignored("a.yaml", 1, "a"), probe, other_field, ignored("b.yaml", 1, "b")]
    groups = group_warnings(warnings)
    assert [g.count for g in groups] == [2, 1, 1]
    assert [str(g) for g in groups[1:]] == [str(probe), str(other_field)]


def test_two_places_are_named_without_and_more() -> None:
    (group,) = group_warnings([ignored("a.yaml", 1, "a"), ignored("b.yaml", 2, "b")])
    assert str(group).endswith("\u2014 a.yaml:1:9, b.yaml:2:9")


def test_errors_are_never_grouped_even_when_identical() -> None:
    error = Diagnostic("error", "expected integer", SourceLocation("a.yaml", 6, 13), None, "spec.replicas")
    groups = group_warnings([error, error, ignored("a.yaml", 1, "a"), error])
    assert [g.count for g in groups] == [1, 1, 1, 1]
    assert [str(g) for g in groups] == [str(error), str(error), str(ignored("a.yaml", 1, "a")), str(error)]


def test_a_warning_without_location_is_placed_by_its_object_or_not_at_all() -> None:
    key = ObjectKey("ConfigMap", "default", "cfg")
    unplaced = [Diagnostic("warning", "unused", None, key), Diagnostic("warning", "unused")]
    (group,) = group_warnings(unplaced)
    assert str(group) == "warning (2x): unused \u2014 ConfigMap default/cfg and 1 more"


def test_field_shapes_abstract_list_indexes_only() -> None:
    assert field_shape("spec.containers[10].ports[2].name") == "spec.containers[*].ports[*].name"
    assert field_shape('data["app.conf"]') == 'data["app.conf"]'
    assert field_shape("") == ""


@pytest.mark.parametrize(
    "diagnostic",
    [
        ignored("apps/web.yaml", 14, "web"),
        Diagnostic("warning", IGNORED, SourceLocation("a b/c:d.yaml", 1, 1), ObjectKey("Namespace", "", "x")),
        Diagnostic("warning", "selects no pods (app=x)", SourceLocation("s.yaml"), None, 'metadata["a: b"]'),
        Diagnostic("warning", "a: b: c", None, ObjectKey("Secret", "ns", "s"), ""),
        Diagnostic("error", "expected integer, got 'three'", SourceLocation("w.yaml", 6, 13)),
        Diagnostic("warning", "whole line"),
    ],
)
def test_a_printed_diagnostic_reads_back_as_itself(diagnostic: Diagnostic) -> None:
    parsed = parse_diagnostic(str(diagnostic), diagnostic.severity)
    assert str(parsed) == str(diagnostic)
    assert (parsed.location, parsed.object) == (diagnostic.location, diagnostic.object)


def test_every_warning_validation_writes_reads_back_with_its_field() -> None:
    text = (Path(__file__).parent / "schemas" / "realistic.yaml").read_bytes()
    warnings = validate_files([SourceFile("apps/realistic.yaml", text)]).warnings
    assert warnings
    assert [parse_diagnostic(str(w)) for w in warnings] == list(warnings)


def test_text_of_another_form_is_a_message() -> None:
    assert parse_diagnostic("svc.yaml:1:1: Service default/api: spec.selector: selects no pods") == (
        Diagnostic(
            "warning",
            "selects no pods",
            SourceLocation("svc.yaml", 1, 1),
            ObjectKey("Service", "default", "api"),
            "spec.selector",
        )
    )
    assert parse_diagnostic("no location at all") == Diagnostic("warning", "no location at all")


# --- gitops validate --------------------------------------------------------------------


def test_validate_prints_repeated_warnings_as_one_line_and_counts_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in "abcde":
        (tmp_path / f"{name}.yaml").write_text(deployment(name, env=SECURITY))
    assert main(["validate", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"warning (5x): spec.template.spec.containers[*].stdin: {IGNORED} \u2014 "
        "a.yaml:16:11, b.yaml:16:11, c.yaml:16:11 and 2 more"
    ]
    assert "5 file(s), 5 object(s): 0 error(s), 5 warning(s)" in captured.err


def test_validate_prints_a_single_warning_and_every_error_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.yaml").write_text(deployment("a", env=SECURITY))
    for name in "bc":
        (tmp_path / f"{name}.yaml").write_text(
            deployment(name, replicas=3).replace("replicas: 3", "replicas: x")
        )
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"a.yaml:16:11: Deployment default/a: spec.template.spec.containers[0].stdin: {IGNORED} (warning)"
    )
    assert [line.split(": ", 1)[0] for line in out[1:]] == ["b.yaml:6:13", "c.yaml:6:13"]
    assert all("spec.replicas: " in line for line in out[1:])


def test_validate_quiet_prints_no_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in "ab":
        (tmp_path / f"{name}.yaml").write_text(deployment(name, env=SECURITY))
    assert main(["validate", "-q", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""

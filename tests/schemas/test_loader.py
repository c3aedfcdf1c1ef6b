"""The loader builds plain values from YAML and remembers where each one was written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gitops.model import SourceLocation
from gitops.schemas.loader import MAX_DEPTH, SourceFile, format_path, load_file

from .helpers import source


def test_values_and_keys_keep_their_one_based_positions() -> None:
    documents, problems = load_file(source("a.yaml", "kind: X\nspec:\n  replicas: 3\n  ports: [80, 443]\n"))
    assert problems == []
    [document] = documents
    assert document.body == {"kind": "X", "spec": {"replicas": 3, "ports": [80, 443]}}
    assert document.location(("spec", "replicas")) == SourceLocation("a.yaml", 3, 13)
    assert document.location(("spec", "replicas"), key=True) == SourceLocation("a.yaml", 3, 3)
    assert document.location(("spec", "ports", 1)) == SourceLocation("a.yaml", 4, 15)


def test_a_missing_field_points_at_the_nearest_written_parent() -> None:
    [document], _ = load_file(source("a.yaml", "kind: X\nspec:\n  replicas: 3\n"))
    assert document.location(("spec", "template", "spec")) == SourceLocation("a.yaml", 3, 3)


def test_documents_are_split_and_empty_ones_skipped() -> None:
    text = "---\na: 1\n---\n---\n# only a comment\n---\nb: 2\n"
    documents, problems = load_file(source("a.yaml", text))
    assert problems == []
    assert [d.body for d in documents] == [{"a": 1}, {"b": 2}]
    assert documents[1].location() == SourceLocation("a.yaml", 7, 1)


def test_dates_stay_strings_as_they_would_in_kubernetes_json() -> None:
    [document], _ = load_file(source("a.yaml", "created: 2024-01-01\n"))
    assert document.body == {"created": "2024-01-01"}


def test_numeric_and_boolean_keys_are_kept_as_written() -> None:
    [document], _ = load_file(source("a.yaml", "80: http\ntrue: yes\n"))
    assert document.body == {"80": "http", "true": True}


def test_aliases_and_merge_keys_are_expanded() -> None:
    text = "base: &base {a: 1, b: 2}\nuse:\n  <<: *base\n  b: 3\nagain: *base\n"
    [document], problems = load_file(source("a.yaml", text))
    assert problems == []
    assert document.body["use"] == {"a": 1, "b": 3}
    assert document.body["again"] == {"a": 1, "b": 2}
    assert document.location(("use", "a")) == SourceLocation("a.yaml", 3, 7)


def test_a_duplicate_key_is_an_error_naming_the_first() -> None:
    documents, problems = load_file(source("a.yaml", "a: 1\nb: 2\na: 3\n"))
    assert documents == []
    assert [str(p) for p in problems] == ['a.yaml:3:1: duplicate key "a" (first written at a.yaml:1:1)']


def test_a_syntax_error_points_at_the_yaml_error_mark() -> None:
    documents, problems = load_file(source("apps/bad.yaml", "a: 1\nb: [1, 2\nc: 3\n"))
    assert documents == []
    assert [str(p) for p in problems] == [
        "apps/bad.yaml:3:2: invalid YAML: while parsing a flow sequence expected ',' or ']', but got ':'"
    ]


def test_documents_before_a_syntax_error_are_still_loaded() -> None:
    documents, problems = load_file(source("a.yaml", "a: 1\n---\nb: : c\n"))
    assert [d.body for d in documents] == [{"a": 1}]
    assert [str(p) for p in problems] == ["a.yaml:3:4: invalid YAML: mapping values are not allowed here"]


def test_a_mapping_used_as_a_key_is_refused() -> None:
    _, problems = load_file(source("a.yaml", "? [a]\n: 1\n"))
    assert [str(p) for p in problems] == [
        "a.yaml:1:3: mapping keys must be plain strings, not mappings or lists"
    ]


def test_a_byte_order_mark_is_ignored() -> None:
    [document], problems = load_file(SourceFile("a.yaml", b"\xef\xbb\xbfa: 1\n"))
    assert problems == []
    assert document.body == {"a": 1}


def test_field_paths_read_like_kubernetes_field_names() -> None:
    assert format_path(("spec", "template", "spec", "containers", 0, "image")) == (
        "spec.template.spec.containers[0].image"
    )
    assert format_path(("metadata", "labels", "app.kubernetes.io/name")) == (
        'metadata.labels["app.kubernetes.io/name"]'
    )
    assert format_path(()) == ""


def test_a_merge_key_may_take_a_list_of_mappings_and_earlier_ones_win() -> None:
    text = "a: &a {x: 1}\nb: &b {x: 2, y: 2}\nc:\n  <<: [*a, *b]\n  z: 3\n"
    [document], problems = load_file(source("a.yaml", text))
    assert problems == []
    assert document.body["c"] == {"x": 1, "y": 2, "z": 3}


def test_libyaml_and_the_bounded_python_scanner_give_the_same_documents_and_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Small files go through libyaml for speed; the result must not depend on which ran."""
    realistic = (Path(__file__).parent / "realistic.yaml").read_bytes()
    samples = [
        SourceFile("realistic.yaml", realistic),
        SourceFile("anchors.yaml", b"a: &x {k: v}\nb:\n  <<: *x\n  c: [1, 2, {d: e}]\n---\nf: 'g'\n"),
        SourceFile("broken.yaml", b"a: 1\n---\nb: [1, 2\nc: 3\n"),
        SourceFile("tags.yaml", b"a: !!python/object:os.system ls\nb: !!binary aGk=\n"),
        SourceFile("dup.yaml", b"a: 1\nb:\n  c: 2\n  c: 3\n"),
    ]
    fast = [load_file(f) for f in samples]
    monkeypatch.delattr(yaml, "CBaseLoader")
    slow = [load_file(f) for f in samples]
    assert fast == slow
    assert any(errors for _, errors in fast)  # the samples include refusals, not only clean files


def test_a_file_of_many_flow_collections_is_read_by_libyaml_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libyaml once read only files opening at most `MAX_DEPTH` flow collections in all: a
    file of 1,500 Deployments written with `{...}` went through PyYAML's scanner alone.
    Now libyaml reads any file, and only one nested past the limit is read again by the
    bounded scanner (whose refusal is the one users see: `test_hostile`)."""
    deployment = (
        "kind: Deployment\nmetadata: {name: app%d, labels: {app: a%d}}\nspec: {replicas: 2, x: [1, [2]]}\n"
    )
    text = "---\n".join(deployment % (i, i) for i in range(200)).encode()
    assert text.count(b"{") + text.count(b"[") > 4 * MAX_DEPTH
    made: list[str] = []
    real = yaml.CBaseLoader

    def spy(stream: str) -> Any:
        made.append("libyaml")
        return real(stream)

    monkeypatch.setattr(yaml, "CBaseLoader", spy)
    fast = load_file(SourceFile("many.yaml", text))
    assert made == ["libyaml"] and len(fast[0]) == 200 and fast[1] == []
    monkeypatch.delattr(yaml, "CBaseLoader")
    assert load_file(SourceFile("many.yaml", text)) == fast  # positions and all

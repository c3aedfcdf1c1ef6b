"""Hostile input is refused with a clear error naming the file; nothing crashes or hangs."""

from __future__ import annotations

import time

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gitops.schemas import MAX_FILE_BYTES, SourceFile, validate_files
from gitops.schemas.loader import MAX_DEPTH, load_file

from .helpers import DEPLOYMENT, errors, source

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_an_alias_bomb_is_refused_quickly() -> None:
    started = time.perf_counter()
    result = validate_files([SourceFile("bomb.yaml", BILLION_LAUGHS.encode())])
    assert time.perf_counter() - started < 1
    assert errors(result) == [
        "bomb.yaml:6:8: document has more than 100000 keys and values (counting every use of an alias); "
        "refusing it as a likely alias bomb"
    ]
    assert result.manifests == ()


def test_a_recursive_alias_is_refused() -> None:
    _, problems = load_file(source("loop.yaml", "a: &x [1, *x]\n"))
    assert [str(p) for p in problems] == ['loop.yaml:1:11: alias "*x" refers to a value that contains it']


def test_an_oversized_file_is_refused_without_parsing() -> None:
    content = b"a: " + b"x" * MAX_FILE_BYTES + b"\n"
    result = validate_files([SourceFile("big.yaml", content)])
    assert errors(result) == [
        f"big.yaml:1:1: file is {len(content)} bytes; manifests are limited to {MAX_FILE_BYTES} bytes"
    ]


def test_a_file_with_nul_bytes_is_refused_as_binary() -> None:
    result = validate_files([SourceFile("logo.yaml", b"\x89PNG\r\n\x1a\n\x00\x00")])
    assert errors(result) == [
        "logo.yaml:3:1: file looks binary (it contains a NUL byte); manifests must be UTF-8 text"
    ]


def test_a_file_that_is_not_utf8_is_refused() -> None:
    result = validate_files([SourceFile("latin1.yaml", b"kind: Namespace\nname: caf\xe9\n")])
    assert errors(result) == [
        "latin1.yaml:2:10: file is not UTF-8 text (invalid byte 0xe9); manifests must be UTF-8 text"
    ]


def test_deeply_nested_flow_lists_are_refused() -> None:
    result = validate_files([SourceFile("deep.yaml", b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n")])
    assert errors(result) == [
        f"deep.yaml:1:{4 + MAX_DEPTH}: invalid YAML: collections are nested more than {MAX_DEPTH} levels deep"
    ]


def test_deeply_nested_block_mappings_are_refused() -> None:
    text = "".join(f"{'  ' * depth}k:\n" for depth in range(300)) + "  " * 300 + "v\n"
    _, problems = load_file(SourceFile("deep.yaml", text.encode()))
    assert [str(p) for p in problems] == [
        f"deep.yaml:101:{2 * 100 + 1}: document is nested more than 100 levels deep"
    ]


def test_a_file_of_nothing_but_open_brackets_is_refused_quickly() -> None:
    started = time.perf_counter()
    result = validate_files([SourceFile("deep.yaml", b"[" * (MAX_FILE_BYTES - 1))])
    assert time.perf_counter() - started < 1
    assert errors(result) == [
        f"deep.yaml:1:{MAX_DEPTH + 1}: invalid YAML: collections are nested more than {MAX_DEPTH} levels deep"
    ]


def test_python_object_tags_are_an_error_and_never_executed() -> None:
    text = "a: !!python/object/apply:os.system ['touch /tmp/pwned']\n"
    result = validate_files([source("evil.yaml", text)])
    assert errors(result) == [
        "evil.yaml:1:4: YAML tag !!python/object/apply:os.system is not allowed; "
        "only the standard tags (!!str, !!int, !!float, !!bool, !!null, !!map, !!seq) are"
    ]


def test_custom_tags_on_collections_are_an_error() -> None:
    _, problems = load_file(source("a.yaml", "a: !!set {x, y}\nb: !thing [1]\n"))
    assert [str(p) for p in problems] == [
        "a.yaml:1:4: YAML tag !!set is not allowed; "
        "only the standard tags (!!str, !!int, !!float, !!bool, !!null, !!map, !!seq) are"
    ]


def test_a_refused_document_does_not_stop_the_next_one() -> None:
    text = "a: !!python/name:os.system\n---\n" + DEPLOYMENT.lstrip("\n")
    result = validate_files([source("mixed.yaml", text)])
    assert len(errors(result)) == 1
    assert [str(m.key) for m in result.manifests] == ["Deployment default/web"]


def test_explicit_standard_tags_are_accepted() -> None:
    [document], problems = load_file(source("a.yaml", "a: !!str 10\nb: !!int '7'\nc: !!map {x: 1}\n"))
    assert problems == []
    assert document.body == {"a": "10", "b": 7, "c": {"x": 1}}


def test_an_invalid_explicit_scalar_is_an_error() -> None:
    _, problems = load_file(source("a.yaml", "a: !!int seven\n"))
    assert [str(p) for p in problems] == ["a.yaml:1:4: invalid int value 'seven'"]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
FIELDS = st.sampled_from(
    [
        ("kind",),
        ("metadata",),
        ("metadata", "name"),
        ("metadata", "namespace"),
        ("metadata", "labels"),
        ("spec", "replicas"),
        ("spec", "selector"),
        ("spec", "selector", "matchExpressions"),
        ("spec", "strategy"),
        ("spec", "template", "metadata", "labels"),
        ("spec", "template", "spec"),
        ("spec", "template", "spec", "containers"),
        ("spec", "template", "spec", "volumes"),
        ("spec", "template", "spec", "containers", 0, "env"),
        ("spec", "template", "spec", "containers", 0, "envFrom"),
        ("spec", "template", "spec", "containers", 0, "resources"),
        ("spec", "template", "spec", "containers", 0, "volumeMounts"),
        ("spec", "template", "spec", "containers", 0, "ports"),
    ]
)


@settings(max_examples=150, deadline=None)
@given(FIELDS, JSON_VALUES, st.sampled_from(["Deployment", "Service", "ConfigMap", "Secret", "Namespace"]))
def test_any_value_in_any_field_gives_diagnostics_never_an_exception(
    path: tuple[str | int, ...], value: object, kind: str
) -> None:
    body = yaml.safe_load(DEPLOYMENT)
    body["kind"] = kind
    body["apiVersion"] = "apps/v1" if kind == "Deployment" else "v1"
    target = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    result = validate_files([SourceFile("fuzz.yaml", yaml.safe_dump(body).encode())])
    assert all(d.location is not None for d in (*result.errors, *result.warnings))


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="ab:-[]{}&*!|>'\"#\n ,?%@`\t\\.0", max_size=60))
def test_arbitrary_text_gives_diagnostics_never_an_exception(text: str) -> None:
    result = validate_files([SourceFile("fuzz.yaml", text.encode())])
    assert all(d.location is not None and d.location.file == "fuzz.yaml" for d in result.errors)

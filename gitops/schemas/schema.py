"""The packaged JSON Schemas, and their findings turned into messages for people.

One schema per kind (`deployment.schema.json`, ...) plus `common.schema.json` for the
shared parts (and `kinds.schema.json` for those of the kinds gitops only stores), all draft
2020-12; a schema may use the definitions of any other (`role.schema.json#/$defs/...`).
A schema declares exactly the fields gitops acts on (for a kind it only stores: all of the
kind's Kubernetes fields) and closes every object with `additionalProperties: false`; a
field it does not declare is valid Kubernetes that gitops ignores, so it becomes a warning,
never an error. Two keywords of our own: `x-message` replaces the default "expected ..."
wording of a field, and `x-unsupported` marks a field whose mere presence is an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import extend

from gitops.model import KINDS

from .loader import FieldPath

__all__ = ["IGNORED", "SchemaFinding", "describe_value", "schema_findings"]

IGNORED = "field is not acted on by gitops and is ignored"
_TYPE_NAMES = {
    "integer": "integer",
    "number": "number",
    "string": "string",
    "boolean": "boolean (true or false)",
    "object": "mapping",
    "array": "list",
    "null": "null",
}


@dataclass(frozen=True)
class SchemaFinding:
    """One schema finding at `path`; `at_key` points it at the key rather than the value."""

    severity: str
    path: FieldPath
    message: str
    at_key: bool = False


def _unsupported(
    validator: Validator, message: str, instance: object, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    yield ValidationError(message)


_GitopsValidator = extend(Draft202012Validator, {"x-unsupported": _unsupported})


@cache
def _read(name: str) -> Any:
    """A packaged schema document, parsed once; shared, so never mutated."""
    return json.loads(resources.files("gitops.schemas").joinpath(name).read_text(encoding="utf-8"))


def _inline(node: Any, current: str, depth: int = 0) -> Any:
    """`node` with every `$ref` replaced by what it points at.

    Validation then never resolves a reference (with the `referencing` library that was
    half the time of a schema check). A `$ref` with sibling keywords becomes an `allOf` of
    both, which is what 2020-12 means by it. Our schemas are not recursive; `depth` guards.
    """
    if depth > 50:
        raise ValueError("schema references nest more than 50 levels deep")
    if isinstance(node, list):
        return [_inline(v, current, depth) for v in node]
    if not isinstance(node, Mapping):
        return node
    ref = node.get("$ref")
    result = {k: _inline(v, current, depth) for k, v in node.items() if k != "$ref"}
    if not isinstance(ref, str):
        return result
    file, _, pointer = ref.partition("#")
    name = file or current
    target: Any = _read(name)
    for part in pointer.strip("/").split("/") if pointer.strip("/") else []:
        target = target[part]
    resolved = _inline(target, name, depth + 1)
    siblings = {k: v for k, v in result.items() if k not in ("$defs", "$id", "$schema")}
    if not siblings:
        return resolved
    return {**result, "allOf": [*result.get("allOf", []), resolved]}


@cache
def _validator(kind: str) -> Validator:
    name = f"{kind.lower()}.schema.json"
    schema = _inline(_read(name), name)
    validator: Validator = _GitopsValidator(schema)
    return validator


def describe_value(value: object) -> str:
    """A value as it reads in a message: strings quoted, containers named."""
    if isinstance(value, str):
        shown = json.dumps(value, ensure_ascii=False)
        return shown if len(shown) <= 60 else shown[:56] + '..."'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _describe(schema: Mapping[str, Any]) -> str:
    if "description" in schema:
        return str(schema["description"])
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    text = " or ".join(_TYPE_NAMES.get(t, t) for t in types) or "a valid value"
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        text += f" between {low} and {high}"
    elif low is not None:
        text += f" >= {low}"
    elif high is not None:
        text += f" <= {high}"
    if schema.get("minLength") == 1:
        text = f"non-empty {text}"
    if "maxLength" in schema:
        text += f" of at most {schema['maxLength']} characters"
    return text


def _expected(schema: Mapping[str, Any], instance: object) -> str:
    if "x-message" in schema:
        return f"{schema['x-message']}, got {describe_value(instance)}"
    return f"expected {_describe(schema)}, got {describe_value(instance)}"


def _translate(error: ValidationError) -> Iterator[SchemaFinding]:
    path: FieldPath = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    kind = error.validator
    if "propertyNames" in error.absolute_schema_path:
        key = str(error.instance)
        yield SchemaFinding("error", (*path, key), f"invalid key: {_expected(schema, key)}", at_key=True)
    elif kind == "additionalProperties" and error.validator_value is False:
        declared = schema.get("properties", {})
        instance = error.instance if isinstance(error.instance, dict) else {}
        for key in instance:
            if key not in declared:
                yield SchemaFinding("warning", (*path, key), IGNORED, at_key=True)
    elif kind == "required":
        instance = error.instance if isinstance(error.instance, dict) else {}
        for name in error.validator_value:
            if name not in instance:
                yield SchemaFinding("error", (*path, name), "required field is missing")
    elif kind == "x-unsupported":
        yield SchemaFinding("error", path, error.message)
    elif kind == "minItems":
        count = len(error.instance) if isinstance(error.instance, list) else 0
        yield SchemaFinding("error", path, f"expected at least {error.validator_value} item(s), got {count}")
    elif kind == "maxItems":
        count = len(error.instance) if isinstance(error.instance, list) else 0
        yield SchemaFinding("error", path, f"expected at most {error.validator_value} item(s), got {count}")
    else:
        yield SchemaFinding("error", path, _expected(schema, error.instance))


def schema_findings(kind: str, body: Mapping[str, Any]) -> list[SchemaFinding]:
    """What the schema of `kind` says about `body`: errors and ignored-field warnings."""
    if kind not in KINDS:
        raise ValueError(f"no schema for kind {kind!r}")
    findings: list[SchemaFinding] = []
    for error in _validator(kind).iter_errors(body):
        findings += _translate(error)
    return findings

"""Helpers for the schemas tests: build source files from test text and validate them."""

from __future__ import annotations

import textwrap

from gitops.schemas import SourceFile, ValidationResult, validate_files

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: nginx:1.25
"""


def source(path: str, text: str) -> SourceFile:
    """A source file from indented test text (dedented, leading newline dropped)."""
    return SourceFile(path, textwrap.dedent(text).lstrip("\n").encode())


def validate(*files: tuple[str, str]) -> ValidationResult:
    return validate_files([source(path, text) for path, text in files])


def validate_one(text: str, path: str = "apps/web.yaml") -> ValidationResult:
    return validate((path, text))


def errors(result: ValidationResult) -> list[str]:
    return [str(d) for d in result.errors]


def warnings(result: ValidationResult) -> list[str]:
    return [str(d) for d in result.warnings]

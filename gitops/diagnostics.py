"""Diagnostics for people: a warning repeated across objects is told once, with where.

A branch whose twenty Deployments each set a field gitops ignores gets the same warning
twenty times, and the lines that matter drown in them. `group_warnings` puts the warnings
that say the same thing at the same field path shape (list indexes written `[*]`; which
object they belong to left out) into one `WarningGroup`, printed as one line with a count
and its first few locations. A group of one prints exactly as its warning did. Errors are
never grouped: each one is something to fix where it stands.

Previews carry their diagnostics as text (`Preview.warnings`, their JSON);
`parse_diagnostic` reads one back from the form `Diagnostic.__str__` prints. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from gitops.model import KINDS, Diagnostic, ObjectKey, Severity, SourceLocation

__all__ = ["SHOWN", "WarningGroup", "field_shape", "group_warnings", "parse_diagnostic"]

SHOWN = 3
"""How many locations a group's line names before `and N more`."""

_INDEX = re.compile(r"\[\d+\]")


def field_shape(path: str) -> str:
    """`spec.containers[0].ports[1].name` -> `spec.containers[*].ports[*].name`.

    Only list indexes are abstracted: a quoted key (`data["app.conf"]`) names the field
    itself, and two different ignored keys are two different warnings.
    """
    return _INDEX.sub("[*]", path)


@dataclass(frozen=True)
class WarningGroup:
    """Diagnostics saying the same thing at the same field shape, in the order they came."""

    field: str
    """The members' field path shape, e.g. `spec.template.spec.containers[*].securityContext`."""
    message: str
    members: tuple[Diagnostic, ...]

    @property
    def count(self) -> int:
        return len(self.members)

    @property
    def severity(self) -> Severity:
        return self.members[0].severity

    @property
    def places(self) -> tuple[str, ...]:
        """Where each member is: `file:line:col`, else its object, if either is known."""
        found = (str(d.location) if d.location else str(d.object) if d.object else "" for d in self.members)
        return tuple(place for place in found if place)

    def line(self, shown: int = SHOWN) -> str:
        """One line for people: the warning itself for a group of one, else a count,
        what it says and the first `shown` places."""
        if self.count == 1:
            return str(self.members[0])
        what = f"{self.field}: {self.message}" if self.field else self.message
        places = self.places[:shown]
        more = self.count - len(places)
        where = ", ".join(places) + (f" and {more} more" if more else "")
        return f"{self.severity} ({self.count}x): {what}" + (f" \u2014 {where}" if places else "")

    def __str__(self) -> str:
        return self.line()


def group_warnings(diagnostics: Iterable[Diagnostic]) -> list[WarningGroup]:
    """`diagnostics` as groups, in the order of each group's first member.

    Warnings with the same message and the same `field_shape` share a group; every error
    is a group of its own, so printing the groups never hides an error.
    """
    groups: dict[tuple[str, str] | int, list[Diagnostic]] = {}
    for n, d in enumerate(diagnostics):
        key: tuple[str, str] | int = (field_shape(d.field), d.message) if d.severity == "warning" else n
        groups.setdefault(key, []).append(d)
    return [
        WarningGroup(field_shape(members[0].field), members[0].message, tuple(members))
        for members in groups.values()
    ]


# --- reading a printed diagnostic back ------------------------------------------------

_LOCATION = re.compile(r"(?P<file>.*?):(?P<line>\d+):(?P<col>\d+): ")
_OBJECT = re.compile(rf"(?P<kind>{'|'.join(sorted(KINDS))}) (?P<ref>[^\s:]+): ")
# What `gitops.schemas.loader.format_path` writes: plain keys, [index], ["quoted key"].
_PART = r'(?:\[\d+\]|\["[^"]*"\])'
_FIELD = re.compile(rf"(?P<field>(?:[A-Za-z0-9_-]+|{_PART})(?:\.[A-Za-z0-9_-]+|{_PART})*): ")
_SUFFIX = " (warning)"


def parse_diagnostic(text: str, severity: Severity = "warning") -> Diagnostic:
    """The diagnostic `text` prints, as far as it can be told: `str(parse_diagnostic(
    str(d), d.severity)) == str(d)` for every diagnostic gitops writes. Text that does not
    have that form becomes a diagnostic whose message is the whole text."""
    rest = text.removesuffix(_SUFFIX) if severity == "warning" else text
    location = None
    if m := _LOCATION.match(rest):
        location = SourceLocation(m["file"], int(m["line"]), int(m["col"]))
        rest = rest[m.end() :]
    key = None
    if m := _OBJECT.match(rest):
        # `namespace/name`, or a cluster-scoped object's bare name
        namespace, slash, name = m["ref"].partition("/")
        namespace, name = (namespace, name) if slash else ("", namespace)
        if namespace or not slash:
            key = ObjectKey(m["kind"], namespace, name)
            rest = rest[m.end() :]
    field = ""
    if (m := _FIELD.match(rest)) and len(rest) > m.end():
        field = m["field"]
        rest = rest[m.end() :]
    return Diagnostic(severity, rest, location, key, field)

"""Keeping Secret values and credentials out of everything people read.

`Redactor` replaces every known Secret value (decoded, and as the base64 a manifest writes
it) in free text with `[redacted]`, and the credentials of URLs (`https://user:token@host`)
with `***`. One redactor, built from the desired Secrets, serves the read model (page, JSON
API, `gitops status`, exports), the store (agent reports are redacted before they are
written), and the server's log (`log_processor`). Values shorter than `MIN_LENGTH`
characters are not replaced in free text: they would blank out ordinary words.

Pure: no I/O.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from gitops.keyed import secret_data
from gitops.model import Manifest

REDACTED = "[redacted]"
MIN_LENGTH = 4
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact_url(text: str) -> str:
    """`https://user:token@host/x` -> `https://***@host/x`, anywhere in `text`."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def secret_forms(values: Iterable[bytes | str]) -> set[str]:
    """The ways a Secret value shows up in text: as it is, as the base64 a manifest writes,
    JSON-escaped (a value with quotes or newlines inside a JSON log line), and, for a value
    of several lines (a PEM key), each of its lines of 8 characters or more."""
    forms: set[str] = set()
    for value in values:
        raw = value.encode() if isinstance(value, str) else value
        text = raw.decode(errors="replace")
        for candidate in (text, text.strip()):
            if len(candidate) >= MIN_LENGTH:
                forms.add(candidate)
                forms.add(json.dumps(candidate, ensure_ascii=False)[1:-1])
                forms.add(json.dumps(candidate)[1:-1])
        if len(raw.strip()) >= MIN_LENGTH:
            forms.add(base64.b64encode(raw).decode())
        if "\n" in text:
            forms.update(line.strip() for line in text.splitlines() if len(line.strip()) >= 8)
    return forms


def secret_values(desired: Iterable[Manifest]) -> list[str]:
    """Every form of every Secret value in `desired` (`secret_forms`), longest first."""
    raw = [v for m in desired if m.key.kind == "Secret" for v in secret_data(m.body).values()]
    return sorted(secret_forms(raw), key=lambda v: (-len(v), v))


class Redactor:
    """Replaces known secret values and URL credentials in text and in JSON-like values."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        kept = sorted({v for v in values if len(v) >= MIN_LENGTH}, key=lambda v: (-len(v), v))
        self.values: tuple[str, ...] = tuple(kept)
        self._pattern = re.compile("|".join(re.escape(v) for v in kept)) if kept else None

    @classmethod
    def of(cls, desired: Iterable[Manifest], extra: Iterable[bytes | str] = ()) -> Redactor:
        """Redacts the desired Secrets' values and `extra` values (such as the values pods
        still hold from a Secret that has changed since), in all their forms."""
        return cls([*secret_values(desired), *secret_forms(extra)])

    @classmethod
    def of_values(cls, values: Iterable[bytes | str]) -> Redactor:
        return cls(secret_forms(values))

    def __bool__(self) -> bool:
        return bool(self.values)

    def text(self, text: str) -> str:
        if self._pattern is not None and text:
            text = self._pattern.sub(REDACTED, text)
        return redact_url(text) if "://" in text else text

    __call__ = text

    def value(self, value: Any) -> Any:
        """`value` (JSON-like: dicts, lists, strings, numbers) with every string redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value

    def merged(self, values: Sequence[str]) -> Redactor:
        return Redactor([*self.values, *values]) if values else self


def truncate(text: str, limit: int) -> str:
    """At most `limit` characters, saying how many were cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 20)] + f"... ({len(text) - limit + 20} more)"


# --- logs ------------------------------------------------------------------------------------

_log_redactors: list[Callable[[], Redactor]] = []
_log_keys: list[object] = []
_last_good: dict[int, Redactor] = {}


def redact_logs_with(source: Callable[[], Redactor], key: object = None) -> None:
    """Have `log_processor` also redact what `source()` knows (the store's Secret values, an
    agent's pods' values). Sources are kept for the life of the process; registering again
    under the same `key` replaces the earlier one."""
    if key is not None and key in _log_keys:
        index = _log_keys.index(key)
        _log_redactors[index] = source
        return
    _log_redactors.append(source)
    _log_keys.append(key if key is not None else object())


def log_processor(_logger: object, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: every string of a log event, tracebacks included, with known
    Secret values and URL credentials redacted. Runs after `format_exc_info`."""
    redactors = []
    for index, source in enumerate(list(_log_redactors)):
        # A log line must never fail because a source did: when one cannot answer (a database
        # down or locked), what it gave last time is used.
        with contextlib.suppress(Exception):
            _last_good[index] = source()
        if index in _last_good:
            redactors.append(_last_good[index])
    plain = Redactor()

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            for redactor in redactors:
                value = redactor.text(value)
            return plain.text(value)
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items()}
        return value

    for key in list(event):
        event[key] = clean(event[key])
    return event

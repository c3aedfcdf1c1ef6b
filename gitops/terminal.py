"""Text for a terminal: what others wrote can never drive the operator's terminal.

Pod reasons, log tails, revision messages and manifest contents are written by containers
and committers. Printed raw, an escape sequence in them can retitle the terminal, move the
cursor, recolour or hide text, and a newline or a bidirectional override can forge a line
such as `all pods ready`. `escape` shows every control and format character as a visible
escape (`\\x1b`, `\\u202e`); the CLI applies it to each field it prints, and wraps its
standard output and error in `SafeStream` so that nothing it writes reaches the terminal
unescaped. Pure.
"""

from __future__ import annotations

import io
import unicodedata
from typing import TextIO


def _visible(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every control (C0, DEL, C1) and format character (bidirectional overrides,
    zero-width joiners, ...) escaped; newlines kept when `keep_newlines`."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == "\n" and keep_newlines:
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Cf") or ch in ("\u2028", "\u2029"):
            out.append(_visible(ch))
        else:
            out.append(ch)
    return "".join(out)


class SafeStream(io.TextIOBase):
    """A text stream that escapes what is written to it (newlines kept) before passing it on."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        if self.stream.closed:  # a log line after its stream went (a stop logging at exit): dropped
            return len(text)
        self.stream.write(escape(text, keep_newlines=True))
        return len(text)

    def flush(self) -> None:
        if not self.stream.closed:
            self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

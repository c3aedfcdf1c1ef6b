"""`gitops.terminal.SafeStream`: what it passes on, and a stream closed under it."""

from __future__ import annotations

import io

from gitops.terminal import SafeStream


def test_a_safe_stream_escapes_controls_and_drops_lines_once_its_stream_is_closed() -> None:
    target = io.StringIO()
    stream = SafeStream(target)
    stream.write("ok\x1b[31m\n")
    assert "\x1b" not in target.getvalue() and target.getvalue().endswith("\n")
    target.close()  # pytest's captured output after the test, a pipe at exit
    assert stream.write("a control plane stopping logs a last line\n") == 42
    stream.flush()

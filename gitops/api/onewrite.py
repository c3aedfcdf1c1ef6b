"""A response's head and body in one write to its socket: `OneWriteProtocol`.

uvicorn writes a response's status line and headers to the transport as soon as the app
sends `http.response.start`, and its body at the next message: two `send` system calls per
response, each one a TCP segment that wakes the client on its own. At 5,000 nodes the
agents' 630 calls a second are answered with a few hundred bytes each, and those writes
were about 29% of the event loop's time (py-spy, holding the interpreter: uvloop writes
without releasing it, and over loopback the kernel delivers the segment to the client in
the writer's own system call).

`OneWriteProtocol` is uvicorn's httptools protocol with its transport wrapped
(`HeldHead`): a write that begins a response (`HTTP/`) is held, and the next write goes
out with it, in one call (a body of more than 64 KiB in a call of its own, after it). A
head that no write follows in the same turn of the event loop (a streamed body, an app
that waits before its first part) goes out alone at the loop's next turn. Nothing is
reordered, and closing the transport first writes what is held.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD = b"HTTP/"
# Bytes at most worth copying to save a write: a body copied to go with its head (a longer one
# goes in a write of its own), and a node reply's parts joined into one body (`noderoute`).
JOINED = 64 * 1024


class HeldHead:
    """`transport`, holding a response's head until the next write or the loop's next turn
    (see the module docstring)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held = b""
        self.writes = 0  # writes given to the transport (for tests)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held and len(data) <= JOINED:
            data, self._held = self._held + bytes(data), b""
        elif self._held:
            self._release()
        elif bytes(data[: len(_HEAD)]) == _HEAD:
            self._held = bytes(data)
            self._loop.call_soon(self._release)
            return
        self.writes += 1
        self._transport.write(data)

    def _release(self) -> None:
        """Write what is held (a head no write followed in its turn)."""
        if self._held:
            held, self._held = self._held, b""
            if not self._transport.is_closing():
                self.writes += 1
                self._transport.write(held)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def close(self) -> None:
        self._release()
        self._transport.close()

    def write_eof(self) -> None:
        self._release()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = b""
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return len(self._held) + self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:  # the rest as the transport has it
        return getattr(self._transport, name)


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing each response's head with its body
    (`HeldHead`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        held = HeldHead(transport, self.loop)
        super().connection_made(held)  # type: ignore[arg-type]

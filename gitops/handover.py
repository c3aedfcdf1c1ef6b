"""How soon a thread that waits for the interpreter gets it while long work runs in another.

CPython hands its lock to a thread that asks for it only after the switch interval (5 ms
by default) when the holder computes without pause. The API's event loop asks for it at
every socket read and write: behind a controller pass (0.1-0.3 s at 150,000 pods) or a
status view's rebuild, each of those waited up to 5 ms, and an agent's heartbeat, answered
in 0.15 ms, took 5-40 ms. While such work runs, `quick_handover()` makes the interval
0.5 ms. The interval is the process's: the first holder sets it, the last one gives the
one from before back, whatever order they end in.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

HANDOVER = 0.0005  # seconds: the switch interval while long work runs


class _Interval:
    """The process's switch interval, and how many hold it short."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._before = 0.0  # the interval the first holder found

    @contextmanager
    def short(self, interval: float) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._before = sys.getswitchinterval()
            self._holders += 1
            sys.setswitchinterval(min(interval, sys.getswitchinterval()))
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    sys.setswitchinterval(self._before)


_INTERVAL = _Interval()


def quick_handover(interval: float = HANDOVER) -> AbstractContextManager[None]:
    """The switch interval at most `interval` while the block runs."""
    return _INTERVAL.short(interval)

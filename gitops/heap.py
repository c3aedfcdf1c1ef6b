"""The interpreter's cyclic garbage collector in a control plane that holds a large state.

Python's collector walks every object it tracks at each full (generation 2) collection,
and starts one whenever the objects promoted since the last grow past a quarter of those
that survived it. A control plane at 150,000 pods holds millions of objects (the pod
cache, the controller's state, the status view) and keeps replacing some of them: at
5,000 nodes, while the pods came up, full collections ran every 2 s at about 0.5 s each;
with the young ones, the collector took 40% of the server's time (measured with
`gc.callbacks`).

`Heap.settle()` keeps full collections off what lives long: it collects the young
generations (what was made since the last settle: cheap) and freezes what is left
(`gc.freeze`: the collector no longer walks it), so that the automatic collections walk
only what came since. Objects freed by their reference count, nearly all, go whether
frozen or not; what frozen objects later make into cyclic garbage is found by a full
collection (everything unfrozen, collected, frozen again). A full collection stalls every
thread for as long as it walks everything: 2-3 s at 150,000 pods. So one is made when
it can pay: when the objects allocated (`sys.getallocatedblocks()`) grew by `growth` (a
half) since the last one (the state grew, or garbage is piling up: CPython's own rule for
full collections, counted in what is alive rather than in what was promoted; looked at
every `check_every` seconds, not at every settle: counting them walks every pool of the
allocator, about 2 ms with the interpreter held at 1 GiB, every 2 s), every
`idle_every` seconds when the caller says nobody waits on the interpreter, at once when it
says the state shrank, and else every `full_every` seconds (6 hours: for garbage that holds
little memory). It was every 10 minutes: at 5,000 nodes each one held every agent's call
for 2.8 s. The memory freed is handed back to the system then.

A server runs `keep()` in a thread (a settle every few seconds) while it serves; when the
last keeper stops, everything is unfrozen again. The collector's pauses, by generation,
are counted (`seconds`, `collections`, `pauses` in `PAUSE_BOUNDS` buckets, and the objects
each generation's collections found unreachable, `collected`) for `/metrics`.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import gc
import sys
import threading
import time
from typing import Any

# Upper bounds (seconds) of the buckets the collector's pauses are counted in (`Heap.pauses`):
# a young collection takes well under a millisecond, a full one at 150,000 pods seconds.
PAUSE_BOUNDS = (0.001, 0.005, 0.02, 0.1, 0.5, 2.0, 10.0)


def release_memory() -> None:
    """Hand memory the process freed back to the system (glibc keeps freed heap pages for
    reuse otherwise, so a process that once held a huge state stays that big)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return  # not glibc: nothing to do


class Heap:
    """The process's collector policy (one per process: `HEAP`); see the module docstring."""

    def __init__(
        self,
        *,
        full_every: float = 6 * 3600.0,
        idle_every: float = 60.0,
        growth: float = 0.5,
        check_every: float = 30.0,
    ) -> None:
        self.full_every = full_every
        self.idle_every = idle_every
        self.growth = growth
        self.check_every = check_every
        self.seconds = [0.0, 0.0, 0.0]  # the collector's time by generation, since `count_time()`
        self.collected = [0, 0, 0]  # the unreachable objects they found, by generation
        # Pauses by generation: counts per bucket of `PAUSE_BOUNDS`, the last one past them.
        self.pauses = [[0] * (len(PAUSE_BOUNDS) + 1) for _ in range(3)]
        self.full_collections = 0  # full collections `settle()` made
        self._lock = threading.Lock()
        self._collected = time.monotonic()  # the last full collection `settle()` made
        self._blocks = sys.getallocatedblocks()  # the objects allocated after it
        self._checked = time.monotonic()  # when the objects allocated were last counted
        self._started = 0.0
        self._counting = False
        self._keepers = 0

    @property
    def collections(self) -> list[int]:
        """Collections by generation, since `count_time()`."""
        return [sum(counts) for counts in self.pauses]

    def count_time(self) -> None:
        """Count the collector's time by generation in `seconds` from now on (once)."""
        with self._lock:
            if not self._counting:
                self._counting = True
                gc.callbacks.append(self._timed)

    def _timed(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took, generation = time.perf_counter() - self._started, info["generation"]
        self.seconds[generation] += took
        self.collected[generation] += info["collected"]
        self.pauses[generation][bisect.bisect_left(PAUSE_BOUNDS, took)] += 1

    def settle(self, *, idle: bool = False, shrank: bool = False) -> bool:
        """Collect the young generations and freeze what is left; a full collection first
        when one is due (see the module docstring). Whether it made a full collection."""
        with self._lock:
            now = time.monotonic()
            since = now - self._collected
            full = shrank or since >= self.full_every or (idle and since >= self.idle_every)
            if not full and now - self._checked >= self.check_every:
                self._checked = now
                full = sys.getallocatedblocks() >= self._blocks * (1 + self.growth)
            if full:
                gc.unfreeze()
                gc.collect()
                release_memory()
                self._collected = time.monotonic()
                self._blocks = sys.getallocatedblocks()
                self._checked = self._collected
                self.full_collections += 1
            else:
                gc.collect(1)
            gc.freeze()
            return full

    def keep(self, stop: threading.Event, every: float = 2.0) -> None:
        """`settle()` every `every` seconds until `stop` is set (in a thread of its own)."""
        with self._lock:
            self._keepers += 1
        try:
            while not stop.wait(every):
                self.settle()
        finally:
            with self._lock:
                self._keepers -= 1
                if self._keepers == 0:
                    gc.unfreeze()  # nobody settles any more: the collector sees everything again


HEAP = Heap()

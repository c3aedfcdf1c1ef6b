"""How soon a thread that waits gets the interpreter, and the CPU, while long work runs.

CPython hands its lock to a thread that asks for it only after the switch interval (5 ms
by default) when the holder computes without pause. The API's event loop asks for it at
every socket read and write: behind a controller pass (0.1-0.3 s at 150,000 pods) or a
status view's rebuild, each of those waited up to 5 ms, and an agent's heartbeat, answered
in 0.15 ms, took 5-40 ms. While such work runs, `quick_handover()` makes the interval
0.5 ms. The interval is the process's: the first holder sets it, the last one gives the
one from before back, whatever order they end in.

The kernel, likewise, lets a task that wakes wait until the one running has used its
slice (Linux's EEVDF scheduler: 0.7 ms times 1 + log2 of the CPUs, 1.4 ms on 2 CPUs)
unless the woken one asked for a shorter slice. At 5,000 nodes on 2 CPUs, perf's
scheduler trace showed the API's event loop woken by an agent's call and left waiting
1-4 ms, twice a second, behind a controller pass or another process's work on both CPUs.
`short_slice()` asks, for the calling thread, the shortest slice the kernel grants
(`sched_setattr` with a runtime, Linux 6.12 and later; older kernels take the call and
change nothing): such a thread is run as soon as it wakes, ahead of tasks with the default
slice, and its share of the CPU is the same as theirs. The server's event loop asks it
(`gitops.server`); threads it starts inherit it, and those doing background work give it
back (`default_slice()`). Python has no call for this, hence the system call through
ctypes; util-linux's `chrt -T` makes the same one from a process of its own.

A short slice is not enough when the task running on the woken loop's CPU is the server's
own background work: EEVDF preempts it only while the loop has not used more than its share
of the CPU, and an event loop answering 500 calls a second often has (perf's scheduler
trace at 5,000 nodes: the loop waited 1.6-2.6 ms behind the agents' watch reading the store
and behind a worker's flush). A server's background threads therefore also run
`BACKGROUND_NICE` nicer than the process (`background()`): the agents' watch, the status
view's rebuild, the controller's passes, the sources' syncs, the previews, and the
heartbeats' flush and the tokens' reading, which the event loop hands to the process's
background pool (`in_background`) rather than to the worker threads that answer calls. The kernel
weighs such a thread at a tenth of the loop, so the loop that wakes beside it runs at once,
and the thread still has the CPU whenever the loop does not want it (on an idle core it
runs as fast as before). The heap keeper and the lease's thread keep the process's value:
the keeper's collections hold the interpreter in C, where no other thread can take it
until they end, and a lease renewed late is a leader lost. Raising a thread's nice value
cannot be undone without privilege, so only threads that do nothing else ask for it; a
node agent's own loops do not (the node's pods, at the normal value, would starve them).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import platform
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

import structlog

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

HANDOVER = 0.0005  # seconds: the switch interval while long work runs
SHORT_SLICE_NS = 100_000  # the shortest slice Linux grants a normal task (0.1 ms)
# How much nicer than the process a server's background threads run (`background()`): a
# weight of a tenth of the event loop's (110 against 1,024 in Linux's table).
BACKGROUND_NICE = 10
# `sched_setattr`'s number by machine (Linux's own tables); elsewhere not asked.
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}.get(platform.machine())


class _SchedAttr(ctypes.Structure):
    """Linux's `struct sched_attr` (its first version, 56 bytes)."""

    _fields_ = (
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
        ("sched_util_min", ctypes.c_uint32),
        ("sched_util_max", ctypes.c_uint32),
    )


_refused: list[str] = []  # why the kernel refused a slice, once said
_nice_refused: list[str] = []  # why it refused a nicer value, once said


def _set_slice(runtime_ns: int) -> bool:
    """Ask the kernel for the calling thread's slice (0: the default), keeping its policy
    and nice value (one a user gave the process, `chrt --batch` or `--idle`, `nice`, stays);
    whether the kernel took the call. A thread of a real-time policy, whose slices are not
    the fair scheduler's, is left as it is."""
    if sys.platform != "linux" or _SCHED_SETATTR is None:
        return False
    policy = os.sched_getscheduler(0)  # (the calling thread's: its id is 0 here)
    if policy not in (os.SCHED_OTHER, os.SCHED_BATCH, os.SCHED_IDLE):
        return False
    attr = _SchedAttr(
        size=ctypes.sizeof(_SchedAttr),
        sched_policy=policy,
        sched_nice=os.getpriority(os.PRIO_PROCESS, 0),
        sched_runtime=runtime_ns,
    )
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SCHED_SETATTR, 0, ctypes.byref(attr), 0) != 0:
        error = os.strerror(ctypes.get_errno())
        if not _refused:  # (every thread that starts asks: said once)
            _refused.append(error)
            log.info("handover.slice_refused", error=error)
        return False
    return True


def short_slice() -> bool:
    """Have the calling thread run as soon as it wakes (see the module docstring)."""
    return _set_slice(SHORT_SLICE_NS)


def default_slice() -> bool:
    """Give the calling thread the kernel's default slice back (work that may wait)."""
    return _set_slice(0)


def background() -> None:
    """The calling thread does a server's background work (see the module docstring): the
    default slice, at `BACKGROUND_NICE` above the process's nice value (at most 19, and
    never lower than the thread has). For a thread that does nothing else: unprivileged, it
    cannot be given back."""
    if sys.platform == "linux":
        try:
            # (On Linux, the first is the main thread's, the process's as it was started;
            # the second the calling thread's own.)
            target = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + BACKGROUND_NICE)
            if os.getpriority(os.PRIO_PROCESS, 0) < target:
                os.setpriority(os.PRIO_PROCESS, 0, target)
        except OSError as exc:  # (a sandbox that forbids it: the thread runs as it was)
            if not _nice_refused:
                _nice_refused.append(str(exc))
                log.info("handover.nice_refused", error=str(exc))
    default_slice()  # (keeps the nice value it has now)


# The threads a server's event loop hands background work to (`in_background`): the
# heartbeats' flush, every second at thousands of nodes, and the nodes' tokens read again.
# The worker threads that answer calls inherit the loop's short slice and its nice value;
# the flush in one of them held a CPU the woken loop waited for, 1-3.6 ms at a time (perf's
# scheduler trace at 5,000 nodes: 7 of the loop's 12 waits over 1 ms in 15 s). One pool for
# the process, its threads made when first needed and idle between (two: a flush waiting
# for one database does not hold another's).
BACKGROUND_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="background", initializer=background)


def in_background(work: Callable[[], _T]) -> asyncio.Future[_T]:
    """`work` run in `BACKGROUND_POOL`, as a future of the running event loop: nicer than
    the worker threads that answer calls, so that the loop goes first."""
    return asyncio.get_running_loop().run_in_executor(BACKGROUND_POOL, work)


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

    def usual(self) -> float:
        """The interval outside every holder's block: the one the last holder gives back."""
        with self._lock:
            return self._before if self._holders else sys.getswitchinterval()


_INTERVAL = _Interval()


def usual_switch_interval() -> float:
    """The process's switch interval outside every `quick_handover` block (another thread
    may be in one now)."""
    return _INTERVAL.usual()


def quick_handover(interval: float = HANDOVER) -> AbstractContextManager[None]:
    """The switch interval at most `interval` while the block runs."""
    return _INTERVAL.short(interval)

"""One way to run a background loop: a step at an interval and on demand, errors decided once.

The controller, each source's sync, the branch previews and the node agent all run this
way. A `Loop` calls its `step` every `interval` seconds, or at once when `trigger()`ed
(any number of triggers during a step cause one more step, not a pile of them). The step
re-reads what it acts on each time (level-triggered), so it never needs to know why it
was woken. A loop may run each step within a context (`around`): the leader's loops run
theirs fenced by its lease, so a step that finds the lease gone fails before it writes.

What the step raises decides what happens next:

- `Terminal`: an error retrying cannot fix (an invalid revision, a full address range).
  The step has recorded it where people look (a rejected revision, an event); the loop
  logs it once and carries on at its normal pace.
- one of the loop's `fatal` exceptions ends the loop: `run()` raises it (a node agent
  whose name is held by another live node has nothing to do but exit).
- `Ended` ends the loop quietly, as a stop would: its work is no longer this process's
  to do (a control plane that lost the leader's lease, `gitops.store.lease.NotLeader`).
- anything else is transient (a locked database, an unreachable git server or Docker
  engine): the loop retries with exponential backoff and jitter (`Backoff`), logging each
  failure with the delay, and returns to its interval after the next success.

Loops share one interpreter with the API: `Precedence` lets one of them (the controller
writing thousands of pods) go first, while the callers that would compete with it wait.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass

import structlog

from gitops.handover import background, default_slice
from gitops.health import Health

log = structlog.get_logger(__name__)


class Terminal(Exception):
    """An error the step has recorded and that retrying cannot fix."""


class Ended(Exception):
    """The loop's work is no longer this process's to do: the loop ends without an error."""


@dataclass(frozen=True)
class Backoff:
    """Delays after consecutive failures: `first`, doubling up to `cap`, each scaled by a
    random factor in [1 - jitter, 1 + jitter] so that many loops do not retry in step."""

    first: float = 1.0
    cap: float = 30.0
    jitter: float = 0.2

    def delay(self, failures: int, rand: float) -> float:
        base = min(self.first * 2.0 ** max(0, failures - 1), self.cap)
        return base * (1.0 - self.jitter + 2.0 * self.jitter * rand)


@dataclass
class Cadence:
    """Something due every `period` seconds at a phase of its own (monotonic time). Done
    when due, late, or less than half a period early (a call for another reason serves as
    the heartbeat), the next is due at the next point of its phase; done earlier, it stays
    due when it was. Counting each period from the last time it was done instead, every
    agent that called at one moment (a control plane back from a restart, a move every
    agent synced for) would call at one moment from then on: at 5,000 nodes, one burst of
    5,000 heartbeats each period. `starting` draws the phase at random."""

    period: float
    due: float

    @classmethod
    def starting(cls, period: float, now: float, rand: Callable[[], float] = random.random) -> Cadence:
        return cls(period, now + rand() * period)

    def is_due(self, now: float) -> bool:
        return now >= self.due

    def done(self, now: float) -> None:
        """It was done at `now`: if it was due within half a period, the next is due one
        period on (or at the next point of its phase after `now`, if it was late by more
        than a period). At most one and a half periods pass between two times it is done."""
        if now >= self.due - self.period / 2:
            self.due += self.period * (1 + max(0.0, now - self.due) // self.period)

    def until(self, now: float) -> float:
        """Seconds from `now` until it is due next (it is taken as done at `now` if due)."""
        self.done(now)
        return self.due - now

    def every(self, period: float, now: float) -> None:
        """Keep it every `period` seconds from now on: due within one of them."""
        if period != self.period:
            self.period, self.due = period, min(self.due, now + period)


class Loop:
    """Runs `step` in a thread of its own (see the module docstring)."""

    def __init__(
        self,
        name: str,
        step: Callable[[], object],
        *,
        interval: float | Callable[[], float],
        backoff: Backoff = Backoff(),
        rand: Callable[[], float] = random.random,
        stop: threading.Event | None = None,
        fatal: tuple[type[BaseException], ...] = (),
        health: Health | None = None,
        component: str = "",
        around: Callable[[], AbstractContextManager[object]] | None = None,
        background: bool = False,
        **context: object,
    ) -> None:
        self.name = name
        self.step = step
        self._interval = interval
        self.backoff = backoff
        self.rand = rand
        self.context = context
        self.fatal = fatal
        self.health = health
        self.component = component or name
        self.around = around  # what each step runs within (a leader's fence: gitops.store.lease)
        # A control plane's background work (its controller, syncs, previews): run nicer than
        # the API's event loop (`gitops.handover.background`); a node agent's loop is not.
        self.background = background
        self.error: BaseException | None = None  # the fatal error that ended the loop
        self.failures = 0
        self.last_error = ""
        self._wake = threading.Event()
        self._stop = stop or threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval(self) -> float:
        return self._interval() if callable(self._interval) else self._interval

    def trigger(self) -> None:
        self._wake.set()

    def once(self) -> float:
        """Run the step once; the delay before the next one."""
        self._wake.clear()
        try:
            if self.around is None:
                self.step()
            else:
                with self.around():
                    self.step()
        except Ended:
            raise
        except self.fatal:
            raise
        except Terminal as exc:
            self.failures = 0
            self.last_error = str(exc)
            log.error(f"{self.name}.terminal", error=str(exc), **self.context)
            if self.health is not None:
                self.health.fail(self.component, str(exc))
            return self.interval
        except Exception as exc:
            self.failures += 1
            self.last_error = str(exc) or type(exc).__name__
            delay = self.backoff.delay(self.failures, self.rand())
            log.warning(
                f"{self.name}.failed",
                error=self.last_error,
                failures=self.failures,
                retry_in=round(delay, 2),
                exc_info=self.failures == 1,  # the traceback once; repeats are one line
                **self.context,
            )
            if self.health is not None:
                self.health.fail(self.component, self.last_error)
            return delay
        self.failures = 0
        self.last_error = ""
        if self.health is not None:
            self.health.ok(self.component)
        return self.interval

    def run(self) -> None:
        """Step until stopped, in the calling thread; raises a fatal error."""
        while not self._stop.is_set():
            try:
                delay = self.once()
            except Ended as exc:
                log.info(f"{self.name}.ended", reason=str(exc), **self.context)
                self._stop.set()
                return
            except self.fatal as exc:
                self.error = exc
                self._stop.set()
                raise
            if self._stop.is_set():
                break
            self._wake.wait(delay)

    def _run_in_thread(self) -> None:
        # A loop is background work (a controller pass, a source's sync): the kernel's default
        # slice, whichever thread started it, and a control plane's nicer than its API
        # (`gitops.handover`).
        if self.background:
            background()
        else:
            default_slice()
        try:
            self.run()
        except self.fatal as exc:
            log.error(f"{self.name}.stopped", error=str(exc), **self.context)

    @property
    def alive(self) -> bool:
        """Whether the loop's thread runs (a stopped loop's until its step ends)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def ended(self) -> bool:
        """Whether the loop was started and its thread has ended (stopped, `Ended`, fatal)."""
        return self._thread is not None and not self._thread.is_alive()

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self._run_in_thread, name=self.name, daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)


class Precedence:
    """Work that others make way for. While a holder runs (`held`), `wait` blocks its
    callers until it ends, each at most the `timeout` it gives; with no holder, `wait`
    returns at once.

    One interpreter runs every thread of the server, one at a time: while the controller
    decided and wrote a pass that creates and binds 150,000 pods, the agents' sync calls
    (reporting the first of those pods Running, reading the rows it had just written) took
    much of that one core, and binding them all took 68-103 s against 16-21 s for the pass
    alone. The controller holds its precedence over the calls while it decides the first
    pass of a new revision and while it writes a pass of many pod changes; calls that would
    read or write the store wait for it, within their caller's patience (as Kubernetes' API
    Priority and Fairness gives the scheduler's binding a priority level of its own beside
    the kubelets' status updates)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._free = threading.Event()
        self._free.set()
        self._paused: dict[asyncio.Future[None], asyncio.AbstractEventLoop] = {}  # `pause`s waiting
        self.waited = 0.0  # seconds callers have waited in all (for figures and tests)

    @property
    def holding(self) -> bool:
        return not self._free.is_set()

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            self._holders += 1
            self._free.clear()
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                paused: dict[asyncio.Future[None], asyncio.AbstractEventLoop] = {}
                if not self._holders:
                    self._free.set()
                    paused, self._paused = self._paused, {}
            for future, loop in paused.items():
                with suppress(RuntimeError):  # its event loop is closed: no one waits there
                    loop.call_soon_threadsafe(_release, future)

    def wait(self, timeout: float) -> bool:
        """Wait until no one holds precedence, at most `timeout` seconds; whether it is free."""
        if self._free.is_set():
            return True
        began = time.monotonic()
        free = self._free.wait(timeout)
        with self._lock:
            self.waited += time.monotonic() - began
        return free

    async def pause(self, timeout: float) -> bool:
        """`wait`, for a coroutine: its event loop goes on meanwhile, and no thread waits."""
        if self._free.is_set():
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if not self._holders:
                return True
            self._paused[future] = loop
        began = time.monotonic()
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self.waited += time.monotonic() - began
                self._paused.pop(future, None)


def _release(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

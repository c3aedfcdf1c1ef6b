"""Background loops share one helper: transient errors back off with jitter and recover,
terminal errors are logged once per step and never slow the loop down, triggers coalesce."""

from __future__ import annotations

import asyncio
import threading
import time

from structlog.testing import capture_logs

from gitops.loop import Backoff, Ended, Loop, Precedence, Terminal
from tests.conftest import wait_for


def test_backoff_doubles_to_its_cap_with_bounded_jitter() -> None:
    backoff = Backoff(first=1.0, cap=30.0, jitter=0.2)
    assert [backoff.delay(n, 0.5) for n in (1, 2, 3, 4, 5, 6, 7)] == [1, 2, 4, 8, 16, 30, 30]
    assert round(backoff.delay(3, 0.0), 9) == 3.2 and round(backoff.delay(3, 1.0), 9) == 4.8


def test_transient_errors_back_off_and_a_success_returns_to_the_interval() -> None:
    outcomes = [OSError("database is locked"), OSError("database is locked"), None]

    def step() -> None:
        error = outcomes.pop(0)
        if error is not None:
            raise error

    loop = Loop("test", step, interval=5.0, backoff=Backoff(first=1.0, cap=8.0, jitter=0.0))
    with capture_logs() as logs:
        delays = [loop.once(), loop.once(), loop.once()]
    assert delays == [1.0, 2.0, 5.0]
    failed = [e for e in logs if e["event"] == "test.failed"]
    assert [e["failures"] for e in failed] == [1, 2]
    assert failed[0]["error"] == "database is locked" and failed[1]["retry_in"] == 2.0
    assert loop.failures == 0 and loop.last_error == ""


def test_a_terminal_error_is_logged_and_the_loop_keeps_its_pace() -> None:
    def step() -> None:
        raise Terminal("service range 10.0.0.0/29 is exhausted")

    loop = Loop("test", step, interval=5.0, backoff=Backoff(first=1.0, cap=8.0, jitter=0.0))
    with capture_logs() as logs:
        assert [loop.once(), loop.once(), loop.once()] == [5.0, 5.0, 5.0]
    assert loop.failures == 0 and loop.last_error.startswith("service range")
    assert [e["log_level"] for e in logs] == ["error"] * 3


def test_triggers_during_a_step_cause_one_more_step_not_a_pile() -> None:
    started = threading.Event()
    release = threading.Event()
    steps: list[float] = []

    def step() -> None:
        steps.append(time.monotonic())
        started.set()
        release.wait(5)

    loop = Loop("test", step, interval=3600.0)
    loop.start()
    try:
        wait_for(started.is_set, timeout=5, what="the first step")
        for _ in range(20):
            loop.trigger()
        release.set()
        wait_for(lambda: len(steps) >= 2, timeout=5, what="the triggered step")
        time.sleep(0.3)
        assert len(steps) == 2
    finally:
        loop.stop()


def test_a_step_that_raises_ended_ends_the_loop_quietly() -> None:
    steps: list[int] = []

    def step() -> None:
        steps.append(1)
        raise Ended("no longer ours")

    loop = Loop("ending", step, interval=0.01)
    loop.run()  # returns: no error raised, no retry
    assert steps == [1]
    assert loop.error is None and loop.failures == 0


def test_precedence_makes_waiters_wait_until_every_holder_is_done_or_their_patience_ends() -> None:
    precedence = Precedence()
    assert precedence.wait(0.0) and not precedence.holding  # free: at once
    waited: list[tuple[bool, float]] = []

    def waiter(patience: float) -> None:
        began = time.monotonic()
        waited.append((precedence.wait(patience), time.monotonic() - began))

    first, second = precedence.held(), precedence.held()
    first.__enter__()
    second.__enter__()
    assert precedence.holding
    impatient = threading.Thread(target=waiter, args=(0.05,))
    impatient.start()
    impatient.join(5)
    assert waited == [(False, waited[0][1])] and 0.05 <= waited[0][1] < 1.0  # gave up, still held
    patient = threading.Thread(target=waiter, args=(30.0,))
    patient.start()
    first.__exit__(None, None, None)
    time.sleep(0.1)
    assert patient.is_alive()  # one holder still holds it
    second.__exit__(None, None, None)
    patient.join(5)
    assert not patient.is_alive() and waited[1][0] and waited[1][1] < 5
    assert not precedence.holding


def test_a_paused_coroutine_leaves_its_event_loop_running_and_goes_on_when_precedence_is_given_back() -> None:
    precedence = Precedence()

    async def scenario() -> tuple[bool, bool, bool, int]:
        assert await precedence.pause(0.0)  # free: at once
        holding = precedence.held()
        holding.__enter__()
        paused = asyncio.ensure_future(precedence.pause(30.0))
        gave_up = await precedence.pause(0.05)  # patience ends first
        ticks = 0
        for _ in range(5):  # the loop goes on while `paused` waits
            await asyncio.sleep(0.01)
            ticks += 1
        still = not paused.done()
        threading.Thread(target=holding.__exit__, args=(None, None, None)).start()  # given back elsewhere
        return gave_up, still, await asyncio.wait_for(paused, 5), ticks

    assert asyncio.run(scenario()) == (False, True, True, 5)
    assert not precedence.holding and precedence.waited > 0.05


def test_a_control_planes_loop_runs_nicer_than_the_process_and_an_agents_does_not() -> None:
    """`background=True` (the controller, syncs, previews) asks `gitops.handover.background`;
    a node agent's loop keeps the process's nice value (its node's pods would starve it)."""
    import os

    from gitops.handover import BACKGROUND_NICE

    seen: dict[str, int] = {}
    stop = threading.Event()

    def stepping(name: str) -> Loop:
        def step() -> None:
            seen[name] = os.getpriority(os.PRIO_PROCESS, 0)  # (the loop's thread's own)
            stop.set()

        return Loop(name, step, interval=3600, background=name == "controller")

    process = os.getpriority(os.PRIO_PROCESS, 0)
    for name in ("controller", "agent"):
        stop.clear()
        loop = stepping(name)
        loop.start()
        assert stop.wait(10)
        loop.stop()
    assert seen == {"controller": process + BACKGROUND_NICE, "agent": process}

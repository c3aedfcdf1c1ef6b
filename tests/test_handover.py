"""While long work runs in a thread, a thread that waits for the interpreter gets it within
0.5 ms (`gitops.handover`); the interval from before comes back when the last holder ends."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitops import controller
from gitops.handover import HANDOVER, quick_handover, usual_switch_interval
from gitops.model import Node, NodeName, Revision
from gitops.server import ControlPlane
from gitops.store import Store
from tests.api.test_quick_lane import plane  # noqa: F401 - the fixture: a control plane serving
from tests.planner.factories import deployment


@pytest.fixture(autouse=True)
def interval() -> Iterator[float]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield 0.005
    sys.setswitchinterval(before)


def test_overlapping_holders_keep_it_short_and_the_last_gives_it_back() -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, float] = {}

    def first() -> None:
        with quick_handover():
            first_in.set()
            second_in.wait(5)
        seen["first ended"] = sys.getswitchinterval()
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with quick_handover():
            second_in.set()
            first_out.wait(5)
            seen["second, alone"] = sys.getswitchinterval()
        seen["second ended"] = sys.getswitchinterval()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    # The first holder ended first: the second still holds it short; then it is back.
    assert seen == {"first ended": HANDOVER, "second, alone": HANDOVER, "second ended": 0.005}


def test_the_usual_interval_is_the_one_outside_every_holders_block() -> None:
    assert usual_switch_interval() == 0.005
    with quick_handover():
        assert sys.getswitchinterval() == HANDOVER
        assert usual_switch_interval() == 0.005  # (what the last holder gives back)
    assert usual_switch_interval() == 0.005


def test_a_holder_asking_for_less_gets_less_and_nesting_gives_back_the_first() -> None:
    with quick_handover():
        with quick_handover(0.0001):
            assert sys.getswitchinterval() == pytest.approx(0.0001)
        assert sys.getswitchinterval() == pytest.approx(0.0001)  # never lengthened while held
    assert sys.getswitchinterval() == 0.005


def test_a_controller_pass_decides_with_the_quick_handover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 64000, 256 * 2**30), "t", now=100.0)
    store.apply_revision(Revision("git:x", "a" * 40), [deployment("web", replicas=2)], [], now=100.0)
    ctl = controller.Controller(store, interval=3600, clock=lambda: 101.0)
    during: list[float] = []
    real = controller.reconcile_once

    def spy(*args: Any, **kwargs: Any) -> controller.PassResult:
        during.append(sys.getswitchinterval())
        return real(*args, **kwargs)

    monkeypatch.setattr(controller, "reconcile_once", spy)
    ctl._pass()
    assert during == [HANDOVER] and sys.getswitchinterval() == 0.005
    assert len(store.pods()) == 2


def _slice_ns(tid: int = 0) -> int:
    """A thread's slice as the kernel keeps it (`sched_getattr`'s runtime; 0: the caller)."""
    import ctypes

    from gitops import handover

    attr = handover._SchedAttr()
    libc = ctypes.CDLL(None, use_errno=True)
    number = handover._SCHED_SETATTR + 1  # sched_getattr follows it on every machine Linux numbers so
    assert libc.syscall(number, tid, ctypes.byref(attr), ctypes.sizeof(attr), 0) == 0
    return int(attr.sched_runtime)


def _custom_slices() -> bool:
    """Whether this kernel keeps a slice a normal task asks for (Linux 6.12 and later)."""
    import platform

    from gitops import handover

    if sys.platform != "linux" or handover._SCHED_SETATTR is None:
        return False
    major, minor = (int(part) for part in platform.release().split(".")[:2])
    return (major, minor) >= (6, 12)


slices = pytest.mark.skipif(not _custom_slices(), reason="the kernel keeps no slice a normal task asks for")


@slices
def test_a_thread_asking_for_a_short_slice_gets_it_and_its_default_back_and_others_keep_theirs() -> None:
    from gitops.handover import SHORT_SLICE_NS, default_slice, short_slice

    seen: dict[str, int] = {}

    def ask() -> None:
        before = _slice_ns()
        assert short_slice()
        seen["short"] = _slice_ns()
        seen["main meanwhile"] = _slice_ns(threading.main_thread().native_id or 0)
        assert default_slice()
        seen["given back"] = _slice_ns()
        seen["before"] = before

    thread = threading.Thread(target=ask)
    thread.start()
    thread.join()
    assert seen["short"] == SHORT_SLICE_NS
    assert seen["given back"] == seen["before"] == seen["main meanwhile"] > SHORT_SLICE_NS


@slices
def test_asking_for_a_slice_keeps_the_policy_and_the_nice_value_the_thread_had() -> None:
    """A process a user started at the batch or idle policy, or niced, stays so: only the
    slice changes (at the batch policy; the kernel keeps none for an idle one)."""
    import os

    from gitops.handover import SHORT_SLICE_NS, default_slice, short_slice

    seen: list[tuple[int, int, int]] = []

    def ask(policy: int) -> None:
        os.sched_setscheduler(0, policy, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, 0, 7)  # (this thread's)
        assert short_slice()
        seen.append((os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0), _slice_ns()))
        assert default_slice()
        seen.append((os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0), _slice_ns()))

    for policy in (os.SCHED_BATCH, os.SCHED_IDLE):
        thread = threading.Thread(target=ask, args=(policy,))
        thread.start()
        thread.join()
    batch, idle = os.SCHED_BATCH, os.SCHED_IDLE
    assert seen[0] == (batch, 7, SHORT_SLICE_NS)
    assert seen[1][:2] == (batch, 7) and seen[1][2] > SHORT_SLICE_NS
    assert seen[2][:2] == seen[3][:2] == (idle, 7)


def _nice(tid: int = 0) -> int:
    """A thread's nice value (Linux: `getpriority` of a thread's id is the thread's own)."""
    import os

    return os.getpriority(os.PRIO_PROCESS, tid)


@pytest.mark.skipif(sys.platform != "linux", reason="a nice value per thread is Linux's")
def test_a_background_thread_runs_nicer_than_the_process_once_and_the_others_keep_theirs() -> None:
    from gitops.handover import BACKGROUND_NICE, background

    process = _nice(threading.main_thread().native_id or 0)
    seen: dict[str, int] = {}

    def work() -> None:
        seen["before"] = _nice()
        background()
        seen["background"] = _nice()
        background()  # (asked again: not nicer still)
        seen["again"] = _nice()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    niced = process + BACKGROUND_NICE
    assert seen == {"before": process, "background": niced, "again": niced}
    assert _nice(threading.main_thread().native_id or 0) == process
    assert _nice() == process  # (the test's own thread is the main one)


@pytest.mark.skipif(sys.platform != "linux", reason="a nice value per thread is Linux's")
def test_a_background_thread_of_a_niced_process_goes_no_further_than_19() -> None:
    """A server a user started at nice 15 has its background threads at 19, its loop at 15
    (in a process of its own: this one's nice value cannot be given back)."""
    import subprocess

    code = (
        "import os, threading\n"
        "from gitops.handover import background\n"
        "os.nice(15)\n"
        "seen = []\n"
        "def work():\n"
        "    background()\n"
        "    seen.append(os.getpriority(os.PRIO_PROCESS, 0))\n"
        "t = threading.Thread(target=work); t.start(); t.join()\n"
        "print(seen[0], os.getpriority(os.PRIO_PROCESS, 0))\n"
    )
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["19", "15"]


@slices
def test_the_servers_event_loop_runs_with_the_short_slice_and_its_background_threads_do_not(
    plane: ControlPlane,  # noqa: F811 - the fixture imported above
) -> None:
    """The API's event loop asks for the short slice; the controller's loop and the agents'
    watch thread, though the event loop's thread may start them, run with the default one
    and nicer than the process (their work can wait; the calls the loop answers cannot);
    the heap keeper and the lease's thread at the process's nice value."""
    import socket

    from gitops.handover import BACKGROUND_NICE, SHORT_SLICE_NS
    from tests.api.test_agent_sync_server import register
    from tests.api.test_agent_watch import sync
    from tests.api.test_quick_lane import Reader, watching

    token = register(plane.url, plane.join_token)
    held = sync(plane, token)
    with socket.create_connection(("127.0.0.1", plane.port), timeout=10) as conn:
        conn.sendall(watching(plane, token, held, 0.5))  # the watch thread starts
        assert Reader(conn).response()[0] == 200
    by_name = {t.name: t.native_id or 0 for t in threading.enumerate()}
    assert _slice_ns(by_name["http"]) == SHORT_SLICE_NS
    assert _slice_ns(by_name["agent-watch"]) > SHORT_SLICE_NS
    assert plane.controller is not None
    controller_thread = plane.controller.loop._thread
    assert controller_thread is not None and controller_thread.native_id is not None
    assert _slice_ns(controller_thread.native_id) > SHORT_SLICE_NS
    process = _nice(threading.main_thread().native_id or 0)
    assert _nice(by_name["http"]) == _nice(by_name["heap"]) == _nice(by_name["lease"]) == process
    assert _nice(by_name["agent-watch"]) == _nice(controller_thread.native_id) == process + BACKGROUND_NICE

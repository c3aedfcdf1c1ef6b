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
from gitops.handover import HANDOVER, quick_handover
from gitops.model import Node, NodeName, Revision
from gitops.store import Store
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

"""The collector policy of a control plane (`gitops.heap`): what lives long is frozen out of
full collections, cyclic garbage is still found by the full collection due, and the
collector's time is counted."""

from __future__ import annotations

import gc
import re
import sys
import threading
import time
import weakref
from collections.abc import Iterator

import pytest

from gitops.heap import Heap


class Cyclic:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def heap() -> Iterator[Heap]:
    heap = Heap(full_every=3600.0, idle_every=60.0, growth=100.0)
    yield heap
    gc.unfreeze()


def test_a_settle_freezes_what_lives_so_collections_do_not_walk_it(heap: Heap) -> None:
    kept = [[i] for i in range(50_000)]  # a state held long: 50,000 tracked lists
    assert not heap.settle()
    assert gc.get_freeze_count() >= len(kept)
    # The collector's generations, which every collection walks, no longer hold them.
    tracked = {id(o) for o in gc.get_objects()}
    assert not any(id(item) in tracked for item in kept)
    gc.unfreeze()
    tracked = {id(o) for o in gc.get_objects()}
    assert all(id(item) in tracked for item in kept)


def test_cyclic_garbage_frozen_is_found_by_the_full_collection_due(heap: Heap) -> None:
    cycle = Cyclic()
    gone = weakref.ref(cycle)
    heap.settle()  # frozen while alive
    del cycle
    gc.collect()
    assert gone() is not None  # frozen: the collector does not see it
    heap.settle()  # no full collection due yet
    assert gone() is not None
    heap.full_every = 0.0
    assert heap.settle()
    assert gone() is None
    assert gc.get_freeze_count() > 0  # what is left is frozen again


def test_young_garbage_goes_before_the_freeze(heap: Heap) -> None:
    cycle = Cyclic()
    gone = weakref.ref(cycle)
    del cycle
    heap.settle()
    assert gone() is None


def test_a_full_collection_comes_sooner_when_idle_and_at_once_when_the_state_shrank(heap: Heap) -> None:
    heap.idle_every = 0.0
    assert not heap.settle()  # busy: the hour is not up
    assert heap.settle(idle=True)
    heap.idle_every = 3600.0
    assert not heap.settle(idle=True)
    assert heap.settle(shrank=True)
    assert heap.full_collections == 2


def test_keep_settles_until_stopped_and_the_last_keeper_unfreezes(heap: Heap) -> None:
    stop = threading.Event()
    keeper = threading.Thread(target=heap.keep, args=(stop,), kwargs={"every": 0.01})
    kept = [[i] for i in range(1000)]
    keeper.start()
    deadline = time.monotonic() + 5
    while gc.get_freeze_count() < len(kept) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gc.get_freeze_count() >= len(kept)
    stop.set()
    keeper.join(5)
    assert gc.get_freeze_count() == 0


def test_the_collectors_time_is_counted_by_generation(heap: Heap) -> None:
    heap.count_time()
    heap.count_time()  # once: one callback
    assert sum(1 for c in gc.callbacks if getattr(c, "__self__", None) is heap) == 1
    gc.collect(0)
    gc.collect()
    assert heap.seconds[0] > 0 and heap.seconds[2] > 0
    gc.callbacks.remove(heap._timed)


def test_a_full_collection_waits_for_the_objects_to_grow_not_for_the_clock() -> None:
    # A full collection walks everything: at 150,000 pods it held every agent's call for
    # 2.8 s, and came every 10 minutes whether anything had grown or not.
    heap = Heap()
    try:
        heap.settle()
        heap._collected -= 3600.0  # an hour on, nothing grew
        assert not heap.settle()
        grown = [[i] for i in range(int(sys.getallocatedblocks() * heap.growth) + 1)]
        # Counting them walks the allocator's every pool (2 ms at 1 GiB): not at every settle.
        assert not heap.settle()
        heap._checked -= heap.check_every
        assert heap.settle()  # grew by half: due
        assert not heap.settle()  # counted from the objects alive after it
        heap._collected -= heap.full_every  # the backstop, for garbage that holds little memory
        assert heap.settle()
        assert heap.full_collections == 2
        del grown
    finally:
        gc.unfreeze()


def _sample(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


def test_the_collectors_pauses_are_at_metrics_by_generation() -> None:
    from prometheus_client import generate_latest

    from gitops.heap import HEAP
    from gitops.metrics import Metrics

    HEAP.count_time()
    before = HEAP.collections[2]
    cycle = Cyclic()
    del cycle
    gc.collect()
    text = generate_latest(Metrics().registry).decode()
    count = _sample(text, 'gitops_gc_pause_seconds_count{generation="2"}')
    assert count == HEAP.collections[2] > before
    assert _sample(text, 'gitops_gc_pause_seconds_bucket{generation="2",le="+Inf"}') == count
    assert _sample(text, 'gitops_gc_collected_objects_total{generation="2"}') >= 1  # the cycle

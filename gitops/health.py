"""What is failing in this control plane right now, so that nothing is shown as current when
it is not.

Each background loop (the controller, every source's sync, the branch previews) and the
status view report here when a step fails and when it succeeds again (`gitops.loop`). The
page, `/api/v1/status`, `gitops status` and `/metrics` show the failures with since when:
a control plane that cannot write its database says so, instead of serving the last state
it could read as if it were current.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    component: str  # "controller", "sync dir:/srv/manifests", "status view", ...
    error: str
    since: float  # when it started failing
    failures: int  # consecutive failed attempts


class Health:
    """The current problems of one control plane, thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._problems: dict[str, Problem] = {}
        self._lock = threading.Lock()

    def fail(self, component: str, error: str) -> None:
        with self._lock:
            old = self._problems.get(component)
            since = old.since if old is not None else self.clock()
            failures = old.failures + 1 if old is not None else 1
            self._problems[component] = Problem(component, error[:1000], since, failures)

    def ok(self, component: str) -> None:
        with self._lock:
            self._problems.pop(component, None)

    def problems(self) -> list[Problem]:
        with self._lock:
            return sorted(self._problems.values(), key=lambda p: (p.since, p.component))

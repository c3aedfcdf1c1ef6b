"""Rolling updates keep availability and bound the surge, whatever the readiness timings."""

from __future__ import annotations

import dataclasses

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gitops.model import Manifest, NodeName, Pod
from gitops.planner import plan, rollouts
from gitops.planner.rollout import Strategy, resolve, strategy_of
from tests.planner.factories import deployment

amounts = st.one_of(st.integers(0, 4), st.sampled_from(["0%", "10%", "25%", "50%", "100%"]))


def rolling(replicas: int, image: str, surge: int | str, unavailable: int | str) -> Manifest:
    dep = deployment(replicas=replicas, image=image)
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}
    return dataclasses.replace(dep, body={**dep.body, "spec": {**dep.body["spec"], "strategy": strategy}})


def running(pod: Pod, ready: bool) -> Pod:
    return dataclasses.replace(pod, node=NodeName("n1"), phase="Running", ready=ready)


def simulate(
    new: Manifest, pods: list[Pod], delays: list[int | None], ticks: int
) -> tuple[list[Pod], Strategy]:
    """Run passes; a new pod becomes ready `delay` passes after creation (None: never)."""
    replicas = int(new.spec["replicas"])
    strategy = strategy_of(new.spec, replicas)
    ready_at: dict[str, int | None] = {}
    for tick in range(ticks):
        result = plan([new], pods, now=float(tick))
        stopped = {a.pod.id for a in result.stop}
        pods = [p for p in pods if p.id not in stopped]
        for action in result.create:
            delay = delays[len(ready_at) % len(delays)]
            ready_at[action.pod.id] = None if delay is None else tick + delay
            pods.append(running(action.pod, ready=False))
        assert len(pods) <= replicas + strategy.max_surge
        assert sum(p.ready for p in pods) >= replicas - strategy.max_unavailable
        pods = [running(p, True) if (t := ready_at.get(p.id)) is not None and t <= tick else p for p in pods]
    return pods, strategy


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 8),
    amounts,
    amounts,
    st.lists(st.integers(0, 4), min_size=1, max_size=16),
)
def test_a_rollout_keeps_availability_bounds_surge_and_finishes(
    replicas: int, surge: int | str, unavailable: int | str, delays: list[int]
) -> None:
    assume(resolve(surge, replicas, round_up=True) + resolve(unavailable, replicas, round_up=False) > 0)
    old = rolling(replicas, "web:1", surge, unavailable)
    pods = [running(a.pod, True) for a in plan([old], []).create]
    new = rolling(replicas, "web:2", surge, unavailable)
    final, _ = simulate(new, pods, list(delays), ticks=6 * replicas + 10)
    assert len(final) == replicas
    assert all(p.spec.image == "web:2" and p.ready for p in final)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), amounts, amounts)
def test_a_rollout_whose_pods_never_become_ready_stops_at_max_unavailable(
    replicas: int, surge: int | str, unavailable: int | str
) -> None:
    assume(resolve(surge, replicas, round_up=True) + resolve(unavailable, replicas, round_up=False) > 0)
    old = rolling(replicas, "web:1", surge, unavailable)
    pods = [running(a.pod, True) for a in plan([old], []).create]
    new = rolling(replicas, "web:2", surge, unavailable)
    final, strategy = simulate(new, pods, [None], ticks=3 * replicas + 5)
    serving = [p for p in final if p.ready]
    assert all(p.spec.image == "web:1" for p in serving)
    assert len(serving) >= replicas - strategy.max_unavailable
    assert plan([new], final).empty


def test_percentages_round_like_kubernetes() -> None:
    assert resolve("25%", 10, round_up=True) == 3
    assert resolve("25%", 10, round_up=False) == 2
    assert strategy_of({}, 4) == Strategy("RollingUpdate", 1, 1)
    assert strategy_of({}, 1) == Strategy("RollingUpdate", 1, 0)


def test_rollout_status_counts_updated_ready_and_names_the_step() -> None:
    old = rolling(4, "web:1", 1, 1)
    pods = [running(a.pod, True) for a in plan([old], []).create]
    new = rolling(4, "web:2", 1, 1)
    (before,) = rollouts([new], pods, now=0.0)
    assert (before.desired, before.updated, before.ready, before.complete) == (4, 0, 4, False)
    step = plan([new], pods)
    pods = [p for p in pods if p.id not in {a.pod.id for a in step.stop}]
    pods += [running(a.pod, True) for a in step.create]
    (during,) = rollouts([new], pods, now=0.0)
    assert (during.updated, during.ready, during.total) == (1, 4, 4)
    assert during.step.startswith("rolling out ") and during.step.endswith(
        "(rolling update, surge 1, unavailable 1): 1/4 new pods available, 3 old pod(s) left"
    )
    final, _ = simulate(new, pods, [0], ticks=10)
    (after,) = rollouts([new], final, now=0.0)
    assert after.complete and after.step == f"complete: 4/4 pods on {after.template_hash}"


def test_min_ready_seconds_holds_old_pods_until_new_ones_have_been_ready_long_enough() -> None:
    old = rolling(1, "web:1", 1, 0)
    pods = [running(a.pod, True) for a in plan([old], []).create]
    new = rolling(1, "web:2", 1, 0)
    new = dataclasses.replace(new, body={**new.body, "spec": {**new.body["spec"], "minReadySeconds": 10}})
    (created,) = plan([new], pods, now=0.0).create
    fresh = dataclasses.replace(running(created.pod, True), ready_since=100.0)
    assert plan([new], [*pods, fresh], now=109.0).empty
    (stop,) = plan([new], [*pods, fresh], now=110.0).stop
    assert stop.pod == pods[0]
    (status,) = rollouts([new], [*pods, fresh], now=105.0)
    assert (status.ready, status.available) == (2, 1)


def test_a_complete_rollout_with_nothing_new_keeps_its_state() -> None:
    """Pass after pass on a finished rollout gives the very same state (it used to move
    `progress_at` to the pass's time, so every pass rewrote every Deployment's row)."""
    from gitops.planner.rollout import RolloutStatus, advance

    web = deployment(replicas=2)
    done = RolloutStatus(
        "default/web", "RollingUpdate", "h1", 2, 2, 2, 2, 2, 2, True, "complete: 2/2 pods on h1"
    )
    first = advance(None, web, "h1", done, now=10.0)
    complete = advance(first, web, "h1", done, now=20.0)
    assert complete.status == "complete"
    assert advance(complete, web, "h1", done, now=30.0) == complete
    assert advance(advance(complete, web, "h1", done, now=30.0), web, "h1", done, now=40.0) == complete

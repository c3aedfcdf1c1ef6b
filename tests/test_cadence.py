"""A cadence keeps its phase: done early it stays due when it was, done when due (or less
than half a period early) the next is one period on, done late by periods the next is at
its phase again."""

from __future__ import annotations

from gitops.loop import Cadence


def test_a_cadence_keeps_its_phase_whatever_is_done_between() -> None:
    beat = Cadence.starting(10.0, 100.0, rand=lambda: 0.25)
    assert beat.due == 102.5 and not beat.is_due(102.0)
    beat.done(97.0)  # done early, for a reason of its own
    assert beat.due == 102.5
    beat.done(98.0)  # less than half a period early: it serves as this one
    assert beat.due == 112.5
    beat.done(113.0)  # done when due
    assert beat.due == 122.5
    beat.done(141.0)  # late by nearly two periods: at its phase again
    assert beat.due == 142.5
    assert beat.until(150.0) == 2.5


def test_a_shorter_period_makes_it_due_within_one_of_them() -> None:
    beat = Cadence(30.0, due=130.0)
    beat.every(10.0, now=101.0)
    assert beat.due == 111.0 and beat.period == 10.0
    beat.every(10.0, now=105.0)  # the same period: nothing moves
    assert beat.due == 111.0

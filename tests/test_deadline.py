"""shield.deadline: armed once, re-armed by start, silent once cancelled, on the clock given."""

from __future__ import annotations

from twisted.internet.task import Clock

from shield.deadline import Deadline


def test_a_deadline_fires_once_at_its_time() -> None:
    clock, fired = Clock(), []
    deadline = Deadline(clock)
    deadline.start(10.0, fired.append, "late")
    clock.advance(9.9)
    assert fired == [] and deadline.armed
    clock.advance(0.1)
    assert fired == ["late"] and not deadline.armed
    clock.advance(100)
    assert fired == ["late"]


def test_start_rearms_and_cancel_disarms() -> None:
    clock, fired = Clock(), []
    deadline = Deadline(clock)
    deadline.start(5.0, fired.append, 1)
    clock.advance(4)
    deadline.start(5.0, fired.append, 2)  # the first is replaced, not added
    clock.advance(4)
    assert fired == []
    clock.advance(1)
    assert fired == [2]
    deadline.start(1.0, fired.append, 3)
    deadline.cancel()
    deadline.cancel()  # twice is harmless
    clock.advance(10)
    assert fired == [2] and not clock.getDelayedCalls()

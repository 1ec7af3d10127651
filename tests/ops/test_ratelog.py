"""RateLimitedLog: one line at once, a summary a second later, and nothing kept for quiet peers."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, LogEvent, formatEvent

from shield.ops.ratelog import EVERY, RateLimitedLog


def make() -> tuple[RateLimitedLog, Clock, list[str]]:
    lines: list[str] = []

    def observer(event: LogEvent) -> None:
        lines.append(formatEvent(event))

    clock = Clock()
    return RateLimitedLog(Logger(observer=observer), clock), clock, lines


def test_a_burst_is_one_line_and_a_summary() -> None:
    log, clock, lines = make()
    for n in range(50):
        log.warn("10.0.0.1", f"bad hello {n}")
    assert lines == ["bad hello 0"]
    clock.advance(EVERY)
    assert lines == ["bad hello 0", "49 more like this in the last second (last: bad hello 49)"]
    log.warn("10.0.0.1", "bad hello 50")  # still inside the quiet second after the summary
    clock.advance(EVERY)
    assert lines[-1] == "1 more like this in the last second (last: bad hello 50)"
    clock.advance(EVERY)
    log.warn("10.0.0.1", "later")
    assert lines[-1] == "later"


def test_keys_are_independent() -> None:
    log, clock, lines = make()
    log.warn("a", "from a")
    log.warn("b", "from b")
    log.warn("a", "from a again")
    assert lines == ["from a", "from b"]
    clock.advance(EVERY)
    assert lines[-1] == "1 more like this in the last second (last: from a again)"


def test_quiet_keys_are_forgotten() -> None:
    """Memory follows the peers misbehaving now: 2,000 distinct peers once each leave nothing."""
    log, clock, lines = make()
    for n in range(2_000):
        log.warn(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", f"bad peer {n}")
    assert len(lines) == 2_000 and len(log) == 2_000
    clock.advance(EVERY)
    assert len(log) == 0 and not clock.getDelayedCalls()
    # A key that keeps misbehaving is kept only while it does.
    log.warn("x", "1")
    log.warn("x", "2")
    clock.advance(EVERY)
    assert len(log) == 1
    clock.advance(EVERY)
    assert len(log) == 0

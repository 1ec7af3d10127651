"""Log lines about bad peers that a flood cannot turn into a flood of lines: the one way shield
rate-limits a log line (refused clients, refused streams, bad member links, streams nobody accepts).

The first line for a key is written at once; more for the same key within the next ``every``
seconds are counted and summed up in one line when that time is over (and the key stays quiet
for one more interval). A key is forgotten after an interval in which nothing was logged for it,
so memory follows the peers misbehaving now, not every peer that ever did. ``stop`` says what is
still only counted (a link that goes away) and cancels the timers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

EVERY = 1.0

#: (key, how many more, the last of them, every) -> the summary line.
Summary = Callable[[Hashable, int, str, float], str]


def more_like_this(key: Hashable, more: int, last: str, every: float) -> str:
    span = "second" if every == 1.0 else f"{every:g} s"
    return f"{more} more like this in the last {span} (last: {last})"


@dataclass
class _Quiet:
    more: int
    last: str
    fields: dict[str, Any]
    timer: IDelayedCall


class RateLimitedLog:
    def __init__(
        self,
        log: Logger,
        clock: IReactorTime,
        every: float = EVERY,
        summary: Summary = more_like_this,
        first: Callable[[str], str] = str,
    ) -> None:
        self.log = log
        self.clock = clock
        self.every = every
        self.summary = summary
        self.first = first
        self._quiet: dict[Hashable, _Quiet] = {}

    def warn(self, key: Hashable, line: str, **fields: Any) -> None:
        """``line`` now, or counted if ``key`` was logged within ``every`` seconds. ``fields``
        go into the log event as they are (structured logging)."""
        held = self._quiet.get(key)
        if held is not None:
            held.more += 1
            held.last = line
            return
        self.log.warn("{line}", line=self.first(line), **fields)
        self._quiet[key] = _Quiet(0, line, fields, self.clock.callLater(self.every, self._interval_over, key))

    def _interval_over(self, key: Hashable) -> None:
        held = self._quiet.pop(key)
        if not held.more:
            return
        self._say(key, held)
        held.more = 0
        held.timer = self.clock.callLater(self.every, self._interval_over, key)
        self._quiet[key] = held

    def _say(self, key: Hashable, held: _Quiet) -> None:
        self.log.warn("{line}", line=self.summary(key, held.more, held.last, self.every), **held.fields)

    def stop(self) -> None:
        """Say what is still only counted, forget everything, cancel the timers."""
        quiet, self._quiet = self._quiet, {}
        for key, held in quiet.items():
            if held.timer.active():
                held.timer.cancel()
            if held.more:
                self._say(key, held)

    def __len__(self) -> int:
        """Keys remembered now (for tests and metrics)."""
        return len(self._quiet)

"""Log lines about bad peers that a flood cannot turn into a flood of lines.

The first line for a key is written at once; more for the same key within the next second are
counted and summed up in one line when that second is over.
"""

from __future__ import annotations

from collections import Counter
from typing import Hashable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

EVERY = 1.0


class RateLimitedLog:
    def __init__(self, log: Logger, clock: IReactorTime) -> None:
        self.log = log
        self.clock = clock
        self._quiet_until: dict[Hashable, float] = {}
        self._unlogged: Counter[Hashable] = Counter()

    def warn(self, key: Hashable, line: str) -> None:
        now = self.clock.seconds()
        until = self._quiet_until.get(key, 0.0)
        if now < until:
            if not self._unlogged[key]:
                self.clock.callLater(until - now, self._summarise, key, line)
            self._unlogged[key] += 1
            return
        self.log.warn("{line}", line=line)
        self._quiet_until[key] = now + EVERY

    def _summarise(self, key: Hashable, last: str) -> None:
        more = self._unlogged.pop(key, 0)
        if more:
            self.log.warn("{more} more like this in the last second (last: {last})", more=more, last=last)
            self._quiet_until[key] = self.clock.seconds() + EVERY
        else:
            self._quiet_until.pop(key, None)

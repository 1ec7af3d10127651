"""Log lines about bad peers that a flood cannot turn into a flood of lines.

The first line for a key is written at once; more for the same key within the next second are
counted and summed up in one line when that second is over (and the key stays quiet for one more
second). A key is forgotten after a second in which nothing was logged for it, so memory follows
the peers misbehaving now, not every peer that ever did.
"""

from __future__ import annotations

from typing import Hashable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

EVERY = 1.0


class RateLimitedLog:
    def __init__(self, log: Logger, clock: IReactorTime) -> None:
        self.log = log
        self.clock = clock
        #: Keys inside their quiet second -> [lines not written, the last of them].
        self._quiet: dict[Hashable, list] = {}

    def warn(self, key: Hashable, line: str) -> None:
        held = self._quiet.get(key)
        if held is not None:
            held[0] += 1
            held[1] = line
            return
        self.log.warn("{line}", line=line)
        self._quiet[key] = [0, line]
        self.clock.callLater(EVERY, self._second_over, key)

    def _second_over(self, key: Hashable) -> None:
        more, last = self._quiet[key]
        if not more:
            del self._quiet[key]
            return
        self.log.warn("{more} more like this in the last second (last: {last})", more=more, last=last)
        self._quiet[key] = [0, last]
        self.clock.callLater(EVERY, self._second_over, key)

    def __len__(self) -> int:
        """Keys remembered now (for tests and metrics)."""
        return len(self._quiet)

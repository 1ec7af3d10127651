"""Something that happens once, that several parts wait for: a port is up, a start has failed.

A Deferred can be waited on by one chain only; ``Once`` hands each waiter a Deferred of its own,
fired when the event happens (at once if it already has), so a part waits for the event itself
instead of asking again and again whether it has happened yet.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure


class Once:
    """An event that happens (or fails) once; ``wait`` as often as needed."""

    def __init__(self) -> None:
        self._done = False
        self._failure: Failure | None = None
        self._waiters: list[Deferred[None]] = []

    @property
    def happened(self) -> bool:
        """It happened, and did not fail."""
        return self._done and self._failure is None

    def wait(self) -> Deferred[None]:
        """Fires when the event happens, or fails with why it could not."""
        if self._done:
            return succeed(None) if self._failure is None else fail(self._failure)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def succeed(self, _: object = None) -> None:
        """It happened (a callback: the result is ignored)."""
        self._finish(None)

    def fail(self, failure: Failure) -> None:
        """It will not happen: every waiter fails with ``failure`` (an errback: consumed here)."""
        self._finish(failure)

    def follow(self, deferred: Deferred[Any]) -> None:
        """Happen when ``deferred`` fires; fail when it fails."""
        deferred.addCallbacks(self.succeed, self.fail)

    def _finish(self, failure: Failure | None) -> None:
        if self._done:
            return
        self._done, self._failure = True, failure
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if failure is None:
                waiter.callback(None)
            else:
                waiter.errback(failure)

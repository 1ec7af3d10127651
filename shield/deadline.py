"""A deadline a connection has to meet (a TLS handshake, an announcement, a request head): the
one helper for them, composed into the protocol that has it rather than mixed in.

``start`` arms it (again, if it was armed), ``cancel`` disarms it, and when time runs out the
callback runs once. Time comes from the clock given, so tests drive it with a ``Clock``.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Deadline:
    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._call: IDelayedCall | None = None

    def start(self, seconds: float, expired: Callable[..., Any], *args: object) -> None:
        self.cancel()
        self._call = self.clock.callLater(seconds, self._expire, expired, args)

    def _expire(self, expired: Callable[..., Any], args: tuple[object, ...]) -> None:
        self._call = None
        expired(*args)

    def cancel(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    @property
    def armed(self) -> bool:
        return self._call is not None

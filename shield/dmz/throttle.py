"""Per-client pacing: a cap on bytes per second toward a client, and an idle timeout.

The cap is a token bucket of one second's worth of bytes. When a client has used it up, the
tunnel feeding it is paused (the same backpressure path a slow client uses) until the bucket has
refilled; nothing is buffered or dropped. The pause is combined with the client transport's own
pause requests, so neither can resume what the other paused.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IConsumer, IDelayedCall, IProducer, IPushProducer, IReactorTime
from zope.interface import implementer

from shield.relay import Side


@implementer(IPushProducer)
class GatedProducer:
    """A producer paused while any reason holds (the consumer is full, the rate is used up)."""

    def __init__(self, inner: IPushProducer) -> None:
        self.inner = inner
        self._reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self._reasons:
            self.inner.pauseProducing()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons:
            self.inner.resumeProducing()

    def pauseProducing(self) -> None:
        self.pause("consumer")

    def resumeProducing(self) -> None:
        self.resume("consumer")

    def stopProducing(self) -> None:
        self.inner.stopProducing()


@implementer(IConsumer)
class _GatedConsumer:
    def __init__(self, side: "PacedSide") -> None:
        self.side = side

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        assert IPushProducer.providedBy(producer), "the relay registers push producers only"
        self.side.gate = GatedProducer(producer)
        self.side.inner.consumer.registerProducer(self.side.gate, streaming)

    def unregisterProducer(self) -> None:
        self.side.inner.consumer.unregisterProducer()
        self.side.gate = None

    def write(self, data: bytes) -> None:
        self.side.send(data)


class PacedSide:
    """A ``Side`` toward a client that receives at most ``rate`` bytes per second."""

    def __init__(self, inner: Side, rate: int, clock: IReactorTime) -> None:
        self.inner = inner
        self.rate = rate
        self.clock = clock
        self.gate: GatedProducer | None = None
        self._tokens = float(rate)
        self._stamp = clock.seconds()
        self._refill: IDelayedCall | None = None
        self._consumer = _GatedConsumer(self)

    @property
    def producer(self) -> IPushProducer:
        return self.inner.producer

    @property
    def consumer(self) -> IConsumer:
        return self._consumer

    def send(self, data: bytes) -> None:
        self.inner.send(data)
        self._take(len(data))

    def _take(self, n: int) -> None:
        now = self.clock.seconds()
        self._tokens = min(float(self.rate), self._tokens + (now - self._stamp) * self.rate) - n
        self._stamp = now
        if self._tokens < 0 and self._refill is None and self.gate is not None:
            self.gate.pause("rate")
            self._refill = self.clock.callLater(-self._tokens / self.rate, self._refilled)

    def _refilled(self) -> None:
        self._refill = None
        self._take(0)
        if self._refill is None and self.gate is not None:
            self.gate.resume("rate")

    def send_eof(self) -> None:
        self.inner.send_eof()

    def close(self) -> None:
        self._cancel()
        self.inner.close()

    def abort(self, reason: str) -> None:
        self._cancel()
        self.inner.abort(reason)

    def room(self) -> int:
        # A paced client is paused whenever its rate is used up, whatever its kernel buffer
        # has room for: a window grown into that room would land in this process.
        return 0

    def follow(self, room: Callable[[], int]) -> None:
        self.inner.follow(room)

    def _cancel(self) -> None:
        if self._refill is not None and self._refill.active():
            self._refill.cancel()
        self._refill = None


class IdleWatch:
    """Calls ``expired`` once no payload has moved for ``timeout`` seconds.

    It looks at ``activity()`` (a count that grows with every byte carried) four times per
    timeout instead of being told about every chunk: the data path pays nothing for it, and a
    connection is closed between ``timeout`` and 1.25 x ``timeout`` after its last byte.
    """

    def __init__(self, timeout: float, clock: IReactorTime, expired: Callable[[], None], activity: Callable[[], int]) -> None:
        self.timeout = timeout
        self.clock = clock
        self.expired = expired
        self.activity = activity
        self._seen = activity()
        self._last = clock.seconds()
        self._call: IDelayedCall | None = clock.callLater(timeout / 4, self._check)

    def _check(self) -> None:
        now = self.clock.seconds()
        seen = self.activity()
        if seen != self._seen:
            self._seen, self._last = seen, now
        if now - self._last >= self.timeout:
            self._call = None
            self.expired()
        else:
            self._call = self.clock.callLater(self.timeout / 4, self._check)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

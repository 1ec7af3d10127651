"""Splicing two byte pipes together, with backpressure and half-close, whatever they are.

Both gateways splice: the DMZ joins a public client (TCP, TLS or WebSocket) to a mux stream, the
connector joins a mux stream to a backend socket. Each end is seen through the small ``Side``
interface; the ``Relay`` forwards bytes, registers each end's producer with the other end's
consumer (so a slow reader pauses the far writer instead of filling memory), passes EOF on as
half-close, and ends both sides when either is gone: cleanly after a clean close, abortively
after an error.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import Callable, ClassVar, Protocol

from twisted.internet.protocol import connectionDone
from twisted.internet import error, protocol
from twisted.internet.interfaces import IConsumer, IHalfCloseableProtocol, IPushProducer
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.lifecycle import Lifecycle, Transitions
from shield.net import send_room, socket_under
from shield.transports import IStreamTransport


class Side(Protocol):
    """One end of a relay: where bytes go out, and how to pause what comes in."""

    @property
    def producer(self) -> IPushProducer: ...

    @property
    def consumer(self) -> IConsumer: ...

    def send(self, data: bytes) -> None: ...

    def send_eof(self) -> None: ...

    def close(self) -> None: ...

    def abort(self, reason: str) -> None: ...

    def room(self) -> int:
        """Bytes this side's kernel buffer takes now without them staying in this process."""
        ...

    def follow(self, room: Callable[[], int]) -> None:
        """What this side's producer delivers goes to a consumer with ``room()`` to spare: a
        producer that grants credit (a mux stream) may grow it into that room."""
        ...


class TransportSide:
    """A ``Side`` over an ordinary Twisted transport (TCP, TLS, unix socket, mux stream)."""

    def __init__(self, transport: IStreamTransport) -> None:
        self.transport = transport

    @property
    def producer(self) -> IPushProducer:
        return self.transport

    @property
    def consumer(self) -> IConsumer:
        return self.transport

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def send_eof(self) -> None:
        transport = self.transport
        if isinstance(transport, TLSMemoryBIOProtocol):
            # TLS: the close_notify alert is the end of this direction (TLS 1.3 keeps reading
            # after it; the peer's own close_notify, or its hang-up, ends the connection). Twisted
            # sends it once no producer is registered: the other side has finished producing.
            # (Never the TCP socket's half-close, which Twisted's TLS wrapper would hand on to
            # the socket under it: the peer would get neither the alert nor the FIN.)
            transport.unregisterProducer()
            transport.loseConnection()
            return
        lose_write = getattr(transport, "loseWriteConnection", None)
        if lose_write is not None:
            lose_write()
        else:
            transport.loseConnection()

    def close(self) -> None:
        # TLS transports postpone their shutdown while a producer is registered.
        unregister = getattr(self.transport, "unregisterProducer", None)
        if unregister is not None:
            unregister()
        self.transport.loseConnection()

    def abort(self, reason: str) -> None:
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def room(self) -> int:
        return send_room(socket_under(self.transport))

    def follow(self, room: Callable[[], int]) -> None:
        follow_consumer = getattr(self.transport, "follow_consumer", None)
        if follow_consumer is not None:
            follow_consumer(room)


class ByteTally:
    """Bytes carried one way for one service, as a plain running total.

    The relay adds to it on every chunk and the metrics read it only when scraped: no lock and
    no call per chunk on the data path (a Prometheus counter takes a lock on every ``inc``).
    """

    __slots__ = ("total",)

    def __init__(self) -> None:
        self.total = 0


#: Where a relay that nobody counts adds its bytes.
UNCOUNTED = ByteTally()


class RelayState(Enum):
    OPEN = auto()  # bytes go both ways
    A_HALF_CLOSED = auto()  # a sent EOF (b's output is half-closed); b -> a goes on
    B_HALF_CLOSED = auto()
    ENDED = auto()  # both sides are closed or closing; nothing more is carried


class RelayEvent(Enum):
    A_EOF = auto()  # a will send nothing more
    B_EOF = auto()
    A_LOST = auto()  # a's connection is gone
    B_LOST = auto()


class Relay:
    """Joins side ``a`` and side ``b``; the protocols of both report their events here.

    Its lifecycle (``LIFECYCLE``). The table is total: the two sides are independent connections
    and either may report anything at any time, so what it fixes is what each report does:

    =============  ======  =============  =====================================================
    state          event   next           what happens
    =============  ======  =============  =====================================================
    OPEN           A_EOF   A_HALF_CLOSED  b's output is half-closed
    OPEN           B_EOF   B_HALF_CLOSED  a's output is half-closed
    OPEN           A_LOST  ENDED          b is closed, or aborted if a was
    OPEN           B_LOST  ENDED          a is closed, or aborted if b was
    A_HALF_CLOSED  A_EOF   A_HALF_CLOSED  said before: nothing
    A_HALF_CLOSED  B_EOF   ENDED          both directions are finished: both sides closed
    A_HALF_CLOSED  A_LOST  ENDED          b is closed cleanly: a had said everything
    A_HALF_CLOSED  B_LOST  ENDED          a is closed, or aborted if b was
    B_HALF_CLOSED  A_EOF   ENDED          both directions are finished: both sides closed
    B_HALF_CLOSED  B_EOF   B_HALF_CLOSED  said before: nothing
    B_HALF_CLOSED  A_LOST  ENDED          b is closed, or aborted if a was
    B_HALF_CLOSED  B_LOST  ENDED          a is closed cleanly: b had said everything
    ENDED          A_EOF   ENDED          too late: nothing
    ENDED          B_EOF   ENDED          too late: nothing
    ENDED          A_LOST  ENDED          too late: nothing
    ENDED          B_LOST  ENDED          too late: nothing
    =============  ======  =============  =====================================================

    Bytes are carried in every state but ENDED.
    """

    LIFECYCLE: ClassVar[Transitions[RelayState, RelayEvent]] = {
        (RelayState.OPEN, RelayEvent.A_EOF): RelayState.A_HALF_CLOSED,
        (RelayState.OPEN, RelayEvent.B_EOF): RelayState.B_HALF_CLOSED,
        (RelayState.OPEN, RelayEvent.A_LOST): RelayState.ENDED,
        (RelayState.OPEN, RelayEvent.B_LOST): RelayState.ENDED,
        (RelayState.A_HALF_CLOSED, RelayEvent.A_EOF): RelayState.A_HALF_CLOSED,
        (RelayState.A_HALF_CLOSED, RelayEvent.B_EOF): RelayState.ENDED,
        (RelayState.A_HALF_CLOSED, RelayEvent.A_LOST): RelayState.ENDED,
        (RelayState.A_HALF_CLOSED, RelayEvent.B_LOST): RelayState.ENDED,
        (RelayState.B_HALF_CLOSED, RelayEvent.A_EOF): RelayState.ENDED,
        (RelayState.B_HALF_CLOSED, RelayEvent.B_EOF): RelayState.B_HALF_CLOSED,
        (RelayState.B_HALF_CLOSED, RelayEvent.A_LOST): RelayState.ENDED,
        (RelayState.B_HALF_CLOSED, RelayEvent.B_LOST): RelayState.ENDED,
        (RelayState.ENDED, RelayEvent.A_EOF): RelayState.ENDED,
        (RelayState.ENDED, RelayEvent.B_EOF): RelayState.ENDED,
        (RelayState.ENDED, RelayEvent.A_LOST): RelayState.ENDED,
        (RelayState.ENDED, RelayEvent.B_LOST): RelayState.ENDED,
    }

    log = Logger()

    def __init__(
        self,
        a: Side,
        b: Side,
        a_to_b: ByteTally = UNCOUNTED,
        b_to_a: ByteTally = UNCOUNTED,
        on_finished: Callable[[str], None] | None = None,
    ) -> None:
        self._sides = (a, b)
        self._tallies = (a_to_b, b_to_a)
        self._moved = 0  # bytes carried either way, for idle detection
        self._life = Lifecycle("Relay", self.LIFECYCLE, RelayState.OPEN)
        self._on_finished = on_finished
        b.consumer.registerProducer(a.producer, True)
        a.consumer.registerProducer(b.producer, True)
        a.follow(b.room)
        b.follow(a.room)

    def moved(self) -> int:
        """Bytes carried so far, both ways together."""
        return self._moved

    @property
    def sides(self) -> tuple[Side, Side]:
        return self._sides

    @property
    def finished(self) -> bool:
        return self._life.state is RelayState.ENDED

    def _index(self, side: Side) -> int:
        # A side may wrap another (a paced client side wraps the client's own): the protocol
        # underneath reports with the inner one, which then stands for the wrapper.
        first = self._sides[0]
        return 0 if side is first or side is getattr(first, "inner", None) else 1

    def received(self, side: Side, data: bytes) -> None:
        """``side`` delivered bytes: pass them to the other side."""
        if self._life.state is RelayState.ENDED:
            return
        i = self._index(side)
        n = len(data)
        self._tallies[i].total += n
        self._moved += n
        self._sides[1 - i].send(data)

    def eof(self, side: Side) -> None:
        """``side`` will send nothing more: half-close the other side's output."""
        i = self._index(side)
        before = self._life.state
        after = self._life.fire(_EOF[i])
        if after is before:
            return  # said before, or too late
        self._sides[1 - i].send_eof()
        if after is RelayState.ENDED:
            # Both directions are finished: nothing left to carry.
            for each in self._sides:
                each.close()
            self._finish("both sides finished")

    def lost(self, side: Side, clean: bool, reason: str) -> None:
        """``side`` is gone: close the other, gracefully if this one left cleanly."""
        i = self._index(side)
        before = self._life.state
        self._life.fire(_LOST[i])
        if before is RelayState.ENDED:
            return
        if before is _HALF_CLOSED[i]:
            # It had finished sending (EOF came first): everything it said has been passed on,
            # so the other side ends cleanly and keeps those bytes (a reset would discard them).
            clean = True
        other = self._sides[1 - i]
        if clean:
            other.close()
        else:
            other.abort(reason)
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        """Entered ENDED (once): let go of the producers, tell the owner."""
        # Neither side produces for the other any more. A socket transport whose producer stays
        # registered (and paused) would, once its last bytes are out, resume that producer
        # instead of finishing the close it was asked for (Twisted's doWrite does one or the other).
        for side in self._sides:
            side.consumer.unregisterProducer()
        if self._on_finished is not None:
            self._on_finished(reason)


#: The events and half-closed state of side ``i`` (0 is a, 1 is b).
_EOF = (RelayEvent.A_EOF, RelayEvent.B_EOF)
_LOST = (RelayEvent.A_LOST, RelayEvent.B_LOST)
_HALF_CLOSED = (RelayState.A_HALF_CLOSED, RelayState.B_HALF_CLOSED)


@implementer(IHalfCloseableProtocol)
class RelayedProtocol(protocol.Protocol):
    """A protocol whose bytes go to a relay once it has joined one.

    Bytes and EOF that arrive before ``join`` (a backend's greeting, payload that followed a
    header in the same chunk) are held and passed on first, in order.
    """

    transport: IStreamTransport  # connected before any event reaches the protocol

    relay: Relay | None = None
    side: TransportSide | None = None
    _held: list[bytes] | None = None
    _held_eof = False

    def join(self, relay_factory: Callable[[TransportSide], Relay]) -> Relay:
        self.side = TransportSide(self.transport)
        relay = self.relay = relay_factory(self.side)
        held, self._held = self._held or [], None
        for chunk in held:
            relay.received(self.side, chunk)
        if self._held_eof:
            relay.eof(self.side)
        return relay

    def dataReceived(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.received(self.side, data)  # type: ignore[arg-type]  # side is set together with relay, in join() (a check here would cost every chunk)
        elif self._held is None:
            self._held = [data]
        else:
            self._held.append(data)

    def readConnectionLost(self) -> None:
        if self.relay is not None:
            self.relay.eof(self.side)  # type: ignore[arg-type]  # side is set together with relay, in join() (a check here would cost every chunk)
        else:
            self._held_eof = True

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.relay is not None:
            clean = reason.check(error.ConnectionDone) is not None
            self.relay.lost(self.side, clean, self.describe_loss(reason))  # type: ignore[arg-type]  # side is set together with relay, in join() (a check here would cost every chunk)

    def describe_loss(self, reason: Failure) -> str:
        return reason.getErrorMessage()

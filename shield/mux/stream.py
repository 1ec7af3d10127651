"""A mux stream as an ordinary Twisted transport (ITransport, IPushProducer, IConsumer).

Anything that works over a TCP transport works over a stream, including
``twisted.protocols.portforward``-style splicing with ``registerProducer``:

- Reading: data is handed to the protocol and only then acknowledged to the session, so the peer
  gets window back as fast as the protocol consumes. ``pauseProducing`` parks incoming data in a
  small inbox (never more than one window) and stops the acknowledgements: the remote writer
  stalls.
- Writing: ``write`` queues data and asks the session to flush once per reactor turn (many small
  writes become few frames). When the queue is above the high-water mark, a registered producer is
  paused; it resumes when the peer's window lets the queue drain.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from twisted.internet import error
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProducer,
    IProtocol,
    IPushProducer,
    ITransport,
)
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    from shield.mux.session import Session


@implementer(IAddress)
@dataclass(frozen=True, slots=True)
class MuxStreamAddress:
    """Where a stream lives: its id, riding on the link's own address."""

    stream_id: int
    link: IAddress | None


class StreamHost(Protocol):
    """What a stream needs from the session that carries it (the narrow door to MuxProtocol)."""

    session: "Session"

    def schedule_flush(self, stream: "MuxStream | None") -> None: ...

    def stream_finished(self, stream: "MuxStream") -> None: ...

    def call_later(self, delay: float, f: object, *args: object) -> IDelayedCall: ...

    def now(self) -> float: ...

    def link_address(self, peer: bool) -> IAddress | None: ...


@implementer(ITransport, IPushProducer, IConsumer)
class MuxStream:
    """One yamux stream, seen by its protocol as a transport."""

    def __init__(self, host: StreamHost, stream_id: int, high_water: int, close_timeout: float) -> None:
        self.stream_id = stream_id
        self.protocol: IProtocol | None = None
        self.connected = True
        self.disconnecting = False
        self._host = host
        self._high_water = high_water
        self._low_water = high_water // 2
        self._close_timeout = close_timeout
        # outbound
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._fin_requested = False
        self._fin_sent = False
        self._write_closed = False  # loseWriteConnection was called
        self._producer: IProducer | None = None
        self._streaming = False
        self._producer_paused = False
        # inbound
        self._inbox: deque[bytes] = deque()
        self._paused = False
        self._remote_ended = False
        self._end_delivered = False
        self._core_closed = False
        self._discarding = False  # loseConnection: nothing more goes to the protocol
        # lifecycle
        self._finished = False
        self._close_timer: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"<MuxStream {self.stream_id}>"

    def attach(self, protocol: IProtocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)

    # -- ITransport ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        # As with a socket, bytes written after loseConnection still go out before the FIN (a
        # protocol's last words, such as a WebSocket close frame); after loseWriteConnection or
        # once the FIN is out, nothing more can be said.
        if self._write_closed or self._fin_sent or self._finished or not data:
            return
        self._pending.append(bytes(data))
        self._pending_size += len(data)
        self._host.schedule_flush(self)
        if self._pending_size > self._high_water:
            self._pause_producer()

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Finish sending what is queued, send FIN, and stop delivering data.

        ``connectionLost(ConnectionDone)`` follows once the peer has closed its side too, or after
        ``stream_close_timeout`` (then the stream is reset).
        """
        if self._finished or self.disconnecting:
            return
        self.disconnecting = True
        self._discarding = True
        self._drop_inbox()
        self._request_fin()

    def loseWriteConnection(self) -> None:
        """Half-close: FIN after the queued data; reading goes on."""
        if self._finished:
            return
        self._write_closed = True
        self._request_fin()

    def abortConnection(self) -> None:
        """Reset the stream (RST) at once, dropping queued data both ways."""
        if self._finished:
            return
        self._host.session.reset_stream(self.stream_id)
        self._host.schedule_flush(self)
        self._finish(Failure(error.ConnectionAborted()))

    #: Set when a stream carries a connection on someone's behalf (a balancer forwarding a
    #: public client): ``getPeer`` then names that client, as a socket would.
    speaks_for: IAddress | None = None

    def getPeer(self) -> IAddress:
        if self.speaks_for is not None:
            return self.speaks_for
        return MuxStreamAddress(self.stream_id, self._host.link_address(peer=True))

    def getHost(self) -> MuxStreamAddress:
        return MuxStreamAddress(self.stream_id, self._host.link_address(peer=False))

    # -- IPushProducer (our consumer pauses the data we deliver) ---------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._finished:
            return
        self._paused = False
        self._drain_inbox()

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- IConsumer (a producer feeds what we write) ----------------------------------------------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(f"{self!r} already has a producer: {self._producer!r}")
        if self._finished:
            producer.stopProducing()
            return
        self._producer = producer
        self._streaming = streaming
        self._producer_paused = False
        if self._pending_size > self._high_water:
            self._pause_producer()
        elif not streaming:
            producer.resumeProducing()  # type: ignore[attr-defined]

    def unregisterProducer(self) -> None:
        self._producer = None
        self._producer_paused = False

    @property
    def producer(self) -> IProducer | None:
        """The registered producer, under the name Twisted's socket transports use."""
        return self._producer

    # -- driven by the session host ------------------------------------------------------------

    @property
    def buffered_inbound(self) -> int:
        """Bytes received but held back because the consumer is paused."""
        return sum(len(chunk) for chunk in self._inbox)

    @property
    def buffered_outbound(self) -> int:
        """Bytes written but not yet framed (waiting for window or for the flush)."""
        return self._pending_size

    @property
    def has_output(self) -> bool:
        return bool(self._pending) or (self._fin_requested and not self._fin_sent)

    def flush_into(self, session: "Session") -> None:
        """Frame what the send window allows, then FIN if asked and everything is out."""
        if self._finished:
            return
        if self._pending:
            buf = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            sent = session.send_data(self.stream_id, buf)
            if sent == len(buf):
                self._pending = []
            else:
                self._pending = [buf[sent:]]
            self._pending_size = len(buf) - sent
        if not self._pending and self._fin_requested and not self._fin_sent:
            self._fin_sent = True
            if session.end_stream(self.stream_id):
                self._core_closed = True
            if not self.disconnecting and IHalfCloseableProtocol.providedBy(self.protocol):
                self.protocol.writeConnectionLost()  # type: ignore[union-attr]
            if self.disconnecting and not self._core_closed:
                self._close_timer = self._host.call_later(self._close_timeout, self._close_timed_out)
            self._maybe_finish()
        self._resume_producer_if_drained()

    def data_received(self, data: bytes) -> None:
        if self._finished:
            return
        if self._discarding:
            self._host.session.acknowledge(self.stream_id, len(data))
            return
        if self._paused or self._inbox:
            self._inbox.append(data)
            return
        self._deliver(data)

    def remote_ended(self) -> None:
        self._remote_ended = True
        self._drain_inbox()

    def core_closed(self) -> None:
        self._core_closed = True
        self._remote_ended = True
        self._drain_inbox()

    def reset_by_peer(self, reason: str) -> None:
        self._inbox.clear()
        self._finish(Failure(error.ConnectionLost(f"stream {self.stream_id} reset: {reason}")))

    def session_lost(self, reason: str) -> None:
        self._finish(Failure(error.ConnectionLost(f"mux session lost: {reason}")))

    # -- internals ----------------------------------------------------------------------------

    def _request_fin(self) -> None:
        if self._fin_requested:
            return
        self._fin_requested = True
        self._host.schedule_flush(self)

    def _deliver(self, data: bytes) -> None:
        assert self.protocol is not None
        self.protocol.dataReceived(data)
        self._host.session.acknowledge(self.stream_id, len(data), self._host.now())
        self._host.schedule_flush(None)

    def _drain_inbox(self) -> None:
        inbox = self._inbox
        while inbox and not self._paused and not self._finished and not self._discarding:
            self._deliver(inbox.popleft())
        if inbox or self._paused and not self._discarding:
            return
        if self._remote_ended and not self._end_delivered and not self._finished:
            self._end_delivered = True
            if self._discarding:
                pass  # loseConnection was called: the protocol wants nothing more
            elif IHalfCloseableProtocol.providedBy(self.protocol):
                self.protocol.readConnectionLost()  # type: ignore[union-attr]
            else:
                # Like TCP for a protocol that cannot half-close: the peer's EOF closes us too.
                self.loseConnection()
        self._maybe_finish()

    def _drop_inbox(self) -> None:
        dropped = sum(len(chunk) for chunk in self._inbox)
        self._inbox.clear()
        if dropped:
            self._host.session.acknowledge(self.stream_id, dropped)

    def _maybe_finish(self) -> None:
        if self._core_closed and self._fin_sent and not self._inbox and self._end_delivered:
            self._finish(Failure(error.ConnectionDone()))

    def _close_timed_out(self) -> None:
        self._close_timer = None
        if self._finished:
            return
        self._host.session.reset_stream(self.stream_id)
        self._host.schedule_flush(self)
        self._finish(Failure(error.ConnectionDone("peer did not close the stream in time; reset")))

    def _pause_producer(self) -> None:
        if self._producer is not None and self._streaming and not self._producer_paused:
            self._producer_paused = True
            self._producer.pauseProducing()  # type: ignore[attr-defined]

    def _resume_producer_if_drained(self) -> None:
        producer = self._producer
        if producer is None or self._finished or self._fin_requested:
            return
        if self._streaming:
            if self._producer_paused and self._pending_size <= self._low_water:
                self._producer_paused = False
                producer.resumeProducing()  # type: ignore[attr-defined]
        elif self._pending_size <= self._low_water:
            producer.resumeProducing()  # type: ignore[attr-defined]

    def _finish(self, reason: Failure) -> None:
        if self._finished:
            return
        self._finished = True
        self.connected = False
        self.disconnecting = True
        self._pending = []
        self._pending_size = 0
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        self._host.stream_finished(self)
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()
        if self.protocol is not None:
            self.protocol.connectionLost(reason)

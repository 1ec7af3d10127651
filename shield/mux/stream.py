"""A mux stream as an ordinary Twisted transport (ITransport, IPushProducer, IConsumer).

Anything that works over a TCP transport works over a stream, including
``twisted.protocols.portforward``-style splicing with ``registerProducer``:

- Reading: data is handed to the protocol and acknowledged to the session once it has left this
  process, so the peer gets window back as fast as the reader really consumes. A consumer that
  pauses the stream while taking a chunk (a socket whose kernel buffer is full keeps the rest in
  user space, and with ``shield.reactor`` pauses at once) still holds it: the chunk is
  acknowledged when the consumer resumes, which it does once its buffer has drained.
  ``pauseProducing`` parks incoming data in a small inbox (never more than the window) and stops
  the acknowledgements: the remote writer stalls. Whatever the stream holds (inbox and chunks its
  consumer keeps) is reported to the gateway's ``BufferBudget``.
- Window growth: a stream whose reader keeps up may grow its receive window (the session
  decides), but only into room its consumer's kernel buffer has (``follow_consumer``) and the
  budget can lend. So a reader that was fast and then stops costs the gateway at most the base
  window (256 KiB) in user space: what was in flight beyond it lands in the kernel.
- Writing: ``write`` queues data and asks the session to flush once per reactor turn (many small
  writes become few frames). A registered producer is paused when the queue passes the
  high-water mark, and as soon as a flush leaves anything queued (the peer's window is used up:
  reading more would only pile it up here). It resumes once the queue is empty again. So a
  stream whose far reader stalls holds at most what its producer delivered in one read.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable, Protocol, cast

from twisted.internet import error
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProducer,
    IProtocol,
    IPullProducer,
    IPushProducer,
    ITransport,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.mux.budget import BufferBudget

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
    budget: BufferBudget

    def schedule_flush(self, stream: "MuxStream | None") -> None: ...

    def stream_finished(self, stream: "MuxStream") -> None: ...

    def call_later(self, delay: float, f: Callable[..., Any], *args: object) -> IDelayedCall: ...

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
        self._close_timeout = close_timeout
        # outbound
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._fin_requested = False
        self._fin_sent = False
        self._write_closed = False  # loseWriteConnection was called
        self._producer: IPushProducer | IPullProducer | None = None
        self._streaming = False
        self._producer_paused = False
        # inbound
        self._inbox: deque[bytes] = deque()
        self._inbox_size = 0
        self._held_downstream = 0  # delivered while the consumer paused us: it still holds them
        self._lent = 0  # window growth this stream has from the budget
        self._consumer_room: Callable[[], int] | None = None
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
        self._host.budget.held += len(data)
        self._host.schedule_flush(self)
        if self._pending_size > self._high_water:
            self._pause_producer()

    def writeSequence(self, data: Iterable[bytes]) -> None:
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
        # The peer's FIN may already be in, held back behind data just dropped (our consumer had
        # paused us): it is swallowed now, not when a consumer that is gone resumes us.
        self._drain_inbox()

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
        held, self._held_downstream = self._held_downstream, 0
        if held:
            # The consumer resumes once its buffer has drained: those bytes have left.
            self._host.budget.held -= held
            self._acknowledge(held)
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
        # IConsumer's contract: streaming means an IPushProducer, otherwise an IPullProducer.
        self._producer = cast("IPushProducer | IPullProducer", producer)
        self._streaming = streaming
        self._producer_paused = False
        if self._pending_size > self._high_water:
            self._pause_producer()
        elif not streaming:
            self._producer.resumeProducing()

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
        return self._inbox_size

    @property
    def held(self) -> int:
        """Bytes this stream holds: parked for its reader, kept by its consumer, or written and
        waiting for the peer's window (what it reports to the budget)."""
        return self._inbox_size + self._held_downstream + self._pending_size

    def follow_consumer(self, room: Callable[[], int]) -> None:
        """``room()`` says how many bytes the consumer's kernel buffer takes now without keeping
        them in user space: the window may grow into that room, never beyond it."""
        self._consumer_room = room

    @property
    def buffered_outbound(self) -> int:
        """Bytes written but not yet framed (waiting for window or for the flush)."""
        return self._pending_size

    @property
    def has_output(self) -> bool:
        return not self._finished and (bool(self._pending) or (self._fin_requested and not self._fin_sent))

    def flush_into(self, session: "Session", limit: int | None = None) -> int:
        """Frame what the send window (and ``limit``) allows, then FIN if asked and everything is
        out. Returns how many payload bytes were framed."""
        if self._finished:
            return 0
        sent = 0
        if self._pending:
            buf = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            sent = session.send_data(self.stream_id, buf, limit)
            if sent == len(buf):
                self._pending = []
            else:
                self._pending = [buf[sent:]]
                if not session.send_window(self.stream_id):
                    self._pause_producer()  # window used up: stop reading until it opens again
            self._pending_size = len(buf) - sent
            self._host.budget.held -= sent
        if not self._pending and self._fin_requested and not self._fin_sent:
            self._fin_sent = True
            if session.end_stream(self.stream_id):
                self._core_closed = True
            if not self.disconnecting and IHalfCloseableProtocol.providedBy(self.protocol):
                self.protocol.writeConnectionLost()
            if self.disconnecting and not self._core_closed:
                self._close_timer = self._host.call_later(self._close_timeout, self._close_timed_out)
            self._maybe_finish()
        self._resume_producer_if_drained()
        return sent

    def data_received(self, data: bytes) -> None:
        if self._finished:
            return
        if self._discarding:
            self._host.session.acknowledge(self.stream_id, len(data))
            return
        if self._paused or self._inbox:
            self._inbox.append(data)
            self._inbox_size += len(data)
            self._host.budget.held += len(data)
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
        self._drop_inbox(acknowledge=False)
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
        if self._paused and not self._finished:
            # The consumer paused us while taking this chunk: it keeps (some of) it in user
            # space. Credit for it waits until the consumer resumes us.
            self._held_downstream += len(data)
            self._host.budget.held += len(data)
            return
        self._acknowledge(len(data))

    def _acknowledge(self, n: int) -> None:
        """Give ``n`` bytes of credit back; let the window grow only into room that exists."""
        host = self._host
        session = host.session
        if not session.credit_due(self.stream_id, n):
            session.acknowledge(self.stream_id, n)
            return
        budget = host.budget
        room = self._consumer_room() if self._consumer_room is not None and not self._paused else 0
        base = session.window(self.stream_id) - self._lent
        cap = base + max(0, min(room, budget.room_for_growth(self._lent)))
        session.acknowledge(self.stream_id, n, host.now(), cap)
        lent = session.window(self.stream_id) - base
        budget.lent += lent - self._lent
        self._lent = lent
        host.schedule_flush(None)

    def _drain_inbox(self) -> None:
        inbox = self._inbox
        while inbox and not self._paused and not self._finished and not self._discarding:
            chunk = inbox.popleft()
            self._inbox_size -= len(chunk)
            self._host.budget.held -= len(chunk)
            self._deliver(chunk)
        if inbox or self._paused and not self._discarding:
            return
        if self._remote_ended and not self._end_delivered and not self._finished:
            self._end_delivered = True
            if self._discarding:
                pass  # loseConnection was called: the protocol wants nothing more
            elif IHalfCloseableProtocol.providedBy(self.protocol):
                self.protocol.readConnectionLost()
            else:
                # Like TCP for a protocol that cannot half-close: the peer's EOF closes us too.
                self.loseConnection()
        self._maybe_finish()

    def _drop_inbox(self, acknowledge: bool = True) -> None:
        dropped = self._inbox_size
        self._inbox.clear()
        self._inbox_size = 0
        self._host.budget.held -= dropped
        if dropped and acknowledge:
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
            self._producer.pauseProducing()  # type: ignore[union-attr]  # streaming: a push producer

    def _resume_producer_if_drained(self) -> None:
        producer = self._producer
        if producer is None or self._finished or self._fin_requested:
            return
        if self._streaming:
            if self._producer_paused and not self._pending_size:
                self._producer_paused = False
                producer.resumeProducing()
        elif not self._pending_size:
            producer.resumeProducing()

    def _finish(self, reason: Failure) -> None:
        if self._finished:
            return
        self._finished = True
        self.connected = False
        self.disconnecting = True
        budget = self._host.budget
        budget.held -= self._inbox_size + self._held_downstream + self._pending_size
        self._pending = []
        self._pending_size = 0
        budget.lent -= self._lent
        self._inbox.clear()
        self._inbox_size = 0
        self._held_downstream = 0
        self._lent = 0
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        self._host.stream_finished(self)
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.stopProducing()
        if self.protocol is not None:
            self.protocol.connectionLost(reason)

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
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Final, Protocol, cast

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
from shield.mux.errors import StreamStateError

if TYPE_CHECKING:
    from shield.mux.session import Session


class SendState(Enum):
    """Our half of a stream: what the protocol may still write, and where our FIN is."""

    OPEN = ("open", True, False)
    CLOSING = ("closing", True, True)  # loseConnection: last words still go out, then the FIN
    WRITE_CLOSED = ("write_closed", False, True)  # loseWriteConnection: the FIN after what is queued
    FIN_SENT = ("fin_sent", False, False)
    CLOSED = ("closed", False, False)  # finished: connectionLost has been called

    def __init__(self, label: str, writable: bool, fin_due: bool) -> None:
        self.label = label
        #: ``write`` queues data (as a socket does until its FIN, even after loseConnection).
        self.writable = writable
        #: A FIN goes out as soon as everything queued has.
        self.fin_due = fin_due


class ReceiveState(Enum):
    """The peer's half of a stream: what becomes of what it sends, and of its FIN."""

    OPEN = ("open", True, False)  # data goes to the protocol (parked while it pauses us)
    EOF_PENDING = ("eof_pending", True, False)  # the peer's FIN is in: parked data, then the end
    EOF_DELIVERED = ("eof_delivered", False, False)  # readConnectionLost (or loseConnection) done
    DISCARDING = ("discarding", False, True)  # loseConnection: the peer's data is acknowledged, dropped
    DISCARDED = ("discarded", False, True)  # loseConnection, and the peer's FIN is in
    CLOSED = ("closed", False, True)  # finished: connectionLost has been called

    def __init__(self, label: str, delivers: bool, hung_up: bool) -> None:
        self.label = label
        #: Data parked in the inbox still goes to the protocol.
        self.delivers = delivers
        #: The protocol called loseConnection (or the stream is finished): Twisted's ``disconnecting``.
        self.hung_up = hung_up


class StreamEvent(Enum):
    """What happens to a stream: its protocol's calls, the session's news, and its own steps."""

    LOSE_WRITE = "lose_write"  # loseWriteConnection
    LOSE = "lose"  # loseConnection (also stopProducing, and the peer's FIN for a protocol that cannot half-close)
    FIN_SENT = "fin_sent"  # a flush framed our FIN, after everything queued
    DATA = "data"  # the peer's data arrived
    PEER_FIN = "peer_fin"  # the peer's FIN arrived
    EOF_DELIVERED = "eof_delivered"  # the parked data went up, then readConnectionLost
    RELEASED = "released"  # the session forgot the stream: both FINs have crossed
    DONE = "done"  # both FINs have crossed and the protocol has had the end: ConnectionDone
    CLOSE_TIMEOUT = "close_timeout"  # the peer did not FIN within stream_close_timeout of our loseConnection
    ABORT = "abort"  # abortConnection
    PEER_RESET = "peer_reset"  # the peer's RST
    SESSION_LOST = "session_lost"  # the link under the session is gone


_S = SendState
_R = ReceiveState
_E = StreamEvent

#: ``(state, event) -> next state`` of our half; a pair that is not here is a bug (``StreamStateError``).
SEND_TRANSITIONS: Final[dict[tuple[SendState, StreamEvent], SendState]] = {
    (_S.OPEN, _E.LOSE_WRITE): _S.WRITE_CLOSED,
    (_S.CLOSING, _E.LOSE_WRITE): _S.WRITE_CLOSED,
    (_S.WRITE_CLOSED, _E.LOSE_WRITE): _S.WRITE_CLOSED,
    (_S.FIN_SENT, _E.LOSE_WRITE): _S.FIN_SENT,
    (_S.CLOSED, _E.LOSE_WRITE): _S.CLOSED,
    (_S.OPEN, _E.LOSE): _S.CLOSING,
    (_S.CLOSING, _E.LOSE): _S.CLOSING,
    (_S.WRITE_CLOSED, _E.LOSE): _S.WRITE_CLOSED,
    (_S.FIN_SENT, _E.LOSE): _S.FIN_SENT,
    (_S.CLOSED, _E.LOSE): _S.CLOSED,
    (_S.CLOSING, _E.FIN_SENT): _S.FIN_SENT,
    (_S.WRITE_CLOSED, _E.FIN_SENT): _S.FIN_SENT,
    (_S.FIN_SENT, _E.RELEASED): _S.FIN_SENT,
    (_S.FIN_SENT, _E.DONE): _S.CLOSED,
    (_S.FIN_SENT, _E.CLOSE_TIMEOUT): _S.CLOSED,
    (_S.OPEN, _E.ABORT): _S.CLOSED,
    (_S.CLOSING, _E.ABORT): _S.CLOSED,
    (_S.WRITE_CLOSED, _E.ABORT): _S.CLOSED,
    (_S.FIN_SENT, _E.ABORT): _S.CLOSED,
    (_S.CLOSED, _E.ABORT): _S.CLOSED,
    (_S.OPEN, _E.PEER_RESET): _S.CLOSED,
    (_S.CLOSING, _E.PEER_RESET): _S.CLOSED,
    (_S.WRITE_CLOSED, _E.PEER_RESET): _S.CLOSED,
    (_S.FIN_SENT, _E.PEER_RESET): _S.CLOSED,
    (_S.OPEN, _E.SESSION_LOST): _S.CLOSED,
    (_S.CLOSING, _E.SESSION_LOST): _S.CLOSED,
    (_S.WRITE_CLOSED, _E.SESSION_LOST): _S.CLOSED,
    (_S.FIN_SENT, _E.SESSION_LOST): _S.CLOSED,
    (_S.CLOSED, _E.SESSION_LOST): _S.CLOSED,
}

#: ``(state, event) -> next state`` of the peer's half; a pair that is not here is a bug.
RECEIVE_TRANSITIONS: Final[dict[tuple[ReceiveState, StreamEvent], ReceiveState]] = {
    (_R.OPEN, _E.DATA): _R.OPEN,
    (_R.DISCARDING, _E.DATA): _R.DISCARDING,
    (_R.OPEN, _E.PEER_FIN): _R.EOF_PENDING,
    (_R.DISCARDING, _E.PEER_FIN): _R.DISCARDED,
    (_R.EOF_PENDING, _E.EOF_DELIVERED): _R.EOF_DELIVERED,
    (_R.OPEN, _E.LOSE): _R.DISCARDING,
    (_R.EOF_PENDING, _E.LOSE): _R.DISCARDED,
    (_R.EOF_DELIVERED, _E.LOSE): _R.DISCARDED,
    (_R.DISCARDING, _E.LOSE): _R.DISCARDING,
    (_R.DISCARDED, _E.LOSE): _R.DISCARDED,
    (_R.CLOSED, _E.LOSE): _R.CLOSED,
    (_R.EOF_PENDING, _E.RELEASED): _R.EOF_PENDING,
    (_R.EOF_DELIVERED, _E.DONE): _R.CLOSED,
    (_R.DISCARDED, _E.DONE): _R.CLOSED,
    (_R.DISCARDING, _E.CLOSE_TIMEOUT): _R.CLOSED,
    (_R.OPEN, _E.ABORT): _R.CLOSED,
    (_R.EOF_PENDING, _E.ABORT): _R.CLOSED,
    (_R.EOF_DELIVERED, _E.ABORT): _R.CLOSED,
    (_R.DISCARDING, _E.ABORT): _R.CLOSED,
    (_R.DISCARDED, _E.ABORT): _R.CLOSED,
    (_R.CLOSED, _E.ABORT): _R.CLOSED,
    (_R.OPEN, _E.PEER_RESET): _R.CLOSED,
    (_R.EOF_PENDING, _E.PEER_RESET): _R.CLOSED,
    (_R.EOF_DELIVERED, _E.PEER_RESET): _R.CLOSED,
    (_R.DISCARDING, _E.PEER_RESET): _R.CLOSED,
    (_R.DISCARDED, _E.PEER_RESET): _R.CLOSED,
    (_R.OPEN, _E.SESSION_LOST): _R.CLOSED,
    (_R.EOF_PENDING, _E.SESSION_LOST): _R.CLOSED,
    (_R.EOF_DELIVERED, _E.SESSION_LOST): _R.CLOSED,
    (_R.DISCARDING, _E.SESSION_LOST): _R.CLOSED,
    (_R.DISCARDED, _E.SESSION_LOST): _R.CLOSED,
    (_R.CLOSED, _E.SESSION_LOST): _R.CLOSED,
}

#: The events each half takes part in; an event drives every half whose table names it.
SEND_EVENTS: Final = frozenset(event for _, event in SEND_TRANSITIONS)
RECEIVE_EVENTS: Final = frozenset(event for _, event in RECEIVE_TRANSITIONS)

# The data path compares states by identity with these module globals: on CPython 3.11 reading an
# Enum member as a class attribute (``SendState.OPEN``) costs several times as much.
_SEND_OPEN: Final = SendState.OPEN
_FIN_SENT: Final = SendState.FIN_SENT
_READING: Final = ReceiveState.OPEN
_EOF_PENDING: Final = ReceiveState.EOF_PENDING
_EOF_DELIVERED: Final = ReceiveState.EOF_DELIVERED
_DISCARDING: Final = ReceiveState.DISCARDING
_DISCARDED: Final = ReceiveState.DISCARDED
_FINISHED: Final = ReceiveState.CLOSED


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
    """One yamux stream, seen by its protocol as a transport.

    Its lifecycle is two state machines, one per direction, driven by the same events: an event
    moves every half whose table names it, and an event a half's table names but not for its
    current state raises ``StreamStateError``. That is a bug in shield, never the peer's doing:
    it fails the tests, and in a gateway it propagates to whatever drove the stream, where Twisted
    logs it, rather than leave a stream in a state nobody designed. The tables are
    ``SEND_TRANSITIONS`` and ``RECEIVE_TRANSITIONS``; below, each row is an event, each column the
    state it meets, each cell the next state (``-``: not allowed). Both halves reach ``closed``
    together, on the events that call ``connectionLost``; Twisted's ``connected`` is "not closed",
    ``disconnecting`` is "the receive side has hung up" (loseConnection, or finished).

    ================  ============  ============  ============  ========  ======
    send              open          closing       write_closed  fin_sent  closed
    ================  ============  ============  ============  ========  ======
    lose_write        write_closed  write_closed  write_closed  fin_sent  closed
    lose              closing       closing       write_closed  fin_sent  closed
    fin_sent          -             fin_sent      fin_sent      -         -
    released          -             -             -             fin_sent  -
    done              -             -             -             closed    -
    close_timeout     -             -             -             closed    -
    abort             closed        closed        closed        closed    closed
    peer_reset        closed        closed        closed        closed    -
    session_lost      closed        closed        closed        closed    closed
    ================  ============  ============  ============  ========  ======

    ================  ===========  =============  =============  ==========  =========  ======
    receive           open         eof_pending    eof_delivered  discarding  discarded  closed
    ================  ===========  =============  =============  ==========  =========  ======
    data              open         -              -              discarding  -          -
    peer_fin          eof_pending  -              -              discarded   -          -
    eof_delivered     -            eof_delivered  -              -           -          -
    lose              discarding   discarded      discarded      discarding  discarded  closed
    released          -            eof_pending    -              -           -          -
    done              -            -              closed         -           closed     -
    close_timeout     -            -              -              closed      -          -
    abort             closed       closed         closed         closed      closed     closed
    peer_reset        closed       closed         closed         closed      closed     -
    session_lost      closed       closed         closed         closed      closed     closed
    ================  ===========  =============  =============  ==========  =========  ======

    Read together: ``done`` needs our FIN out and the peer's end delivered (or not wanted);
    ``close_timeout`` comes only after our FIN while the peer's is still missing. After the end,
    a stream takes only what Twisted allows any closed transport (lose, lose_write, abort) and
    ``session_lost`` (MuxProtocol ends every stream it had listed, and one of them may have been
    closed meanwhile by another's ``connectionLost``). ``released`` changes nothing: it confirms what
    ``fin_sent`` and ``peer_fin`` already said (the session forgets a stream only once both FINs
    have crossed), and it can meet a stream only while a paused consumer holds back the end.

    The per-message paths take no table lookup: ``write`` reads ``SendState.writable``, a message
    from the peer is handed on when the receive side is ``open`` (one identity compare) and only
    otherwise checked against the table. Two concerns are flags, not states, because they are flow
    control, orthogonal to the lifecycle: every state may be paused or not, and pausing allows or
    forbids no event. ``_paused``: our consumer paused what we deliver. ``_producer`` with
    ``_streaming`` and ``_producer_paused``: the producer feeding our writes, and whether we paused
    it; it registers and leaves in any state.
    """

    def __init__(self, host: StreamHost, stream_id: int, high_water: int, close_timeout: float) -> None:
        self.stream_id = stream_id
        self.protocol: IProtocol | None = None
        self._host = host
        self._high_water = high_water
        self._close_timeout = close_timeout
        self._send = SendState.OPEN
        self._receive = ReceiveState.OPEN
        # outbound
        self._pending: list[bytes] = []
        self._pending_size = 0
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
        self._close_timer: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"<MuxStream {self.stream_id}>"

    @property
    def send_state(self) -> SendState:
        return self._send

    @property
    def receive_state(self) -> ReceiveState:
        return self._receive

    @property
    def connected(self) -> bool:
        """Twisted's flag: the stream has not finished (``connectionLost`` is still to come)."""
        return self._receive is not _FINISHED

    @property
    def disconnecting(self) -> bool:
        """Twisted's flag: ``loseConnection`` was called, or the stream has finished."""
        return self._receive.hung_up

    def attach(self, protocol: IProtocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)

    # -- ITransport ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        # As with a socket, bytes written after loseConnection still go out before the FIN (a
        # protocol's last words, such as a WebSocket close frame); after loseWriteConnection or
        # once the FIN is out, nothing more can be said.
        if not self._send.writable or not data:
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
        send, receive = self._send, self._receive
        self._transition(StreamEvent.LOSE)
        if receive.hung_up:
            return  # hung up before, or finished: Twisted allows it again
        self._drop_inbox()
        if send is _SEND_OPEN:
            self._host.schedule_flush(self)
        # Our FIN may be out already (loseWriteConnection came first): the timeout starts now.
        self._await_peer_fin()
        # The peer's FIN may already be in, held back behind data just dropped (our consumer had
        # paused us): it is swallowed now, not when a consumer that is gone resumes us.
        self._maybe_finish()

    def loseWriteConnection(self) -> None:
        """Half-close: FIN after the queued data; reading goes on."""
        send = self._send
        self._transition(StreamEvent.LOSE_WRITE)
        if send is _SEND_OPEN:
            self._host.schedule_flush(self)

    def abortConnection(self) -> None:
        """Reset the stream (RST) at once, dropping queued data both ways."""
        if self._receive is not _FINISHED:
            self._host.session.reset_stream(self.stream_id)
            self._host.schedule_flush(self)
        self._finish(StreamEvent.ABORT, Failure(error.ConnectionAborted()))

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
        if self._receive is _FINISHED:
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
        if self._receive is _FINISHED:
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
        # A finished stream has nothing queued (``_finish`` drops it) and no FIN due.
        return bool(self._pending) or self._send.fin_due

    def flush_into(self, session: "Session", limit: int | None = None) -> int:
        """Frame what the send window (and ``limit``) allows, then FIN if asked and everything is
        out. Returns how many payload bytes were framed."""
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
        if not self._pending and self._send.fin_due:
            self._send_fin(session)
        self._resume_producer_if_drained()
        return sent

    def data_received(self, data: bytes) -> None:
        if self._receive is not _READING:
            self._transition(StreamEvent.DATA)  # allowed only while discarding
            self._host.session.acknowledge(self.stream_id, len(data))
            return
        if self._paused or self._inbox:
            self._inbox.append(data)
            self._inbox_size += len(data)
            self._host.budget.held += len(data)
            return
        self._deliver(data)

    def remote_ended(self) -> None:
        self._transition(StreamEvent.PEER_FIN)
        if self._receive is _EOF_PENDING:
            self._drain_inbox()  # parked data first, then the end
        else:
            self._maybe_finish()  # the protocol hung up: the peer's FIN may be all that was missing

    def core_closed(self) -> None:
        """The session has forgotten the stream (both FINs crossed): already known here."""
        self._transition(StreamEvent.RELEASED)

    def reset_by_peer(self, reason: str) -> None:
        self._finish(StreamEvent.PEER_RESET, Failure(error.ConnectionLost(f"stream {self.stream_id} reset: {reason}")))

    def session_lost(self, reason: str) -> None:
        self._finish(StreamEvent.SESSION_LOST, Failure(error.ConnectionLost(f"mux session lost: {reason}")))

    # -- internals ----------------------------------------------------------------------------

    def _transition(self, event: StreamEvent) -> None:
        """Move each half that takes part in ``event`` to its next state, or raise if either
        half's table does not allow ``event`` now (then neither moves)."""
        send, receive = self._send, self._receive
        next_send = SEND_TRANSITIONS.get((send, event)) if event in SEND_EVENTS else send
        next_receive = RECEIVE_TRANSITIONS.get((receive, event)) if event in RECEIVE_EVENTS else receive
        if next_send is None or next_receive is None:
            raise StreamStateError(
                f"{self!r}: {event.value} is not allowed while sending is {send.label}"
                f" and receiving is {receive.label}"
            )
        self._send = next_send
        self._receive = next_receive

    def _send_fin(self, session: "Session") -> None:
        self._transition(StreamEvent.FIN_SENT)
        # end_stream's answer (had the peer's FIN come first?) is not needed: the receive side
        # says so, as the peer's FIN reaches remote_ended before the flush (or, when a protocol
        # flushes from inside a dispatch, later in that same dispatch).
        session.end_stream(self.stream_id)
        if not self._receive.hung_up and IHalfCloseableProtocol.providedBy(self.protocol):
            self.protocol.writeConnectionLost()
        self._await_peer_fin()
        self._maybe_finish()

    def _await_peer_fin(self) -> None:
        """We hung up and our FIN is out, the peer's is not in: it gets ``stream_close_timeout``."""
        if self._send is _FIN_SENT and self._receive is _DISCARDING and self._close_timer is None:
            self._close_timer = self._host.call_later(self._close_timeout, self._close_timed_out)

    def _deliver(self, data: bytes) -> None:
        assert self.protocol is not None
        self.protocol.dataReceived(data)
        if self._paused and self._receive is not _FINISHED:
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
        """Hand parked data to the protocol while it is not paused, then the peer's end if due."""
        inbox = self._inbox
        while inbox and not self._paused and self._receive.delivers:
            chunk = inbox.popleft()
            self._inbox_size -= len(chunk)
            self._host.budget.held -= len(chunk)
            self._deliver(chunk)
        if inbox or self._paused:
            return
        if self._receive is _EOF_PENDING:
            self._transition(StreamEvent.EOF_DELIVERED)
            if IHalfCloseableProtocol.providedBy(self.protocol):
                self.protocol.readConnectionLost()
            else:
                # Like TCP for a protocol that cannot half-close: the peer's EOF closes us too.
                self.loseConnection()
        self._maybe_finish()

    def _drop_inbox(self) -> None:
        """The protocol hung up: what is parked is dropped, and credited back to the peer."""
        dropped = self._inbox_size
        self._inbox.clear()
        self._inbox_size = 0
        self._host.budget.held -= dropped
        if dropped:
            self._host.session.acknowledge(self.stream_id, dropped)
            self._host.schedule_flush(None)  # the credit goes out even when no FIN of ours is due

    def _maybe_finish(self) -> None:
        """Both FINs have crossed and the protocol has had the peer's end (or wanted none)."""
        if self._send is _FIN_SENT and (self._receive is _EOF_DELIVERED or self._receive is _DISCARDED):
            self._finish(StreamEvent.DONE, Failure(error.ConnectionDone()))

    def _close_timed_out(self) -> None:
        self._close_timer = None
        self._host.session.reset_stream(self.stream_id)
        self._host.schedule_flush(self)
        self._finish(
            StreamEvent.CLOSE_TIMEOUT, Failure(error.ConnectionDone("peer did not close the stream in time; reset"))
        )

    def _pause_producer(self) -> None:
        if self._producer is not None and self._streaming and not self._producer_paused:
            self._producer_paused = True
            self._producer.pauseProducing()  # type: ignore[union-attr]  # streaming: a push producer

    def _resume_producer_if_drained(self) -> None:
        producer = self._producer
        if producer is None or self._send is not _SEND_OPEN:
            return
        if self._streaming:
            if self._producer_paused and not self._pending_size:
                self._producer_paused = False
                producer.resumeProducing()
        elif not self._pending_size:
            producer.resumeProducing()

    def _finish(self, event: StreamEvent, reason: Failure) -> None:
        """Close both halves on ``event`` and tell everyone once; a late ``event`` the table
        allows on a finished stream (a second abort, a session ending) does nothing."""
        finished = self._receive is _FINISHED
        self._transition(event)
        if finished:
            return
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

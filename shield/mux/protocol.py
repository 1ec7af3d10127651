"""The Twisted adapter: runs a yamux ``Session`` over any transport (TCP, TLS, in-memory).

One ``MuxProtocol`` per link. It feeds received bytes to the sans-IO core, turns the core's events
into calls on ``MuxStream`` transports, and writes the core's output once per reactor turn so many
small writes coalesce into few frames and one transport write. It is the push producer of its own
transport: when TLS or TCP buffers fill up, stream data stays queued in the streams (whose
producers are then paused), so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Callable
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.addresses import describe_address
from shield.mux.budget import BufferBudget, unlimited
from shield.mux.config import MuxConfig
from shield.mux.errors import SessionClosedError
from shield.mux.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    GoAwayReceived,
    PongReceived,
    StreamClosed,
    StreamEnded,
    StreamOpened,
    StreamRejected,
    StreamReset,
    WindowUpdated,
)
from shield.mux.frames import GoAwayCode
from shield.mux.session import Session
from shield.mux.stream import MuxStream, MuxStreamAddress
from shield.transports import IStreamTransport
from shield.ops.ratelog import RateLimitedLog

#: Payload framed by one flush at most (see ``MuxProtocol._flush``).
FLUSH_LIMIT = 256 * 1024
#: After a protocol error, how long the peer gets to read our GoAway before the link is cut.
GO_AWAY_LINGER = 5.0


class _Pending(TypingProtocol):
    """A call queued for later: a ``DelayedCall`` or the reactor's end-of-turn entry."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class MuxOwner(TypingProtocol):
    """What a link's mux tells the object that gives the link its role.

    The DMZ end of a connector link, the connector end and a cluster member link each compose a
    ``MuxProtocol`` with themselves as its owner, rather than subclassing it: the mux stays one
    class whose internals nobody overrides, and each role sees only these five events.
    """

    def mux_connected(self) -> None:
        """The underlying connection is up (TLS may still be shaking hands)."""

    def mux_secured(self) -> None:
        """The TLS handshake completed: the peer's certificate can be read now."""

    def mux_going_away(self) -> None:
        """``go_away`` was called here: close what the role keeps open (its control stream)."""

    def stream_rejected(self, stream_id: int, reason: str) -> bool:
        """This side refused a stream the peer opened (max-streams reached, or going away): True
        when the owner accounted for it, else the mux logs it."""

    def mux_lost(self, reason: Failure) -> None:
        """The connection is gone and every stream has ended; ``MuxProtocol.ended_by`` says
        why when this side ended it."""


def _refused_summary(key: Hashable, more: int, last: str, every: float) -> str:
    return f"{more} more streams refused in the last second: nothing accepts streams here (last: {last})"


def _default_clock() -> IReactorTime:
    from twisted.internet import reactor

    return reactor


@implementer(IPushProducer, IHandshakeListener)
class MuxProtocol(Protocol):
    """A yamux session over ``self.transport``; streams are ``MuxStream`` transports.

    ``client`` is True on the side that opened the underlying connection (odd stream ids).
    Streams the peer opens get a protocol from ``stream_factory.buildProtocol(address)``; a
    factory returning None (or no factory at all) refuses the stream with RST. An ``owner``
    (``MuxOwner``) hears of the link's life; ``keepalive_after_handshake`` makes a link under
    TLS ping only once TLS is up: before that its handshake deadline rules, and a peer that never
    finishes TLS gets one reason, not two.
    """

    log = Logger()
    transport: IStreamTransport  # connected before any event reaches the protocol (shield.transports)

    def __init__(
        self,
        client: bool,
        config: MuxConfig | None = None,
        stream_factory: IProtocolFactory | None = None,
        clock: IReactorTime | None = None,
        budget: BufferBudget | None = None,
        owner: MuxOwner | None = None,
        keepalive_after_handshake: bool = False,
    ) -> None:
        self.config = config if config is not None else MuxConfig()
        self.owner = owner
        self.keepalive_after_handshake = keepalive_after_handshake
        #: Why this side ended the link (a protocol error, ``close``, ``abort``), once it is lost;
        #: None when the peer or the network ended it.
        self.ended_by: str | None = None
        #: What the gateway's streams may hold at once, shared by all its links.
        self.budget = budget if budget is not None else unlimited()
        self.session = Session(client, self.config)
        self.stream_factory = stream_factory
        self.streams: dict[int, MuxStream] = {}
        self._clock = clock if clock is not None else _default_clock()
        # The frames a turn's writes produce go out in one write at the end of the turn: a
        # reactor may offer a cheap queue for that (shield's does), else ``callLater(0)``.
        turn_end = getattr(self._clock, "call_at_turn_end", None)
        self._at_turn_end: Callable[[Callable[[], object]], _Pending] = (
            turn_end if turn_end is not None else lambda f: self._clock.callLater(0, f)
        )
        self._dirty: dict[int, MuxStream] = {}
        self._flush_call: _Pending | None = None
        self._dispatching = False
        self._transport_paused = False
        self._keepalive: LoopingCall | None = None
        self._ping_waiters: dict[int, tuple[Deferred[float], float]] = {}
        self._closed_waiters: list[Deferred[str]] = []
        self._peer_away_waiters: list[Deferred[int]] = []
        self._going_away = False
        self._connected = False
        self._close_reason: str | None = None
        self._peer_away_code: int | None = None
        self._batch: list[bytes] | None = None
        self._refused_streams = RateLimitedLog(self.log, self._clock, summary=_refused_summary)

    # -- public API ----------------------------------------------------------------------------

    def open_stream(self, protocol: IProtocol) -> MuxStream:
        """Open a stream to the peer and connect ``protocol`` to it.

        Raises ``GoingAwayError``, ``StreamLimitError`` or ``SessionClosedError`` (shield.mux.errors)
        when no stream can be opened now.
        """
        if not self._connected:
            raise SessionClosedError(self._close_reason or "mux session is not connected")
        stream_id = self.session.open_stream()
        stream = self._new_stream(stream_id)
        self.schedule_flush(None)
        stream.attach(protocol)
        return stream

    def ping(self) -> Deferred[float]:
        """Measure the round trip to the peer (seconds)."""
        now = self._clock.seconds()
        opaque = self.session.ping(now)
        waiter: Deferred[float] = Deferred()
        self._ping_waiters[opaque] = (waiter, now)
        self.schedule_flush(None)
        return waiter

    def go_away(self) -> Deferred[str]:
        """Refuse new streams, let open ones finish, then close the link.

        The Deferred fires with the close reason once the connection is gone.
        """
        closed = self.when_closed()
        if self._connected and not self._going_away:
            self._going_away = True
            self.session.go_away()
            self.log.info("mux {peer}: going away, open streams: {n}", peer=self._peer(), n=len(self.streams))
            self.schedule_flush(None)
            self._close_if_drained()
        if self.owner is not None:
            self.owner.mux_going_away()
        return closed

    def when_closed(self) -> Deferred[str]:
        """Fires with a human-readable reason once the underlying connection is gone."""
        if self._close_reason is not None and not self._connected:
            return succeed(self._close_reason)
        waiter: Deferred[str] = Deferred()
        self._closed_waiters.append(waiter)
        return waiter

    def when_peer_goes_away(self) -> Deferred[int]:
        """Fires with the GoAway code once the peer refuses new streams."""
        if self._peer_away_code is not None:
            return succeed(self._peer_away_code)
        waiter: Deferred[int] = Deferred()
        self._peer_away_waiters.append(waiter)
        return waiter

    def close(self, reason: str, linger: float = 2.0) -> None:
        """Send what is queued, then close the link without waiting for open streams (they end
        with ``reason``); cut it if the peer has not let go after ``linger`` seconds."""
        if not self._connected or self.transport is None:
            return
        if self._close_reason is None:
            self._close_reason = reason
        self._flush()
        self._close_transport()
        self._clock.callLater(linger, self._abort_if_connected)

    def abort(self, reason: str) -> None:
        """Cut the link now; every stream ends with ``reason``."""
        if not self._connected or self.transport is None:
            return
        if self._close_reason is None:
            self._close_reason = reason
        self.transport.abortConnection()

    @property
    def going_away(self) -> bool:
        return self.session.local_go_away or self.session.remote_go_away

    # -- Protocol ------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._connected = True
        self.transport.registerProducer(self, True)
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass
        if not self.keepalive_after_handshake:
            self.start_keepalive()
        if self.owner is not None:
            self.owner.mux_connected()

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: TLS under this mux is up."""
        if self.keepalive_after_handshake:
            self.start_keepalive()
        if self.owner is not None:
            self.owner.mux_secured()

    def start_keepalive(self) -> None:
        interval = self.config.keepalive_interval
        if interval > 0 and self._keepalive is None and self._connected:
            self._keepalive = LoopingCall(self._keepalive_tick)
            self._keepalive.clock = self._clock
            self._keepalive.start(interval, now=False)

    def begin_batch(self) -> None:
        """The transport is about to deliver several pieces of one read (TLS records)."""
        self._batch = []

    def end_batch(self) -> None:
        """Parse the whole read at once: fewer, larger events for the streams."""
        batch, self._batch = self._batch, None
        if batch:
            self._process(batch[0] if len(batch) == 1 else b"".join(batch))

    def dataReceived(self, data: bytes) -> None:
        if self._batch is not None:
            self._batch.append(data)
        else:
            self._process(data)

    def _process(self, data: bytes) -> None:
        if not self._connected:
            return
        events = self.session.receive_data(data, self._clock.seconds())
        self._dispatching = True
        try:
            for event in events:
                self._dispatch(event)
        finally:
            self._dispatching = False
        self._flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._batch:  # data that arrived in the same read as the close comes first
            self.end_batch()
        self._batch = None
        terminated = self.session.terminated
        self.ended_by = terminated.reason if terminated is not None else self._close_reason
        self._connected = False
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self._close_reason is None:
            self._close_reason = _describe(reason)
        if self.session.terminated is None:
            self.session.terminate(GoAwayCode.NORMAL, self._close_reason)
        self._end_streams(self._close_reason)
        self._dirty.clear()
        pings, self._ping_waiters = self._ping_waiters, {}
        for waiter, _ in pings.values():
            waiter.errback(SessionClosedError(self._close_reason))
        waiters, self._closed_waiters = self._closed_waiters, []
        for closed in waiters:
            closed.callback(self._close_reason)
        if self.owner is not None:
            self.owner.mux_lost(reason)

    # -- IPushProducer: our transport's buffer is full / has room -------------------------------

    def pauseProducing(self) -> None:
        self._transport_paused = True

    def resumeProducing(self) -> None:
        self._transport_paused = False
        self.schedule_flush(None)

    def stopProducing(self) -> None:
        self._transport_paused = True

    # -- StreamHost: what streams call ---------------------------------------------------------

    def schedule_flush(self, stream: MuxStream | None) -> None:
        if stream is not None and stream.stream_id in self.streams:
            self._dirty[stream.stream_id] = stream
        if self._dispatching or self._flush_call is not None or not self._connected:
            return
        self._flush_call = self._at_turn_end(self._flush)

    def stream_finished(self, stream: MuxStream) -> None:
        self.streams.pop(stream.stream_id, None)
        self._dirty.pop(stream.stream_id, None)
        self._close_if_drained()

    def call_later(self, delay: float, f: Callable[..., Any], *args: object) -> IDelayedCall:
        return self._clock.callLater(delay, f, *args)

    def now(self) -> float:
        return self._clock.seconds()

    def link_address(self, peer: bool) -> IAddress | None:
        if self.transport is None:
            return None
        return self.transport.getPeer() if peer else self.transport.getHost()

    # -- internals -----------------------------------------------------------------------------

    def _new_stream(self, stream_id: int) -> MuxStream:
        stream = MuxStream(
            self, stream_id, self.config.write_buffer_high_water, self.config.stream_close_timeout
        )
        self.streams[stream_id] = stream
        return stream

    def _flush(self) -> None:
        """Frame queued stream data (unless the transport is full) and write it in one go.

        One flush frames at most ``FLUSH_LIMIT`` bytes of payload, taking streams in turn: what
        is left waits for the next flush, which comes at once unless the transport is full. So
        the link never queues more than one flush in this process, and no stream has to wait
        behind another's whole window.
        """
        self._flush_call = None
        if not self._connected:
            return
        session = self.session
        if not self._transport_paused and self._dirty and session.terminated is None:
            dirty = self._dirty
            room = FLUSH_LIMIT
            for stream_id in list(dirty):
                if room <= 0:
                    break
                stream = dirty.pop(stream_id, None)
                if stream is None:
                    continue  # finished by a protocol that an earlier stream's flush called
                room -= stream.flush_into(session, room)
                if stream.has_output and session.send_window(stream_id) > 0:
                    dirty[stream_id] = stream  # to the back of the line
            if dirty:
                self.schedule_flush(None)
        data = session.data_to_send()
        if data:
            self.transport.write(data)

    def _dispatch(self, event: Event) -> None:
        match event:
            case DataReceived(stream_id, data):
                stream = self.streams.get(stream_id)
                if stream is not None:
                    stream.data_received(data)
                else:
                    self.session.acknowledge(stream_id, len(data))
            case WindowUpdated(stream_id, _):
                stream = self.streams.get(stream_id)
                if stream is not None and stream.has_output:
                    self._dirty[stream_id] = stream
            case StreamOpened(stream_id):
                self._accept_stream(stream_id)
            case StreamEnded(stream_id):
                stream = self.streams.get(stream_id)
                if stream is not None:
                    stream.remote_ended()
            case StreamClosed(stream_id):
                stream = self.streams.get(stream_id)
                if stream is not None:
                    stream.core_closed()
            case StreamReset(stream_id, reason):
                stream = self.streams.get(stream_id)
                if stream is not None:
                    stream.reset_by_peer(reason)
            case StreamRejected(stream_id, reason):
                if self.owner is not None and self.owner.stream_rejected(stream_id, reason):
                    return
                self.log.warn(
                    "mux {peer}: refused stream {id}: {reason}", peer=self._peer(), id=stream_id, reason=reason
                )
            case PongReceived(opaque, _):
                self._pong(opaque)
            case GoAwayReceived(code):
                self._peer_away_code = int(code)
                waiters, self._peer_away_waiters = self._peer_away_waiters, []
                for waiter in waiters:
                    waiter.callback(int(code))
            case ConnectionTerminated(code, reason):
                self._terminated(int(code), reason)
            case _:
                pass

    def _accept_stream(self, stream_id: int) -> None:
        stream = self._new_stream(stream_id)
        protocol = None
        if self.stream_factory is not None:
            protocol = self.stream_factory.buildProtocol(stream.getPeer())
        if protocol is None:
            # One line a second at most: a peer opening streams without end must not flood the log.
            self._refused_streams.warn(
                "refused", f"mux {self._peer()}: refused stream {stream_id}: nothing accepts streams here"
            )
            self.streams.pop(stream_id, None)
            self.session.reset_stream(stream_id)
            return
        stream.attach(protocol)

    def _pong(self, opaque: int) -> None:
        now = self._clock.seconds()
        answered = self._ping_waiters.pop(opaque, None)
        if answered is not None:
            waiter, sent = answered
            waiter.callback(now - sent)

    def _keepalive_tick(self) -> None:
        events = self.session.keepalive(self._clock.seconds())
        for event in events:
            self._dispatch(event)
        self._flush()

    def _terminated(self, code: int, reason: str) -> None:
        self._close_reason = reason
        self.log.warn("mux {peer}: session ended: {reason}", peer=self._peer(), reason=reason)
        self._end_streams(reason)
        self._dirty.clear()
        transport = self.transport
        if transport is None:
            return
        data = self.session.data_to_send()
        if not data or self.session.peer_unresponsive:
            # The peer ended it, or stopped answering (a silent partition: a graceful close would
            # wait for it in vain): cut the link now.
            transport.abortConnection()
            return
        transport.write(data)
        self._close_transport()
        self._clock.callLater(GO_AWAY_LINGER, self._abort_if_connected)

    def _end_streams(self, reason: str) -> None:
        """Tell every stream the session is gone; one failing protocol must not spare the others."""
        for stream in list(self.streams.values()):
            try:
                stream.session_lost(reason)
            except Exception:
                self.log.failure("mux {peer}: stream {id} failed while closing", peer=self._peer(), id=stream.stream_id)
        self.streams.clear()

    @property
    def is_open(self) -> bool:
        """The underlying connection is up (``connected`` is Twisted's own flag, set once)."""
        return self._connected

    def _close_transport(self) -> None:
        """Close cleanly. TLS waits for registered producers before it shuts down, so go first."""
        transport = self.transport
        if transport is None:
            return
        transport.unregisterProducer()
        transport.loseConnection()

    def _abort_if_connected(self) -> None:
        if self._connected and self.transport is not None:
            self.transport.abortConnection()

    def _close_if_drained(self) -> None:
        if self._going_away and not self.streams and self._connected and self.transport is not None:
            data = self.session.data_to_send()
            if data:
                self.transport.write(data)
            self._close_transport()

    def _peer(self) -> str:
        return describe_address(self.link_address(peer=True))


class MuxFactory(Factory):
    """Builds a ``MuxProtocol`` per connection; both gateways use one (client or server side)."""

    def __init__(
        self,
        client: bool,
        stream_factory: IProtocolFactory | None,
        config: MuxConfig | None = None,
        clock: IReactorTime | None = None,
        budget: BufferBudget | None = None,
    ) -> None:
        self.client = client
        self.stream_factory = stream_factory
        self.config = config
        self.clock = clock
        self.budget = budget

    def buildProtocol(self, addr: IAddress | None) -> MuxProtocol:
        protocol = MuxProtocol(self.client, self.config, self.stream_factory, self.clock, self.budget)
        protocol.factory = self
        return protocol


#: Twisted's words for how a connection ended, said briefly for logs and close reasons.
_ENDINGS = {
    "ConnectionDone": "connection closed",
    "ConnectionLost": "connection lost",
    "ConnectionAborted": "connection aborted",
}


def _describe(reason: Failure) -> str:
    name = reason.type.__name__
    if name in _ENDINGS:
        return _ENDINGS[name]
    message = reason.getErrorMessage()
    return f"{name}: {message}" if message else name


__all__ = ["MuxFactory", "MuxProtocol", "MuxStream", "MuxStreamAddress"]

"""The yamux session as a sans-IO state machine: bytes in, events out, bytes to send.

No sockets, no reactor, no clock: whoever drives it passes received bytes to
``receive_data`` (with the current time, used only for ping round trips), acts on the events,
calls the ``open_stream``/``send_data``/... methods, and writes ``data_to_send()`` to the wire.

Flow control follows the spec: each stream starts with a 256 KiB window in both directions;
this side grants ``config.stream_window`` as soon as the stream is opened or accepted, and gives
credit back only when the application says it consumed data (``acknowledge``). A reader that
stops consuming therefore stops the writer at the far end, and a stream never buffers more than
its window.

A peer that breaks the protocol gets GoAway(protocol error) and a ``ConnectionTerminated`` event
naming the violation; a violation that concerns only one stream (data after FIN) resets just that
stream. Nothing here raises at the peer's bidding.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from shield.mux.config import MuxConfig
from shield.mux.errors import (
    GoingAwayError,
    SessionClosedError,
    StreamClosedError,
    StreamIdsExhaustedError,
    StreamLimitError,
)
from shield.mux.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    GoAwayReceived,
    PongReceived,
    StreamAccepted,
    StreamClosed,
    StreamEnded,
    StreamOpened,
    StreamRejected,
    StreamReset,
    WindowUpdated,
)
from shield.mux.frames import (
    HEADER,
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_UINT32,
    PROTOCOL_VERSION,
    Flag,
    FrameType,
    GoAwayCode,
    HeaderError,
)


# The wire's numbers as plain ints: the hot path compares and packs these once or more per frame,
# and enum construction and IntFlag arithmetic cost a microsecond each.
_DATA = int(FrameType.DATA)
_WINDOW_UPDATE = int(FrameType.WINDOW_UPDATE)
_PING = int(FrameType.PING)
_GO_AWAY = int(FrameType.GO_AWAY)
_SYN = int(Flag.SYN)
_ACK = int(Flag.ACK)
_FIN = int(Flag.FIN)
_RST = int(Flag.RST)
_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from


def _header(type_: int, flags: int, stream_id: int, length: int) -> bytes:
    return _pack_header(PROTOCOL_VERSION, type_, flags, stream_id, length)


class StreamState(Enum):
    IDLE = "idle"  # never used
    OPEN = "open"
    HALF_CLOSED_LOCAL = "half-closed-local"  # this side sent FIN
    HALF_CLOSED_REMOTE = "half-closed-remote"  # the peer sent FIN
    CLOSED = "closed"  # finished or reset; the id is released


class _Violation(Exception):
    """Internal: the peer broke the protocol; the message becomes the go-away reason."""


@dataclass(slots=True)
class _Stream:
    stream_id: int
    local: bool  # opened by this side
    send_window: int
    recv_window: int  # bytes the peer may still send
    window: int = INITIAL_WINDOW  # the receive window this stream grants now (may grow)
    consumed: int = 0  # acknowledged by the application, not yet granted back
    last_grant: float | None = None  # when credit was last given back (for window growth)
    local_open: bool = True
    remote_open: bool = True
    acked: bool = False


class Session:
    """One yamux session. ``client`` picks odd stream ids (the connection's initiator)."""

    def __init__(self, client: bool, config: MuxConfig | None = None) -> None:
        #: Set when the session ended because the peer stopped answering pings: nothing we
        #: still had to send can reach it, so the connection is cut rather than closed.
        self.peer_unresponsive = False
        self.client = client
        self.config = config if config is not None else MuxConfig()
        self._window = self.config.stream_window
        self._window_limit = self.config.window_limit
        self._growth_interval = self.config.window_growth_interval
        self._frame_limit = self.config.frame_length_limit
        self._send_frame_size = self.config.send_frame_size
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1 if client else 2
        self._remote_parity = 0 if client else 1
        # Highest id the peer opened so far; starts just below its first id (1 or 2).
        self._highest_remote_id = -1 if self._remote_parity else 0
        # Ids below the highest that the peer has allocated but whose SYN has not arrived yet:
        # peers (Go's yamux among them) pick ids before queueing SYNs, so concurrent opens can
        # arrive out of order. Bounded by ``max_streams``.
        self._remote_id_gaps: set[int] = set()
        self._out: list[bytes] = []
        self._inbuf = bytearray()
        self._payload_left = 0
        self._payload_stream: _Stream | None = None
        self._payload_flags = 0
        self._payload_stream_id = 0
        self._pings: dict[int, float] = {}
        self._next_ping = 0
        self._local_go_away = False
        self._remote_go_away = False
        self._terminated: ConnectionTerminated | None = None

    # -- state queries -------------------------------------------------------------------------

    @property
    def terminated(self) -> ConnectionTerminated | None:
        """Why the session ended, or None while it is alive."""
        return self._terminated

    @property
    def local_go_away(self) -> bool:
        return self._local_go_away

    @property
    def remote_go_away(self) -> bool:
        return self._remote_go_away

    @property
    def stream_ids(self) -> list[int]:
        return list(self._streams)

    @property
    def outstanding_pings(self) -> int:
        return len(self._pings)

    def stream_state(self, stream_id: int) -> StreamState:
        stream = self._streams.get(stream_id)
        if stream is None:
            return StreamState.CLOSED if self._id_was_used(stream_id) else StreamState.IDLE
        if stream.local_open and stream.remote_open:
            return StreamState.OPEN
        return StreamState.HALF_CLOSED_REMOTE if stream.local_open else StreamState.HALF_CLOSED_LOCAL

    def send_window(self, stream_id: int) -> int:
        """Bytes ``send_data`` would accept now on this stream (0 if it is not writable)."""
        stream = self._streams.get(stream_id)
        return stream.send_window if stream is not None and stream.local_open else 0

    def receive_window(self, stream_id: int) -> int:
        """Bytes the peer may still send on this stream before more credit is granted."""
        stream = self._streams.get(stream_id)
        return stream.recv_window if stream is not None else 0

    def is_local(self, stream_id: int) -> bool:
        return stream_id % 2 != self._remote_parity

    # -- output -------------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued for the wire since the last call, as one buffer."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    # -- commands from the application ---------------------------------------------------------

    def open_stream(self) -> int:
        """Open a new stream (SYN with our window) and return its id."""
        self._check_alive()
        if self._local_go_away or self._remote_go_away:
            side = "this side" if self._local_go_away else "the peer"
            raise GoingAwayError(f"no new streams: {side} sent go-away")
        if len(self._streams) >= self.config.max_streams:
            raise StreamLimitError(f"stream limit of {self.config.max_streams} reached")
        stream_id = self._next_id
        if stream_id > MAX_UINT32:
            raise StreamIdsExhaustedError("stream ids exhausted on this session")
        self._next_id += 2
        self._streams[stream_id] = _Stream(
            stream_id, local=True, send_window=INITIAL_WINDOW, recv_window=self._window, window=self._window
        )
        self._out.append(
            _header(_WINDOW_UPDATE, _SYN, stream_id, self._window - INITIAL_WINDOW)
        )
        return stream_id

    def send_data(self, stream_id: int, data: bytes, limit: int | None = None) -> int:
        """Frame as much of ``data`` as the send window (and ``limit``, if given) allows; return
        how many bytes were taken.

        The caller keeps the rest and retries after a ``WindowUpdated`` event.
        """
        stream = self._writable(stream_id)
        n = min(len(data), stream.send_window)
        if limit is not None and limit < n:
            n = limit
        if n <= 0:
            return 0
        size = self._send_frame_size
        out = self._out
        for offset in range(0, n, size):
            end = min(offset + size, n)
            out.append(_header(_DATA, 0, stream_id, end - offset))
            out.append(data[offset:end])
        stream.send_window -= n
        return n

    def end_stream(self, stream_id: int) -> bool:
        """Half-close: send FIN. Returns True when that finished the stream (the peer had too)."""
        stream = self._writable(stream_id)
        stream.local_open = False
        self._out.append(_header(_WINDOW_UPDATE, _FIN, stream_id, 0))
        if not stream.remote_open:
            del self._streams[stream_id]
            return True
        return False

    def reset_stream(self, stream_id: int) -> None:
        """Abort the stream (RST) in both directions; unknown or finished streams are ignored."""
        stream = self._streams.pop(stream_id, None)
        if stream is None or self._terminated is not None:
            return
        self._out.append(_header(_WINDOW_UPDATE, _RST, stream_id, 0))
        if self._payload_stream is stream:
            self._payload_stream = None

    def credit_due(self, stream_id: int, n: int) -> bool:
        """Would acknowledging ``n`` more bytes give credit back (so a ``cap`` would matter)?"""
        stream = self._streams.get(stream_id)
        return stream is not None and stream.consumed + n >= stream.window // 2

    def window(self, stream_id: int) -> int:
        """The receive window this stream grants now (the base window, or more if it grew)."""
        stream = self._streams.get(stream_id)
        return stream.window if stream is not None else 0

    def acknowledge(self, stream_id: int, n: int, now: float | None = None, cap: int | None = None) -> None:
        """The application consumed ``n`` delivered bytes: give the peer credit back.

        Credit is granted in batches of half a window, so a steady reader sends few updates.
        With ``now`` (seconds) and a ``max_stream_window``, a reader that consumed half a window
        within ``window_growth_interval`` of the previous grant doubles its window: the stream is
        limited by the window, not by its reader.

        ``cap``, when given, is the largest window the application allows this stream now (what
        its consumer and the gateway's budget can absorb; never less than the configured
        ``stream_window``): growth stops there, and a window above it shrinks back by withholding
        the difference from the credit it would have given.
        """
        stream = self._streams.get(stream_id)
        if stream is None or not stream.remote_open or n <= 0:
            return
        consumed = stream.consumed + n
        if consumed + stream.recv_window > stream.window:
            raise ValueError(
                f"stream {stream_id}: acknowledged more bytes than were delivered"
            )
        limit = self._window_limit
        if cap is not None:
            limit = min(limit, max(cap, self._window))
            if stream.window > limit:
                cut = min(stream.window - limit, consumed)
                stream.window -= cut
                consumed -= cut
        if consumed < stream.window // 2:
            stream.consumed = consumed
            return
        grant = consumed
        if now is not None:
            last, stream.last_grant = stream.last_grant, now
            if last is not None and now - last <= self._growth_interval and stream.window < limit:
                growth = min(stream.window, limit - stream.window)
                stream.window += growth
                grant += growth
        stream.recv_window += grant
        stream.consumed = 0
        self._out.append(_header(_WINDOW_UPDATE, 0, stream_id, grant))

    def ping(self, now: float) -> int:
        """Send a ping; the answer arrives as ``PongReceived`` with the round trip."""
        self._check_alive()
        opaque = self._next_ping
        self._next_ping = (opaque + 1) & MAX_UINT32
        self._pings[opaque] = now
        self._out.append(_header(_PING, _SYN, 0, opaque))
        return opaque

    def keepalive(self, now: float) -> list[Event]:
        """Called every keepalive interval: ping, or end the session after too many missed pongs."""
        if self._terminated is not None:
            return []
        missed = len(self._pings)
        limit = self.config.keepalive_missed_limit
        if missed >= limit:
            events: list[Event] = []
            self.peer_unresponsive = True
            self._terminate(
                GoAwayCode.INTERNAL_ERROR,
                f"keepalive timeout: {missed} pings unanswered",
                events,
                send=False,
            )
            return events
        self.ping(now)
        return []

    def go_away(self) -> None:
        """Graceful shutdown: refuse new streams from now on; open streams carry on."""
        if self._terminated is not None or self._local_go_away:
            return
        self._local_go_away = True
        self._out.append(_header(_GO_AWAY, 0, 0, GoAwayCode.NORMAL))

    def terminate(self, code: GoAwayCode, reason: str) -> ConnectionTerminated:
        """End the session now with GoAway(code); every open stream is dropped."""
        events: list[Event] = []
        if self._terminated is None:
            self._terminate(code, reason, events, send=True)
        assert self._terminated is not None
        return self._terminated

    # -- input --------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float = 0.0) -> list[Event]:
        """Feed bytes from the wire; returns the events they caused, in order."""
        events: list[Event] = []
        if self._terminated is not None:
            return events
        # Work on the caller's bytes directly unless a partial frame is pending: payload that
        # spans a whole chunk is then handed on without a copy.
        pending = self._inbuf
        buffered = bool(pending)
        if buffered:
            pending += data
            buf: bytes | bytearray = pending
        else:
            buf = data
        pos = 0
        end = len(buf)
        unpack = _unpack_header
        try:
            while self._terminated is None:
                if self._payload_left:
                    available = end - pos
                    if not available:
                        break
                    n = available if available < self._payload_left else self._payload_left
                    stream = self._payload_stream
                    if stream is not None:
                        chunk = buf if (n == end and not buffered) else bytes(buf[pos : pos + n])
                        events.append(DataReceived(stream.stream_id, chunk))  # type: ignore[arg-type]  # a memoryview of the read buffer when the whole read is one frame: no copy
                    pos += n
                    self._payload_left -= n
                    if self._payload_left:
                        break
                    if self._payload_flags:
                        self._apply_close_flags(self._payload_stream, self._payload_flags, events)
                    self._payload_stream = None
                    continue
                if end - pos < HEADER_SIZE:
                    break
                version, type_, flags, stream_id, length = unpack(buf, pos)
                if version != PROTOCOL_VERSION:
                    raise HeaderError(f"unsupported yamux version {version}")
                pos += HEADER_SIZE
                flags &= 0xF
                if type_ == _DATA:
                    stream = self._data_frame(flags, stream_id, length, events)
                    if not length:
                        if flags:
                            self._apply_close_flags(stream, flags, events)
                    elif end - pos >= length:
                        # The whole payload is here (the common case): no payload state.
                        if stream is not None:
                            chunk = bytes(buf[pos : pos + length]) if (pos or buffered or length != end) else buf
                            events.append(DataReceived(stream_id, chunk))  # type: ignore[arg-type]  # as above
                        pos += length
                        if flags:
                            self._apply_close_flags(stream, flags, events)
                    else:
                        self._payload_left = length
                        self._payload_stream = stream
                        self._payload_flags = flags
                elif type_ == _WINDOW_UPDATE:
                    self._window_frame(flags, stream_id, length, events)
                elif type_ == _PING:
                    self._ping_frame(flags, stream_id, length, events, now)
                elif type_ == _GO_AWAY:
                    self._go_away_frame(stream_id, length, events)
                else:
                    raise HeaderError(f"unknown frame type {type_}")
        except (_Violation, HeaderError) as violation:
            self._terminate(GoAwayCode.PROTOCOL_ERROR, str(violation), events, send=True)
        if self._terminated is not None:
            pending.clear()
        elif buffered:
            del pending[:pos]
        elif pos < end:
            pending += buf[pos:]
        return events

    # -- frame handling -----------------------------------------------------------------------

    def _ping_frame(self, flags: int, stream_id: int, opaque: int, events: list[Event], now: float) -> None:
        if stream_id != 0:
            raise _Violation(f"ping on stream {stream_id}; pings belong to stream 0")
        if flags & _SYN:
            self._out.append(_header(_PING, _ACK, 0, opaque))
        elif flags & _ACK:
            sent = self._pings.get(opaque)
            if sent is not None:
                # Answers come in order, so older pings still listed were lost with the
                # peer's state; this answer vouches for the link just the same.
                for earlier in list(self._pings):
                    del self._pings[earlier]
                    if earlier == opaque:
                        break
                events.append(PongReceived(opaque, now - sent))

    def _go_away_frame(self, stream_id: int, code: int, events: list[Event]) -> None:
        if stream_id != 0:
            raise _Violation(f"go-away on stream {stream_id}; it belongs to stream 0")
        self._remote_go_away = True
        events.append(GoAwayReceived(_go_away_code(code)))
        if code != GoAwayCode.NORMAL:
            self._terminate(_go_away_code(code), f"peer ended the session: {_describe_code(code)}", events, send=False)

    def _frame_stream(self, kind: str, flags: int, stream_id: int, events: list[Event]) -> _Stream | None:
        """The stream a Data or WindowUpdate frame is for (None: gone), after SYN/ACK handling."""
        if stream_id == 0:
            raise _Violation(f"{kind} frame on stream 0")
        stream = self._streams.get(stream_id)
        if flags & _SYN:
            stream = self._accept_stream(stream_id, events)
        elif stream is None:
            self._check_past_stream(stream_id)
        elif flags & _ACK and stream.local and not stream.acked:
            stream.acked = True
            events.append(StreamAccepted(stream_id))
        return stream

    def _data_frame(self, flags: int, stream_id: int, length: int, events: list[Event]) -> _Stream | None:
        """Check a Data frame's header and take its length from the receive window.

        Returns the stream its payload goes to, or None when the payload is to be skipped.
        """
        if flags or stream_id == 0:
            stream = self._frame_stream("data", flags, stream_id, events)
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                self._check_past_stream(stream_id)
        if length > self._frame_limit:
            raise _Violation(
                f"data frame of {length} bytes on stream {stream_id} exceeds the "
                f"{self._frame_limit} byte limit"
            )
        if stream is not None and length:
            if not stream.remote_open:
                self._reset(stream, "data after the peer's FIN", events)
                return None
            if length > stream.recv_window:
                raise _Violation(
                    f"stream {stream_id}: {length} bytes exceed the receive window of "
                    f"{stream.recv_window}"
                )
            stream.recv_window -= length
        return stream

    def _window_frame(self, flags: int, stream_id: int, delta: int, events: list[Event]) -> None:
        stream = self._frame_stream("window_update", flags, stream_id, events)
        if stream is not None and delta:
            window = stream.send_window + delta
            if window > MAX_UINT32:
                raise _Violation(f"stream {stream_id}: window update overflows 2**32-1")
            stream.send_window = window
            if stream.local_open:
                events.append(WindowUpdated(stream_id, window))
        if flags:
            self._apply_close_flags(stream, flags, events)

    def _accept_stream(self, stream_id: int, events: list[Event]) -> _Stream | None:
        if stream_id % 2 != self._remote_parity:
            raise _Violation(f"peer opened stream {stream_id}, an id of this side's parity")
        if stream_id in self._streams:
            raise _Violation(f"peer reused stream id {stream_id} while it is open")
        if stream_id <= self._highest_remote_id:
            if stream_id not in self._remote_id_gaps:
                raise _Violation(f"peer reused stream id {stream_id}, which it used before")
            self._remote_id_gaps.discard(stream_id)
        else:
            skipped = (stream_id - self._highest_remote_id) // 2 - 1
            if len(self._remote_id_gaps) + skipped > self.config.max_streams:
                raise _Violation(
                    f"peer jumped to stream id {stream_id}, leaving more than "
                    f"{self.config.max_streams} lower ids unopened"
                )
            self._remote_id_gaps.update(range(self._highest_remote_id + 2, stream_id, 2))
            self._highest_remote_id = stream_id
        refusal = None
        if self._local_go_away:
            refusal = "going away"
        elif len(self._streams) >= self.config.max_streams:
            refusal = f"stream limit of {self.config.max_streams} reached"
        if refusal is not None:
            self._out.append(_header(_WINDOW_UPDATE, _RST, stream_id, 0))
            events.append(StreamRejected(stream_id, refusal))
            return None
        stream = _Stream(
            stream_id, local=False, send_window=INITIAL_WINDOW, recv_window=self._window, acked=True,
            window=self._window,
        )
        self._streams[stream_id] = stream
        self._out.append(
            _header(_WINDOW_UPDATE, _ACK, stream_id, self._window - INITIAL_WINDOW)
        )
        events.append(StreamOpened(stream_id))
        return stream

    def _check_past_stream(self, stream_id: int) -> None:
        """A frame for a stream we do not hold is fine only if the stream existed once."""
        if not self._id_was_used(stream_id):
            raise _Violation(f"frame for stream {stream_id}, which was never opened")

    def _id_was_used(self, stream_id: int) -> bool:
        if stream_id == 0:
            return False
        if stream_id % 2 == self._remote_parity:
            return stream_id <= self._highest_remote_id and stream_id not in self._remote_id_gaps
        return stream_id < self._next_id

    def _apply_close_flags(self, stream: _Stream | None, flags: int, events: list[Event]) -> None:
        if stream is None or stream.stream_id not in self._streams:
            return
        if flags & _RST:
            del self._streams[stream.stream_id]
            events.append(StreamReset(stream.stream_id, "reset by peer"))
            return
        if flags & _FIN:
            if not stream.remote_open:
                self._reset(stream, "second FIN from the peer", events)
                return
            stream.remote_open = False
            events.append(StreamEnded(stream.stream_id))
            if not stream.local_open:
                del self._streams[stream.stream_id]
                events.append(StreamClosed(stream.stream_id))

    def _reset(self, stream: _Stream, reason: str, events: list[Event]) -> None:
        self._streams.pop(stream.stream_id, None)
        self._out.append(_header(_WINDOW_UPDATE, _RST, stream.stream_id, 0))
        events.append(StreamReset(stream.stream_id, reason))

    # -- helpers ------------------------------------------------------------------------------

    def _writable(self, stream_id: int) -> _Stream:
        self._check_alive()
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamClosedError(f"stream {stream_id} is not open")
        if not stream.local_open:
            raise StreamClosedError(f"stream {stream_id}: write side already closed")
        return stream

    def _check_alive(self) -> None:
        if self._terminated is not None:
            raise SessionClosedError(f"session ended: {self._terminated.reason}")

    def _terminate(self, code: GoAwayCode | int, reason: str, events: list[Event], send: bool) -> None:
        if send:
            self._out.append(_header(_GO_AWAY, 0, 0, code))
        self._terminated = ConnectionTerminated(code, reason)
        self._streams.clear()
        self._payload_left = 0
        self._payload_stream = None
        self._pings.clear()
        events.append(self._terminated)


def _go_away_code(code: int) -> GoAwayCode | int:
    try:
        return GoAwayCode(code)
    except ValueError:
        return code


_CODE_TEXT: dict[int, str] = {
    GoAwayCode.NORMAL: "normal",
    GoAwayCode.PROTOCOL_ERROR: "protocol error",
    GoAwayCode.INTERNAL_ERROR: "internal error",
}


def _describe_code(code: int) -> str:
    return _CODE_TEXT.get(code, f"unknown go-away code {code}")

"""Events the sans-IO session returns from ``receive_data`` and ``keepalive``.

Each is a small immutable record; the Twisted adapter (or a test) dispatches on type.
"""

from __future__ import annotations

from dataclasses import dataclass

from shield.mux.frames import GoAwayCode


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened ``stream_id``; it was accepted and ACKed."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamRejected:
    """The peer tried to open ``stream_id``; it was refused with RST (limit or going away)."""

    stream_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class StreamAccepted:
    """The peer ACKed a stream this side opened."""

    stream_id: int


@dataclass(slots=True)  # not frozen: one per received frame, and frozen init costs twice as much
class DataReceived:
    """Payload for a stream; call ``Session.acknowledge`` once it has been consumed."""

    stream_id: int
    data: bytes


@dataclass(slots=True)  # not frozen: one per window update, on the data path
class WindowUpdated:
    """The peer granted more send window; ``window`` is what may be sent now."""

    stream_id: int
    window: int


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer half-closed (FIN): no more data will arrive on the stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """Both directions finished; the stream id is released."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream was aborted (RST from the peer, or a stream-level violation); ``reason`` says which."""

    stream_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The peer answered a ping; ``rtt`` is in the caller's time unit (seconds)."""

    opaque: int
    rtt: float


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The peer will accept no new streams; open ones go on when ``code`` is NORMAL."""

    code: GoAwayCode | int


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The session is over: a protocol error (ours or the peer's) or a keepalive timeout."""

    code: GoAwayCode | int
    reason: str


Event = (
    StreamOpened
    | StreamRejected
    | StreamAccepted
    | DataReceived
    | WindowUpdated
    | StreamEnded
    | StreamClosed
    | StreamReset
    | PongReceived
    | GoAwayReceived
    | ConnectionTerminated
)

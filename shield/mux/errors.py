"""Errors the mux raises at its callers (never at the peer: the peer gets GoAway or RST)."""

from __future__ import annotations


class MuxError(Exception):
    """Base of every error the multiplexer raises."""


class SessionClosedError(MuxError):
    """The session has ended (protocol error, keepalive timeout, or closed)."""


class GoingAwayError(MuxError):
    """No new streams: this side or the peer sent GoAway."""


class StreamLimitError(MuxError):
    """Opening another stream would exceed ``max_streams``."""


class StreamIdsExhaustedError(MuxError):
    """All 2**31 stream ids of this side have been used; open a new session."""


class StreamClosedError(MuxError):
    """The stream is not open for this operation (unknown, reset, or write side closed)."""


class StreamStateError(MuxError):
    """A stream was sent an event its state does not allow (``shield.mux.stream``'s table).

    Always a bug in shield: the session turns whatever a peer does wrong into RST or GoAway
    before it reaches a stream, and Twisted lets a protocol close a transport as often as it
    likes. Raised so that tests fail on it rather than a stream carrying on in a state nobody
    designed (delivering data after its end, or never finishing).
    """

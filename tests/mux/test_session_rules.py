"""Unit tests of individual yamux rules enforced by the sans-IO ``Session``.

Each test drives one or two sessions with hand-built frames and checks what a user of the
session can observe: the returned events, the bytes queued for the wire, the stream states and
the errors raised by the commands.
"""

from __future__ import annotations

import pytest

from shield.mux.config import MuxConfig
from shield.mux.errors import (
    GoingAwayError,
    SessionClosedError,
    StreamClosedError,
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
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_UINT32,
    Flag,
    FrameHeader,
    FrameType,
    GoAwayCode,
    decode_header,
    encode_header,
)
from shield.mux.session import Session, StreamState

KIB = 1024
MIB = 1024 * 1024

GO_AWAY_PROTOCOL_ERROR = bytes.fromhex("00 03 0000 00000000 00000001")
GO_AWAY_NORMAL = bytes.fromhex("00 03 0000 00000000 00000000")


# -- helpers ---------------------------------------------------------------------------------


def frames(wire: bytes) -> list[tuple[FrameHeader, bytes]]:
    """Split a byte string produced by a session into (header, payload) pairs."""
    out: list[tuple[FrameHeader, bytes]] = []
    pos = 0
    while pos < len(wire):
        header = decode_header(wire, pos)
        pos += HEADER_SIZE
        payload = b""
        if header.type is FrameType.DATA:
            payload = wire[pos : pos + header.length]
            assert len(payload) == header.length, "truncated data frame on the wire"
            pos += header.length
        out.append((header, payload))
    return out


def data(stream_id: int, payload: bytes, flags: Flag = Flag.NONE) -> bytes:
    return encode_header(FrameType.DATA, flags, stream_id, len(payload)) + payload


def window_update(stream_id: int, delta: int = 0, flags: Flag = Flag.NONE) -> bytes:
    return encode_header(FrameType.WINDOW_UPDATE, flags, stream_id, delta)


def syn(stream_id: int, delta: int = 0) -> bytes:
    return window_update(stream_id, delta, Flag.SYN)


def only_terminated(events: list[Event]) -> ConnectionTerminated:
    terminated = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert len(terminated) == 1, events
    assert events[-1] is terminated[0], "ConnectionTerminated must be the last event"
    return terminated[0]


def assert_protocol_error(session: Session, events: list[Event], *words: str) -> ConnectionTerminated:
    """The session ended with a protocol error naming ``words`` and sent GoAway(1) last."""
    terminated = only_terminated(events)
    assert terminated.code == GoAwayCode.PROTOCOL_ERROR
    for word in words:
        assert word in terminated.reason.lower(), terminated.reason
    assert session.terminated == terminated
    wire = session.data_to_send()
    assert wire.endswith(GO_AWAY_PROTOCOL_ERROR), wire.hex()
    # The session is over: nothing more is processed and commands refuse to run.
    assert session.receive_data(syn(2 if session.client else 1)) == []
    assert session.data_to_send() == b""
    with pytest.raises(SessionClosedError):
        session.open_stream()
    return terminated


def server_with_stream(config: MuxConfig | None = None) -> tuple[Session, int]:
    """A server session on which the client opened (and the server accepted) stream 1."""
    server = Session(client=False, config=config)
    events = server.receive_data(syn(1))
    assert StreamOpened(1) in events
    server.data_to_send()  # the ACK
    return server, 1


def pair(
    client_config: MuxConfig | None = None, server_config: MuxConfig | None = None
) -> tuple[Session, Session]:
    return Session(client=True, config=client_config), Session(client=False, config=server_config)


def pump(src: Session, dst: Session, now: float = 0.0) -> list[Event]:
    """Deliver everything ``src`` queued to ``dst``."""
    return dst.receive_data(src.data_to_send(), now)


# -- framing errors --------------------------------------------------------------------------


def test_unsupported_version_terminates_with_protocol_error() -> None:
    session = Session(client=True)
    events = session.receive_data(bytes.fromhex("01 02 0001 00000000 00000007"))
    assert_protocol_error(session, events, "version")


def test_unknown_frame_type_terminates_with_protocol_error() -> None:
    session = Session(client=False)
    events = session.receive_data(bytes.fromhex("00 04 0000 00000000 00000000"))
    terminated = assert_protocol_error(session, events, "type")
    assert "4" in terminated.reason


def test_protocol_error_discards_the_rest_of_the_input() -> None:
    session = Session(client=False)
    # A valid SYN, a bad header, then another valid SYN: only the first one counts.
    events = session.receive_data(syn(1) + b"\x07" + bytes(11) + syn(3))
    assert events[0] == StreamOpened(1)
    assert_protocol_error(session, events, "version")
    assert session.stream_state(3) is StreamState.IDLE
    assert session.stream_ids == []


def test_data_frame_longer_than_max_frame_length() -> None:
    server, stream_id = server_with_stream()
    limit = server.config.frame_length_limit
    assert limit == INITIAL_WINDOW
    # The header alone is enough: the session refuses before reading the payload.
    events = server.receive_data(encode_header(FrameType.DATA, Flag.NONE, stream_id, limit + 1))
    terminated = assert_protocol_error(server, events, "limit")
    assert str(limit + 1) in terminated.reason


def test_data_frame_longer_than_max_frame_length_on_a_closed_stream() -> None:
    server, stream_id = server_with_stream()
    server.reset_stream(stream_id)
    server.data_to_send()
    events = server.receive_data(encode_header(FrameType.DATA, Flag.NONE, stream_id, INITIAL_WINDOW + 1))
    assert_protocol_error(server, events, "limit")


def test_data_frame_within_the_frame_limit_but_over_the_window() -> None:
    config = MuxConfig(max_frame_length=2 * INITIAL_WINDOW)
    server, stream_id = server_with_stream(config)
    length = INITIAL_WINDOW + 1
    events = server.receive_data(encode_header(FrameType.DATA, Flag.NONE, stream_id, length))
    assert_protocol_error(server, events, "window")


def test_data_exceeding_the_receive_window_over_several_frames() -> None:
    server, stream_id = server_with_stream()
    first = b"a" * (200 * KIB)
    events = server.receive_data(data(stream_id, first))
    assert events == [DataReceived(stream_id, first)]
    assert server.receive_window(stream_id) == INITIAL_WINDOW - len(first)
    # Consuming without the credit reaching the peer does not widen what the peer may send.
    server.acknowledge(stream_id, 10)
    events = server.receive_data(data(stream_id, b"b" * (INITIAL_WINDOW - len(first) + 1)))
    terminated = assert_protocol_error(server, events, "window")
    assert terminated.code == GoAwayCode.PROTOCOL_ERROR
    assert not any(isinstance(e, DataReceived) for e in events)


def test_data_filling_the_receive_window_exactly_is_fine() -> None:
    server, stream_id = server_with_stream()
    events = server.receive_data(data(stream_id, b"x" * INITIAL_WINDOW))
    assert events == [DataReceived(stream_id, b"x" * INITIAL_WINDOW)]
    assert server.receive_window(stream_id) == 0
    assert server.terminated is None


def test_syn_reusing_an_open_stream_id() -> None:
    server, stream_id = server_with_stream()
    events = server.receive_data(syn(stream_id))
    assert_protocol_error(server, events, "reuse", str(stream_id))


def test_syn_reusing_a_closed_stream_id() -> None:
    server, stream_id = server_with_stream()
    server.reset_stream(stream_id)
    server.data_to_send()
    events = server.receive_data(syn(stream_id))
    assert_protocol_error(server, events, "reuse")


def test_syn_out_of_order_is_accepted_once() -> None:
    # Go's yamux allocates ids before queueing SYNs, so concurrent opens arrive out of order:
    # a skipped id is accepted late, but only once.
    server = Session(client=False)
    assert server.receive_data(syn(5)) == [StreamOpened(5)]
    assert server.receive_data(syn(3)) == [StreamOpened(3)]
    assert server.receive_data(syn(1)) == [StreamOpened(1)]
    server.reset_stream(3)
    events = server.receive_data(syn(3))
    assert_protocol_error(server, events, "reused")


def test_frame_for_a_skipped_id_before_its_syn_is_an_error() -> None:
    server = Session(client=False)
    server.receive_data(syn(5))
    events = server.receive_data(data(3, b"early"))
    assert_protocol_error(server, events, "never opened")


def test_syn_skipping_too_many_ids_is_an_error() -> None:
    server = Session(client=False, config=MuxConfig(max_streams=8))
    assert server.receive_data(syn(17)) == [StreamOpened(17)]  # skips 1..15: 8 ids
    events = server.receive_data(syn(21))  # one more skipped id would exceed the bound
    assert_protocol_error(server, events, "unopened")


@pytest.mark.parametrize(("client", "stream_id"), [(True, 1), (True, 3), (False, 2), (False, 4)])
def test_syn_with_this_sides_parity(client: bool, stream_id: int) -> None:
    session = Session(client=client)
    events = session.receive_data(syn(stream_id))
    assert_protocol_error(session, events, "parity")


def test_syn_on_stream_zero() -> None:
    # Stream 0 is even: a client sees the wrong parity, a server a stream frame on stream 0.
    for client in (True, False):
        session = Session(client=client)
        events = session.receive_data(syn(0))
        assert_protocol_error(session, events)


@pytest.mark.parametrize(
    "frame",
    [
        data(3, b"hello"),
        window_update(3, 10),
        window_update(3, 0, Flag.ACK),
        window_update(3, 0, Flag.FIN),
        window_update(3, 0, Flag.RST),
        window_update(2, 0, Flag.ACK),  # this side's id, never opened by it
    ],
)
def test_frame_for_a_never_opened_stream(frame: bytes) -> None:
    server, _ = server_with_stream()
    events = server.receive_data(frame)
    assert_protocol_error(server, events, "never opened")


def test_data_frame_on_stream_zero() -> None:
    session = Session(client=True)
    events = session.receive_data(data(0, b"abc"))
    assert_protocol_error(session, events, "stream 0")


def test_ping_on_a_non_zero_stream() -> None:
    session = Session(client=True)
    events = session.receive_data(encode_header(FrameType.PING, Flag.SYN, 1, 42))
    assert_protocol_error(session, events, "ping")
    assert session.data_to_send() == b""


def test_go_away_on_a_non_zero_stream() -> None:
    session = Session(client=False)
    events = session.receive_data(encode_header(FrameType.GO_AWAY, Flag.NONE, 7, GoAwayCode.NORMAL))
    assert_protocol_error(session, events, "go-away")


def test_window_update_overflowing_32_bits() -> None:
    server, stream_id = server_with_stream()
    assert server.send_window(stream_id) == INITIAL_WINDOW
    # Up to 2**32-1 in total is allowed...
    fine = MAX_UINT32 - INITIAL_WINDOW
    assert server.receive_data(window_update(stream_id, fine)) == [WindowUpdated(stream_id, MAX_UINT32)]
    assert server.send_window(stream_id) == MAX_UINT32
    # ...one more byte is not.
    events = server.receive_data(window_update(stream_id, 1))
    assert_protocol_error(server, events, "overflow")


def test_window_update_overflowing_in_one_step() -> None:
    server, stream_id = server_with_stream()
    events = server.receive_data(window_update(stream_id, MAX_UINT32))
    assert_protocol_error(server, events, "overflow")


# -- refusing streams ------------------------------------------------------------------------


def test_max_streams_refuses_incoming_syn_but_keeps_the_session() -> None:
    server = Session(client=False, config=MuxConfig(max_streams=2))
    assert server.receive_data(syn(1)) == [StreamOpened(1)]
    local = server.open_stream()
    assert local == 2
    server.data_to_send()

    events = server.receive_data(syn(3) + data(3, b"dropped"))
    assert len(events) == 1
    assert isinstance(events[0], StreamRejected)
    assert events[0].stream_id == 3
    assert "limit" in events[0].reason
    assert server.data_to_send() == window_update(3, 0, Flag.RST)
    assert server.terminated is None
    assert server.stream_state(3) is StreamState.CLOSED

    with pytest.raises(StreamLimitError):
        server.open_stream()

    # Existing streams still work both ways.
    assert server.receive_data(data(1, b"still here")) == [DataReceived(1, b"still here")]
    assert server.send_data(1, b"reply") == 5
    assert frames(server.data_to_send()) == [
        (FrameHeader(FrameType.DATA, Flag.NONE, 1, 5), b"reply")
    ]

    # Once a stream finishes, a new one fits again.
    server.reset_stream(1)
    server.data_to_send()
    assert server.receive_data(syn(5)) == [StreamOpened(5)]
    with pytest.raises(StreamLimitError):
        server.open_stream()
    server.reset_stream(local)
    assert server.open_stream() == 4

def test_max_streams_rejection_seen_by_the_opener() -> None:
    client, server = pair(server_config=MuxConfig(max_streams=1))
    first = client.open_stream()
    second = client.open_stream()
    events = pump(client, server)
    assert events[0] == StreamOpened(first)
    assert isinstance(events[-1], StreamRejected) and events[-1].stream_id == second
    events = pump(server, client)
    assert StreamAccepted(first) in events
    assert StreamReset(second, "reset by peer") in events
    assert client.stream_state(second) is StreamState.CLOSED
    assert client.stream_state(first) is StreamState.OPEN
    assert client.terminated is None and server.terminated is None
    with pytest.raises(StreamClosedError):
        client.send_data(second, b"x")


def test_local_go_away_refuses_new_streams_and_keeps_old_ones() -> None:
    client, server = pair()
    stream_id = client.open_stream()
    pump(client, server)
    pump(server, client)

    server.go_away()
    assert server.local_go_away
    assert server.data_to_send() == GO_AWAY_NORMAL
    with pytest.raises(GoingAwayError):
        server.open_stream()

    # The client opened another stream before it heard of the go-away: refused with RST.
    late = client.open_stream()
    events = pump(client, server)
    assert len(events) == 1 and isinstance(events[0], StreamRejected)
    assert events[0].stream_id == late and "going away" in events[0].reason
    assert frames(server.data_to_send()) == [
        (FrameHeader(FrameType.WINDOW_UPDATE, Flag.RST, late, 0), b"")
    ]
    assert server.terminated is None

    # The existing stream carries data both ways.
    assert client.send_data(stream_id, b"ping") == 4
    assert pump(client, server) == [DataReceived(stream_id, b"ping")]
    assert server.send_data(stream_id, b"pong") == 4
    assert pump(server, client) == [DataReceived(stream_id, b"pong")]
    # A second go_away is a no-op.
    server.go_away()
    assert server.data_to_send() == b""


def test_receiving_go_away_normal() -> None:
    client, server = pair()
    stream_id = client.open_stream()
    pump(client, server)
    pump(server, client)

    server.go_away()
    events = pump(server, client)
    assert events == [GoAwayReceived(GoAwayCode.NORMAL)]
    assert client.remote_go_away
    assert client.terminated is None
    with pytest.raises(GoingAwayError):
        client.open_stream()
    assert client.data_to_send() == b""  # the go-away is not answered

    assert client.send_data(stream_id, b"more") == 4
    assert pump(client, server) == [DataReceived(stream_id, b"more")]
    client.end_stream(stream_id)
    assert pump(client, server) == [StreamEnded(stream_id)]


def test_receiving_go_away_protocol_error_terminates() -> None:
    client, server = pair()
    stream_id = client.open_stream()
    pump(client, server)
    pump(server, client)

    events = client.receive_data(encode_header(FrameType.GO_AWAY, Flag.NONE, 0, GoAwayCode.PROTOCOL_ERROR))
    terminated = only_terminated(events)
    assert terminated.code == GoAwayCode.PROTOCOL_ERROR
    assert events[0] == GoAwayReceived(GoAwayCode.PROTOCOL_ERROR)
    assert "protocol error" in terminated.reason
    assert client.terminated == terminated
    assert client.data_to_send() == b""  # no go-away in reply to a go-away
    assert client.stream_ids == []
    with pytest.raises(SessionClosedError):
        client.send_data(stream_id, b"x")
    with pytest.raises(SessionClosedError):
        client.open_stream()
    assert client.receive_data(data(stream_id, b"late")) == []


def test_terminate_command_sends_go_away_once() -> None:
    session = Session(client=True)
    session.open_stream()
    session.data_to_send()
    first = session.terminate(GoAwayCode.INTERNAL_ERROR, "shutting down")
    assert first == ConnectionTerminated(GoAwayCode.INTERNAL_ERROR, "shutting down")
    assert session.data_to_send() == encode_header(FrameType.GO_AWAY, Flag.NONE, 0, 2)
    assert session.terminate(GoAwayCode.NORMAL, "again") == first
    assert session.data_to_send() == b""


# -- stream-level violations and late frames --------------------------------------------------


def test_data_after_fin_resets_only_that_stream() -> None:
    server = Session(client=False)
    events = server.receive_data(syn(1) + syn(3))
    assert events == [StreamOpened(1), StreamOpened(3)]
    server.data_to_send()

    assert server.receive_data(window_update(1, 0, Flag.FIN)) == [StreamEnded(1)]
    assert server.stream_state(1) is StreamState.HALF_CLOSED_REMOTE

    events = server.receive_data(data(1, b"too late") + data(3, b"on time"))
    assert len(events) == 2
    assert isinstance(events[0], StreamReset) and events[0].stream_id == 1
    assert "fin" in events[0].reason.lower()
    assert events[1] == DataReceived(3, b"on time")
    assert server.data_to_send() == window_update(1, 0, Flag.RST)
    assert server.terminated is None
    assert server.stream_state(1) is StreamState.CLOSED
    assert server.stream_state(3) is StreamState.OPEN
    with pytest.raises(StreamClosedError):
        server.send_data(1, b"x")
    assert server.send_data(3, b"ok") == 2


def test_second_fin_resets_the_stream() -> None:
    server, stream_id = server_with_stream()
    assert server.receive_data(window_update(stream_id, 0, Flag.FIN)) == [StreamEnded(stream_id)]
    events = server.receive_data(window_update(stream_id, 0, Flag.FIN))
    assert len(events) == 1 and isinstance(events[0], StreamReset)
    assert server.terminated is None


def test_frames_for_a_reset_stream_are_dropped() -> None:
    server = Session(client=False)
    server.receive_data(syn(1) + syn(3))
    server.data_to_send()
    server.reset_stream(1)
    assert server.data_to_send() == window_update(1, 0, Flag.RST)
    assert server.stream_state(1) is StreamState.CLOSED

    late = (
        data(1, b"in flight")
        + window_update(1, 1000)
        + window_update(1, 0, Flag.FIN)
        + window_update(1, 0, Flag.RST)
        + data(1, b"x" * 100)
    )
    assert server.receive_data(late) == []
    assert server.data_to_send() == b""
    assert server.terminated is None
    # Resetting again is a no-op, and the other stream is unaffected.
    server.reset_stream(1)
    assert server.data_to_send() == b""
    assert server.receive_data(data(3, b"fine")) == [DataReceived(3, b"fine")]


def test_frames_for_a_cleanly_closed_stream_are_dropped() -> None:
    client, server = pair()
    stream_id = client.open_stream()
    pump(client, server)
    pump(server, client)
    client.end_stream(stream_id)
    assert pump(client, server) == [StreamEnded(stream_id)]
    assert server.end_stream(stream_id) is True
    assert pump(server, client) == [StreamEnded(stream_id), StreamClosed(stream_id)]
    assert client.stream_state(stream_id) is StreamState.CLOSED
    assert server.stream_state(stream_id) is StreamState.CLOSED

    # A late window update and a late ACK for the closed stream are ignored on both sides.
    for session in (client, server):
        assert session.receive_data(window_update(stream_id, 4096) + window_update(stream_id, 0, Flag.ACK)) == []
        assert session.terminated is None
        assert session.data_to_send() == b""


def test_reset_mid_payload_discards_the_rest_of_the_frame() -> None:
    server, stream_id = server_with_stream()
    frame = data(stream_id, b"0123456789")
    assert server.receive_data(frame[: HEADER_SIZE + 4]) == [DataReceived(stream_id, b"0123")]
    server.reset_stream(stream_id)
    server.data_to_send()
    # The rest of the payload is skipped, and framing stays in sync for the next frame.
    assert server.receive_data(frame[HEADER_SIZE + 4 :] + syn(3)) == [StreamOpened(3)]
    assert server.terminated is None


def test_reset_by_peer() -> None:
    client, server = pair()
    stream_id = client.open_stream()
    pump(client, server)
    pump(server, client)
    server.reset_stream(stream_id)
    events = pump(server, client)
    assert events == [StreamReset(stream_id, "reset by peer")]
    assert client.stream_state(stream_id) is StreamState.CLOSED
    assert client.send_window(stream_id) == 0
    assert client.receive_window(stream_id) == 0


# -- ping and keepalive ----------------------------------------------------------------------


def test_ping_is_answered_and_rtt_uses_the_now_arguments() -> None:
    client, server = pair()
    opaque = client.ping(now=100.0)
    wire = client.data_to_send()
    assert wire == encode_header(FrameType.PING, Flag.SYN, 0, opaque)
    assert client.outstanding_pings == 1

    assert server.receive_data(wire, now=5.0) == []
    pong = server.data_to_send()
    assert pong == encode_header(FrameType.PING, Flag.ACK, 0, opaque)

    events = client.receive_data(pong, now=100.25)
    assert events == [PongReceived(opaque, 0.25)]
    assert client.outstanding_pings == 0
    # A duplicate or unsolicited pong is ignored.
    assert client.receive_data(pong, now=200.0) == []
    assert client.receive_data(encode_header(FrameType.PING, Flag.ACK, 0, 12345)) == []
    assert client.terminated is None


def test_ping_opaque_values_differ() -> None:
    session = Session(client=True)
    values = [session.ping(float(i)) for i in range(5)]
    assert len(set(values)) == 5
    assert session.outstanding_pings == 5


def test_every_outstanding_ping_gets_its_pong() -> None:
    # Ping docstring: "the answer arrives as PongReceived with the round trip". With two pings
    # in flight, answered in order, each answer must be reported with its own round trip.
    client, server = pair()
    first = client.ping(now=0.0)
    second = client.ping(now=0.125)
    pump(client, server)
    pongs = server.data_to_send()
    assert len(pongs) == 2 * HEADER_SIZE
    events = client.receive_data(pongs, now=0.5)
    assert events == [PongReceived(first, 0.5), PongReceived(second, 0.375)]
    assert client.outstanding_pings == 0


def test_keepalive_ends_the_session_after_missed_pongs() -> None:
    config = MuxConfig(keepalive_missed_limit=3)
    session = Session(client=True, config=config)
    for i in range(3):
        assert session.keepalive(now=5.0 * i) == []
        header = decode_header(session.data_to_send())
        assert header.type is FrameType.PING and header.flags == Flag.SYN
        assert session.terminated is None
    assert session.outstanding_pings == 3

    events = session.keepalive(now=15.0)
    terminated = only_terminated(events)
    assert "keepalive" in terminated.reason
    assert "3" in terminated.reason
    assert session.terminated == terminated
    with pytest.raises(SessionClosedError):
        session.open_stream()
    assert session.keepalive(now=20.0) == []
    assert session.receive_data(encode_header(FrameType.PING, Flag.ACK, 0, 0)) == []


def test_keepalive_pong_resets_the_missed_count() -> None:
    config = MuxConfig(keepalive_missed_limit=2)
    client, server = pair(client_config=config)
    assert client.keepalive(now=0.0) == []
    assert client.keepalive(now=5.0) == []
    assert client.outstanding_pings == 2
    events = pump(client, server)
    assert events == []
    events = pump(server, client, now=6.0)
    assert any(isinstance(e, PongReceived) for e in events)
    assert client.outstanding_pings == 0

    # The count starts over: two more unanswered keepalives are tolerated, the third ends it.
    assert client.keepalive(now=10.0) == []
    assert client.keepalive(now=15.0) == []
    assert client.terminated is None
    events = client.keepalive(now=20.0)
    assert "keepalive" in only_terminated(events).reason


# -- flow control ----------------------------------------------------------------------------


def test_acknowledge_grants_credit_in_batches_of_half_a_window() -> None:
    server, stream_id = server_with_stream()
    half = INITIAL_WINDOW // 2
    payload = b"d" * (200 * KIB)
    assert server.receive_data(data(stream_id, payload)) == [DataReceived(stream_id, payload)]
    assert server.receive_window(stream_id) == INITIAL_WINDOW - len(payload)

    server.acknowledge(stream_id, 100 * KIB)
    assert server.data_to_send() == b""
    assert server.receive_window(stream_id) == INITIAL_WINDOW - len(payload)
    server.acknowledge(stream_id, half - 100 * KIB - 1)
    assert server.data_to_send() == b""  # one byte short of half a window

    server.acknowledge(stream_id, 1)
    assert server.data_to_send() == window_update(stream_id, half)
    assert server.receive_window(stream_id) == INITIAL_WINDOW - len(payload) + half

    # The rest is below the threshold again.
    server.acknowledge(stream_id, len(payload) - half)
    assert server.data_to_send() == b""
    with pytest.raises(ValueError):
        server.acknowledge(stream_id, 1)  # more than was delivered


def test_large_single_acknowledge_is_granted_at_once() -> None:
    server, stream_id = server_with_stream()
    server.receive_data(data(stream_id, b"z" * INITIAL_WINDOW))
    server.acknowledge(stream_id, INITIAL_WINDOW)
    assert server.data_to_send() == window_update(stream_id, INITIAL_WINDOW)
    assert server.receive_window(stream_id) == INITIAL_WINDOW


def test_window_credit_reaches_the_sender() -> None:
    client, server = pair()
    stream_id = client.open_stream()
    pump(client, server)
    pump(server, client)
    blob = bytes(range(256)) * 1100  # more than a window
    sent = client.send_data(stream_id, blob)
    assert sent == INITIAL_WINDOW
    assert client.send_window(stream_id) == 0
    assert client.send_data(stream_id, blob[sent:]) == 0
    events = pump(client, server)
    received = b"".join(e.data for e in events if isinstance(e, DataReceived))
    assert received == blob[:sent]
    server.acknowledge(stream_id, len(received))
    events = pump(server, client)
    assert events == [WindowUpdated(stream_id, INITIAL_WINDOW)]
    assert client.send_window(stream_id) == INITIAL_WINDOW


def test_send_data_is_chunked_by_send_frame_size() -> None:
    client = Session(client=True, config=MuxConfig(send_frame_size=4))
    stream_id = client.open_stream()
    client.data_to_send()
    assert client.send_data(stream_id, b"abcdefghij") == 10
    assert frames(client.data_to_send()) == [
        (FrameHeader(FrameType.DATA, Flag.NONE, stream_id, 4), b"abcd"),
        (FrameHeader(FrameType.DATA, Flag.NONE, stream_id, 4), b"efgh"),
        (FrameHeader(FrameType.DATA, Flag.NONE, stream_id, 2), b"ij"),
    ]


def test_default_window_syn_and_ack_carry_no_delta() -> None:
    client, server = pair()
    stream_id = client.open_stream()
    wire = client.data_to_send()
    assert wire == bytes.fromhex("00 01 0001 00000001 00000000")
    assert server.receive_data(wire) == [StreamOpened(stream_id)]
    assert server.data_to_send() == bytes.fromhex("00 01 0002 00000001 00000000")


@pytest.mark.parametrize("window", [INITIAL_WINDOW + 1, MIB, 16 * MIB])
def test_larger_window_is_announced_in_syn_and_ack(window: int) -> None:
    delta = window - INITIAL_WINDOW
    config = MuxConfig(stream_window=window)

    client, server = pair(client_config=config)
    stream_id = client.open_stream()
    wire = client.data_to_send()
    assert wire == encode_header(FrameType.WINDOW_UPDATE, Flag.SYN, stream_id, delta)
    assert client.receive_window(stream_id) == window
    server.receive_data(wire)
    assert server.send_window(stream_id) == window
    assert server.receive_window(stream_id) == INITIAL_WINDOW

    client, server = pair(server_config=config)
    stream_id = client.open_stream()
    server.receive_data(client.data_to_send())
    ack = server.data_to_send()
    assert ack == encode_header(FrameType.WINDOW_UPDATE, Flag.ACK, stream_id, delta)
    assert server.receive_window(stream_id) == window
    events = client.receive_data(ack)
    assert events == [StreamAccepted(stream_id), WindowUpdated(stream_id, window)]
    assert client.send_window(stream_id) == window

    # The peer may really use the announced window, in a single frame.
    payload = b"w" * window
    assert client.send_data(stream_id, payload) == window
    received = b"".join(e.data for e in pump(client, server) if isinstance(e, DataReceived))
    assert received == payload
    assert server.terminated is None


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("window", [0, 1, INITIAL_WINDOW - 1, 16 * MIB + 1, 32 * MIB])
def test_config_rejects_stream_window_out_of_range(window: int) -> None:
    with pytest.raises(ValueError, match="stream_window"):
        MuxConfig(stream_window=window)


@pytest.mark.parametrize("window", [INITIAL_WINDOW, MIB, 16 * MIB])
def test_config_accepts_stream_window_in_range(window: int) -> None:
    assert MuxConfig(stream_window=window).stream_window == window


def test_config_rejects_max_frame_length_below_the_window() -> None:
    with pytest.raises(ValueError, match="max_frame_length"):
        MuxConfig(max_frame_length=INITIAL_WINDOW - 1)
    with pytest.raises(ValueError, match="max_frame_length"):
        MuxConfig(stream_window=MIB, max_frame_length=MIB - 1)
    assert MuxConfig(stream_window=MIB, max_frame_length=MIB).frame_length_limit == MIB
    assert MuxConfig(stream_window=MIB).frame_length_limit == MIB


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_streams": 0},
        {"send_frame_size": 0},
        {"keepalive_interval": -1.0},
        {"keepalive_missed_limit": 0},
        {"stream_close_timeout": 0.0},
        {"write_buffer_high_water": 0},
    ],
)
def test_config_rejects_other_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MuxConfig(**kwargs)  # type: ignore[arg-type]

"""The frame parser of ``Session.receive_data`` under arbitrary input, and the header codec.

Whatever bytes a peer sends, the session must never raise: it returns events, and when the
input breaks the protocol it ends with ``ConnectionTerminated`` and a GoAway(protocol error)
on the wire. How the input is split into ``receive_data`` calls must not matter.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shield.mux.config import MuxConfig
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
    MAX_UINT32,
    PROTOCOL_VERSION,
    Flag,
    FrameHeader,
    FrameType,
    GoAwayCode,
    HeaderError,
    decode_header,
    encode_header,
)
from shield.mux.session import Session

EVENT_TYPES = (
    StreamOpened,
    StreamRejected,
    StreamAccepted,
    DataReceived,
    WindowUpdated,
    StreamEnded,
    StreamClosed,
    StreamReset,
    PongReceived,
    GoAwayReceived,
    ConnectionTerminated,
)

FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Windows are at least 256 KiB, out of reach of small fuzz inputs; a stream limit is not.
SMALL_LIMITS = MuxConfig(max_streams=3)


# -- strategies ------------------------------------------------------------------------------

wide_ids = st.one_of(
    st.sampled_from([0, 0x7FFF_FFFF, 0x8000_0000, MAX_UINT32]), st.integers(0, MAX_UINT32)
)


def rarely(draw: st.DrawFn, common: st.SearchStrategy[int], rare: st.SearchStrategy[int]) -> int:
    """Mostly ``common``, about one draw in ten from ``rare``."""
    return draw(rare) if draw(st.integers(0, 9)) == 0 else draw(common)


@st.composite
def raw_frame(draw: st.DrawFn, complete: bool = False) -> bytes:
    """One header, mostly plausible, sometimes broken, with a payload that may be truncated.

    With ``complete`` the frame is well formed (version 0, known type, whole payload), though
    it may still break a protocol rule.
    """
    plausible_types = st.sampled_from([0, 0, 0, 1, 1, 1, 2, 3])
    if complete:
        version = PROTOCOL_VERSION
        type_ = draw(plausible_types)
    else:
        version = rarely(draw, st.just(PROTOCOL_VERSION), st.integers(0, 255))
        type_ = rarely(draw, plausible_types, st.integers(0, 255))
    flags = rarely(draw, st.sampled_from([0, 0, 0, 1, 1, 2, 4, 8, 5, 3]), st.integers(0, 0xFFFF))
    if type_ in (FrameType.PING, FrameType.GO_AWAY):
        stream_id = rarely(draw, st.just(0), wide_ids)
    else:
        stream_id = rarely(draw, st.integers(1, 8), wide_ids)
    if type_ == FrameType.DATA and complete:
        length = draw(st.integers(0, 48))
    elif type_ == FrameType.DATA:
        length = rarely(draw, st.integers(0, 48), st.integers(0, MAX_UINT32))
    elif type_ == FrameType.GO_AWAY:
        length = rarely(draw, st.just(GoAwayCode.NORMAL), st.integers(0, MAX_UINT32))
    elif type_ == FrameType.WINDOW_UPDATE:
        length = rarely(draw, st.integers(0, 1 << 20), st.integers(0, MAX_UINT32))
    else:
        length = draw(st.integers(0, MAX_UINT32))
    header = struct.pack(">BBHII", version, type_, flags, stream_id, length)
    payload = b""
    if type_ == FrameType.DATA and length <= 48:
        payload = draw(st.binary(min_size=length, max_size=length))
        if not complete and draw(st.integers(0, 9)) == 0:
            payload = payload[: draw(st.integers(0, length))]
    return header + payload


def peer_syns(client: bool) -> st.SearchStrategy[bytes]:
    """A valid start: the peer opens a few streams of its parity (odd ids if we are the server)."""
    first = 2 if client else 1
    return st.integers(0, 3).map(
        lambda n: b"".join(
            encode_header(FrameType.WINDOW_UPDATE, Flag.SYN, first + 2 * i, 0) for i in range(n)
        )
    )


def frame_stream(client: bool, complete: bool = False) -> st.SearchStrategy[bytes]:
    frames = st.lists(raw_frame(complete=complete), max_size=12).map(b"".join)
    return st.tuples(peer_syns(client), frames).map(b"".join)


def wire_bytes(client: bool) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=200), frame_stream(client), frame_stream(client))


@st.composite
def session_input(draw: st.DrawFn) -> tuple[bool, bytes]:
    client = draw(st.booleans())
    return client, draw(wire_bytes(client))


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, deduplicated)."""
    if not data:
        return [b""]
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])] or [b""]


def one_byte_chunks(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def make_session(client: bool, local_streams: int, small_limits: bool) -> Session:
    session = Session(client=client, config=SMALL_LIMITS if small_limits else None)
    for _ in range(local_streams):
        session.open_stream()
    session.data_to_send()
    return session


def feed(session: Session, chunks: Sequence[bytes]) -> tuple[list[Event], bytes]:
    """Feed the chunks one ``receive_data`` call each; return all events and all output."""
    events: list[Event] = []
    out: list[bytes] = []
    for chunk in chunks:
        got = session.receive_data(chunk, now=1.0)
        assert isinstance(got, list)
        events.extend(got)
        out.append(session.data_to_send())
    return events, b"".join(out)


def normalize(events: Sequence[Event]) -> list[Event]:
    """Merge consecutive DataReceived of one stream: chunking may split a payload differently."""
    merged: list[Event] = []
    for event in events:
        if (
            isinstance(event, DataReceived)
            and merged
            and isinstance(merged[-1], DataReceived)
            and merged[-1].stream_id == event.stream_id
        ):
            merged[-1] = DataReceived(event.stream_id, merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged


def output_headers(out: bytes) -> list[FrameHeader]:
    """Headers of the frames a session wrote (its output is always well formed)."""
    headers: list[FrameHeader] = []
    pos = 0
    while pos < len(out):
        header = decode_header(out, pos)
        headers.append(header)
        pos += HEADER_SIZE + (header.length if header.type is FrameType.DATA else 0)
    assert pos == len(out)
    return headers


def check_termination(session: Session, events: list[Event], out: bytes) -> None:
    """The invariants around ``ConnectionTerminated`` for a run that fed ``events``/``out``."""
    for event in events:
        assert isinstance(event, EVENT_TYPES), event
    for event in events:
        if isinstance(event, DataReceived):
            assert event.data, "empty DataReceived"
    terminated = [i for i, e in enumerate(events) if isinstance(e, ConnectionTerminated)]
    if not terminated:
        assert session.terminated is None
        return
    assert len(terminated) == 1, events
    index = terminated[0]
    assert index == len(events) - 1, "no event may follow ConnectionTerminated"
    event = events[index]
    assert isinstance(event, ConnectionTerminated)
    assert session.terminated == event
    assert session.stream_ids == []
    previous = events[index - 1] if index else None
    caused_by_peer = isinstance(previous, GoAwayReceived) and previous.code != GoAwayCode.NORMAL
    go_aways = [header for header in output_headers(out) if header.type is FrameType.GO_AWAY]
    if caused_by_peer:
        assert isinstance(previous, GoAwayReceived)
        assert event.code == previous.code
        assert go_aways == [], "a GoAway from the peer is not answered with one"
    else:
        assert event.code == GoAwayCode.PROTOCOL_ERROR
        assert event.reason
        assert go_aways == [FrameHeader(FrameType.GO_AWAY, Flag.NONE, 0, GoAwayCode.PROTOCOL_ERROR)]
        assert out[-HEADER_SIZE:] == bytes.fromhex("00 03 0000 00000000 00000001")
    # After the end, input is ignored and nothing more is sent.
    assert session.receive_data(b"\x00" * HEADER_SIZE) == []
    assert session.receive_data(encode_header(FrameType.PING, Flag.SYN, 0, 1)) == []
    assert session.data_to_send() == b""


# -- (a) the parser never raises, and chunking does not matter --------------------------------


@FUZZ_SETTINGS
@given(
    role_and_data=session_input(),
    local_streams=st.integers(0, 2),
    small_limits=st.booleans(),
    cuts=st.lists(st.integers(0, 10_000), max_size=10),
)
def test_any_input_gives_events_never_exceptions(
    role_and_data: tuple[bool, bytes], local_streams: int, small_limits: bool, cuts: list[int]
) -> None:
    client, data = role_and_data
    session = make_session(client, local_streams, small_limits)
    events, out = feed(session, split(data, cuts))
    check_termination(session, events, out)


@FUZZ_SETTINGS
@given(
    role_and_data=session_input(),
    local_streams=st.integers(0, 2),
    small_limits=st.booleans(),
    cuts=st.lists(st.integers(0, 10_000), max_size=10),
    bytewise=st.booleans(),
)
def test_chunking_does_not_change_events_or_output(
    role_and_data: tuple[bool, bytes],
    local_streams: int,
    small_limits: bool,
    cuts: list[int],
    bytewise: bool,
) -> None:
    client, data = role_and_data
    whole = make_session(client, local_streams, small_limits)
    whole_events, whole_out = feed(whole, [data])

    pieces = make_session(client, local_streams, small_limits)
    chunks = one_byte_chunks(data) if bytewise else split(data, cuts)
    piece_events, piece_out = feed(pieces, chunks)

    assert normalize(piece_events) == normalize(whole_events)
    assert piece_out == whole_out
    assert pieces.terminated == whole.terminated
    assert pieces.stream_ids == whole.stream_ids
    for stream_id in whole.stream_ids:
        assert pieces.stream_state(stream_id) is whole.stream_state(stream_id)
        assert pieces.receive_window(stream_id) == whole.receive_window(stream_id)
        assert pieces.send_window(stream_id) == whole.send_window(stream_id)
    check_termination(pieces, piece_events, piece_out)


@FUZZ_SETTINGS
@given(
    role_and_prefix=st.booleans().flatmap(
        lambda client: st.tuples(st.just(client), frame_stream(client, complete=True))
    ),
    bad=st.sampled_from(
        [
            bytes.fromhex("01 00 0000 00000001 00000000"),  # version 1
            bytes.fromhex("00 09 0000 00000000 00000000"),  # type 9
            bytes.fromhex("00 02 0001 00000005 00000000"),  # ping on stream 5
            bytes.fromhex("00 03 0000 00000001 00000000"),  # go-away on stream 1
            bytes.fromhex("00 00 0000 00000000 00000000"),  # data on stream 0
        ]
    ),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_a_violation_always_ends_with_go_away_protocol_error(
    role_and_prefix: tuple[bool, bytes], bad: bytes, cuts: list[int]
) -> None:
    client, prefix = role_and_prefix
    session = Session(client=client)
    events, out = feed(session, split(prefix, cuts))
    if session.terminated is None:
        more, tail = feed(session, [bad + b"ignored"])
        events += more
        out += tail
        assert isinstance(events[-1], ConnectionTerminated)
    check_termination(session, events, out)


def test_go_away_reply_for_a_plain_protocol_error() -> None:
    session = Session(client=True)
    events = session.receive_data(bytes.fromhex("05 00 0000 00000000 00000000"))
    assert len(events) == 1 and isinstance(events[0], ConnectionTerminated)
    assert events[0].code == GoAwayCode.PROTOCOL_ERROR
    assert session.data_to_send() == bytes.fromhex("00 03 0000 00000000 00000001")


def test_partial_header_is_buffered() -> None:
    session = Session(client=False)
    frame = bytes.fromhex("00 00 0001 00000001 00000005") + b"hello"
    assert session.receive_data(frame[:11]) == []
    assert session.receive_data(frame[11:12]) == [StreamOpened(1)]
    assert session.receive_data(frame[12:14]) == [DataReceived(1, b"he")]
    assert session.receive_data(frame[14:]) == [DataReceived(1, b"llo")]
    assert session.receive_data(b"") == []
    assert session.terminated is None


# -- (b) the header codec --------------------------------------------------------------------


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    type_=st.sampled_from(list(FrameType)),
    flags=st.integers(0, 15),
    stream_id=st.integers(0, MAX_UINT32),
    length=st.integers(0, MAX_UINT32),
    pad=st.binary(max_size=8),
)
def test_header_round_trip(type_: FrameType, flags: int, stream_id: int, length: int, pad: bytes) -> None:
    encoded = encode_header(type_, flags, stream_id, length)
    assert len(encoded) == HEADER_SIZE
    assert encoded[0] == PROTOCOL_VERSION
    decoded = decode_header(encoded)
    assert decoded == FrameHeader(type_, Flag(flags), stream_id, length)
    assert decoded.type is type_
    # Decoding at an offset inside a larger buffer gives the same header.
    assert decode_header(pad + encoded + pad, len(pad)) == decoded
    assert decode_header(memoryview(bytearray(pad + encoded)), len(pad)) == decoded
    # And re-encoding is byte-exact.
    assert encode_header(decoded.type, decoded.flags, decoded.stream_id, decoded.length) == encoded


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(raw=st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE))
def test_decode_any_header(raw: bytes) -> None:
    version, type_, flags, stream_id, length = struct.unpack(">BBHII", raw)
    if version != 0 or type_ > 3:
        with pytest.raises(HeaderError):
            decode_header(raw)
        return
    header = decode_header(raw)
    assert header.type == type_
    assert header.flags == flags & 0xF  # unknown flag bits are dropped
    assert header.stream_id == stream_id
    assert header.length == length


@pytest.mark.parametrize(
    ("type_", "flags", "stream_id", "length", "expected"),
    [
        # Data frame opening stream 1 with 5 bytes of payload.
        (FrameType.DATA, Flag.SYN, 1, 5, "00 00 0001 00000001 00000005"),
        # Window update ACKing stream 2 and granting 768 KiB more (a 1 MiB window).
        (FrameType.WINDOW_UPDATE, Flag.ACK, 2, 786432, "00 01 0002 00000002 000c0000"),
        (FrameType.WINDOW_UPDATE, Flag.FIN, 3, 0, "00 01 0004 00000003 00000000"),
        (FrameType.WINDOW_UPDATE, Flag.RST, 0x7FFFFFFF, 0, "00 01 0008 7fffffff 00000000"),
        (FrameType.PING, Flag.SYN, 0, 0xDEADBEEF, "00 02 0001 00000000 deadbeef"),
        (FrameType.PING, Flag.ACK, 0, 7, "00 02 0002 00000000 00000007"),
        (FrameType.GO_AWAY, Flag.NONE, 0, GoAwayCode.NORMAL, "00 03 0000 00000000 00000000"),
        (FrameType.GO_AWAY, Flag.NONE, 0, GoAwayCode.PROTOCOL_ERROR, "00 03 0000 00000000 00000001"),
        (FrameType.GO_AWAY, Flag.NONE, 0, GoAwayCode.INTERNAL_ERROR, "00 03 0000 00000000 00000002"),
        (FrameType.DATA, Flag.SYN | Flag.FIN, MAX_UINT32, MAX_UINT32, "00 00 0005 ffffffff ffffffff"),
    ],
)
def test_header_bytes(type_: FrameType, flags: Flag, stream_id: int, length: int, expected: str) -> None:
    raw = bytes.fromhex(expected)
    assert encode_header(type_, flags, stream_id, length) == raw
    assert decode_header(raw) == FrameHeader(type_, flags, stream_id, length)


def test_session_output_bytes() -> None:
    client = Session(client=True)
    stream_id = client.open_stream()
    assert client.send_data(stream_id, b"hello") == 5
    assert client.data_to_send() == (
        bytes.fromhex("00 01 0001 00000001 00000000") + bytes.fromhex("00 00 0000 00000001 00000005") + b"hello"
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("01 00 0000 00000000 00000000", "version 1"),
        ("ff 00 0000 00000000 00000000", "version 255"),
        ("00 04 0000 00000000 00000000", "type 4"),
        ("00 ff 0000 00000000 00000000", "type 255"),
    ],
)
def test_decode_rejects_bad_headers(raw: str, message: str) -> None:
    with pytest.raises(HeaderError, match=message):
        decode_header(bytes.fromhex(raw))

"""More hypothesis properties of shield-link version 1, for the stream-open header and the
announcement (issue 6, fuzzing). tests/link/test_wire.py already checks: valid messages
round-trip (whole and under any chunking, payload behind them kept), truncations never decode,
and random bytes, random bodies and mutated messages raise only WireError. This file adds:

- canonical encoding: whatever bytes decode, re-encode to exactly those bytes, and the reader
  and ``decode`` agree on every input;
- bodies built field by field (right lengths, arbitrary contents and counts) for each message
  type, which reach the validators that random bytes rarely get past;
- a declared body length over the reader's limit is refused as soon as the 6-byte envelope is
  complete, whatever the chunking and however much body follows; a length within the limit never
  is; a message of a type the reader does not expect is refused after 4 bytes;
- ``encode`` of messages whose fields hold any value at all (wrong types too) gives bytes that
  decode back to an equal message, or raises WireError, nothing else.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shield.link.wire import (
    HEADER_SIZE,
    MAX_BODY,
    NAME_PATTERN,
    Announce,
    AnnounceReply,
    Message,
    MessageReader,
    MessageType,
    OpenReply,
    OpenRequest,
    OpenStatus,
    WireError,
    decode,
    encode,
)

ALL_TYPES = (Announce, AnnounceReply, OpenRequest, OpenReply)
TYPE_CODES = {Announce: 1, AnnounceReply: 2, OpenRequest: 3, OpenReply: 4}
OPEN_TYPES = (OpenRequest, OpenReply)
ANNOUNCE_TYPES = (Announce, AnnounceReply)

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ---------------------------------------------------------------------------------

names = st.from_regex(NAME_PATTERN, fullmatch=True)
_chars = st.characters(blacklist_categories=("Cs", "Cc"))
text8 = st.text(_chars, max_size=63)
text16 = st.text(_chars, max_size=200)

open_requests = st.builds(
    OpenRequest,
    service=names,
    client=text8,
    metadata=st.lists(st.tuples(names, text16), unique_by=lambda pair: pair[0], max_size=8).map(tuple),
)
open_replies = st.builds(OpenReply, status=st.sampled_from(OpenStatus), reason=text16)
announces = st.builds(
    Announce,
    name=names,
    priority=st.integers(0, 2**32 - 1),
    version=text8,
    services=st.lists(names, unique=True, max_size=12).map(tuple),
)


@st.composite
def announce_replies(draw: st.DrawFn) -> AnnounceReply:
    services = draw(st.lists(names, unique=True, max_size=12))
    split = draw(st.integers(0, len(services)))
    return AnnounceReply(
        accepted=draw(st.booleans()),
        dmz_name=draw(names),
        services=tuple(services[:split]),
        refused=tuple((service, draw(text16)) for service in services[split:]),
        message=draw(text16),
    )


valid_messages = st.one_of(open_requests, open_replies, announces, announce_replies())

# Field contents a peer might send: valid names, near misses, control characters, invalid UTF-8.
_field_bytes = st.one_of(
    names.map(str.encode),
    st.sampled_from([b"", b"a b", b"-x", b"x" * 64, b"\xff", b"\xc3", b"e\x00", b"\xed\xa0\x80", b"\xc2\x85"]),
    st.binary(max_size=70),
)


def s8(raw: bytes) -> bytes:
    return bytes([len(raw) % 256]) + raw[:255]


def s16(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


@st.composite
def field_built_bodies(draw: st.DrawFn, type_: type) -> bytes:
    """A body of ``type_`` made of well-formed fields with arbitrary contents and counts.

    Sometimes a count says more (or fewer) entries than follow, and sometimes a tail of junk is
    appended, so truncation and trailing-byte errors are reached with realistic prefixes.
    """
    body = bytearray()
    entries = draw(st.integers(0, 6))
    count = entries if draw(st.integers(0, 4)) else draw(st.integers(0, 9))
    if type_ is Announce:
        body += s8(draw(_field_bytes)) + draw(st.binary(min_size=4, max_size=4)) + s8(draw(_field_bytes))
        body += count.to_bytes(2, "big")
        for _ in range(entries):
            body += s8(draw(_field_bytes))
    elif type_ is AnnounceReply:
        body += bytes([draw(st.sampled_from([0, 1, 0, 1, 2, 255]))]) + s8(draw(_field_bytes))
        body += count.to_bytes(2, "big")
        for _ in range(entries):
            body += s8(draw(_field_bytes))
        refused = draw(st.integers(0, 4))
        body += refused.to_bytes(2, "big")
        for _ in range(refused):
            body += s8(draw(_field_bytes)) + s16(draw(_field_bytes))
        body += s16(draw(_field_bytes))
    elif type_ is OpenRequest:
        body += s8(draw(_field_bytes)) + s8(draw(_field_bytes)) + bytes([count])
        for _ in range(entries):
            body += s8(draw(_field_bytes)) + s16(draw(_field_bytes))
    else:
        body += bytes([draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 255]))]) + s16(draw(_field_bytes))
    if not draw(st.integers(0, 5)):
        body += draw(st.binary(min_size=1, max_size=4))
    return bytes(body)


def envelope(type_: type, body: bytes) -> bytes:
    return struct.pack(">2sBBH", b"SH", 1, TYPE_CODES[type_], len(body)) + body


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


cut_lists = st.lists(st.integers(0, 10**5), max_size=8)


def read(data_chunks: list[bytes], expect: tuple[type, ...], max_body: int = MAX_BODY) -> tuple[Any, int, bytes]:
    """Feed a fresh reader: (message or WireError or None, bytes fed when it answered, leftover)."""
    reader = MessageReader(expect, max_body)
    fed = 0
    for chunk in data_chunks:
        fed += len(chunk)
        try:
            message, leftover = reader.feed(chunk)
        except WireError as error:
            return error, fed, b""
        if message is not None:
            return message, fed, leftover
    return None, fed, b""


def decode_or_error(data: bytes) -> Message | WireError:
    try:
        return decode(data)
    except WireError as error:
        return error


# --- canonical encoding; reader and decode agree --------------------------------------------------


def check_canonical_and_agreeing(data: bytes, cuts: list[int]) -> None:
    result = decode_or_error(data)
    if not isinstance(result, WireError):
        assert encode(result) == data, "decoded bytes must re-encode to exactly themselves"
    got, fed, leftover = read(chunked(data, cuts), ALL_TYPES)
    if isinstance(result, WireError):
        # decode refuses the whole buffer: the reader refuses too, or is still waiting, or
        # found a shorter valid message with bytes after it (decode refuses trailing bytes).
        if got is not None and not isinstance(got, WireError):
            consumed = fed - len(leftover)
            assert consumed < len(data)
            assert decode(data[:consumed]) == got
    else:
        assert got == result
        assert leftover == b""


@PROPS
@given(st.sampled_from(ALL_TYPES).flatmap(lambda t: st.tuples(st.just(t), field_built_bodies(t))), cut_lists)
def test_field_built_bodies_decode_canonically_or_raise_wire_error(
    case: tuple[type, bytes], cuts: list[int]
) -> None:
    type_, body = case
    check_canonical_and_agreeing(envelope(type_, body), cuts)


@PROPS
@given(valid_messages, st.data())
def test_mutated_messages_decode_canonically_or_raise_wire_error(message: Message, data: st.DataObject) -> None:
    encoded = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    check_canonical_and_agreeing(bytes(encoded), data.draw(cut_lists))


@PROPS
@given(st.binary(max_size=120), cut_lists)
def test_arbitrary_bytes_decode_canonically_or_raise_wire_error(data: bytes, cuts: list[int]) -> None:
    check_canonical_and_agreeing(b"SH\x01" + data, cuts)


# --- round trip of each exchange under any chunking, one reader per exchange --------------------


@PROPS
@given(st.one_of(open_requests, open_replies), st.binary(max_size=64), cut_lists, st.booleans())
def test_open_header_and_reply_round_trip_under_any_chunking(
    message: Message, payload: bytes, cuts: list[int], bytewise: bool
) -> None:
    data = encode(message) + payload
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else chunked(data, cuts)
    got, fed, leftover = read(chunks, (type(message),))
    assert got == message
    assert data[fed - len(leftover) :] == payload
    assert decode(data[: fed - len(leftover)]) == message


@PROPS
@given(st.one_of(announces, announce_replies()), st.binary(max_size=64), cut_lists, st.booleans())
def test_announcement_and_reply_round_trip_under_any_chunking(
    message: Message, payload: bytes, cuts: list[int], bytewise: bool
) -> None:
    data = encode(message) + payload
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else chunked(data, cuts)
    got, fed, leftover = read(chunks, (type(message),))
    assert got == message
    assert data[fed - len(leftover) :] == payload


@PROPS
@given(valid_messages, cut_lists)
def test_a_message_of_an_unexpected_type_is_refused_after_four_bytes(message: Message, cuts: list[int]) -> None:
    expect = OPEN_TYPES if isinstance(message, ANNOUNCE_TYPES) else ANNOUNCE_TYPES
    data = encode(message)
    chunks = chunked(data, cuts)
    got, fed, _ = read(chunks, expect)
    assert isinstance(got, WireError) and "unexpected" in str(got)
    # Refused by the chunk that completed the 4th byte, not later.
    assert fed == next(end for end in _chunk_ends(chunks) if end >= 4)


def _chunk_ends(chunks: list[bytes]) -> list[int]:
    ends, total = [], 0
    for chunk in chunks:
        total += len(chunk)
        ends.append(total)
    return ends


# --- a length over the limit is refused before the body is buffered ------------------------------


@PROPS
@given(
    st.sampled_from(ALL_TYPES),
    st.integers(0, MAX_BODY - 1),
    st.data(),
    st.integers(0, 3000),
    cut_lists,
)
def test_a_length_over_the_limit_is_refused_once_the_envelope_is_complete(
    type_: type, max_body: int, data: st.DataObject, body_present: int, cuts: list[int]
) -> None:
    declared = data.draw(st.integers(max_body + 1, MAX_BODY))
    wire = struct.pack(">2sBBH", b"SH", 1, TYPE_CODES[type_], declared) + b"\x00" * min(body_present, declared)
    chunks = chunked(wire, cuts)
    got, fed, _ = read(chunks, (type_,), max_body)
    assert isinstance(got, WireError)
    assert str(got) == f"{MessageType(TYPE_CODES[type_]).name} body of {declared} bytes is over the limit of {max_body}"
    assert fed == next(end for end in _chunk_ends(chunks) if end >= HEADER_SIZE)


@PROPS
@given(valid_messages, st.data())
def test_a_length_within_the_limit_is_never_refused_for_its_length(message: Message, data: st.DataObject) -> None:
    encoded = encode(message)
    max_body = data.draw(st.integers(len(encoded) - HEADER_SIZE, MAX_BODY))
    got, _, _ = read(chunked(encoded, data.draw(cut_lists)), (type(message),), max_body)
    assert got == message


def test_the_reader_buffers_nothing_of_an_oversized_body() -> None:
    """The refusal comes from the envelope alone: 6 bytes, with no body behind them yet."""
    reader = MessageReader((OpenRequest,), max_body=1024)
    with pytest.raises(WireError, match="OPEN body of 1025 bytes is over the limit of 1024"):
        reader.feed(b"SH\x01\x03\x04\x01")


# --- encode takes any field values: bytes that round-trip, or WireError ---------------------------

anything = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), st.binary(max_size=8),
        st.text(max_size=70), names, st.sampled_from(list(OpenStatus)),
    ),
    lambda inner: st.one_of(st.tuples(inner, inner), st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple)),
    max_leaves=6,
)
str_pairs = st.lists(st.tuples(st.one_of(names, st.text(max_size=8)), st.text(max_size=30)), max_size=4).map(tuple)
any_field_messages = st.one_of(
    st.builds(OpenRequest, service=st.one_of(names, anything), client=st.one_of(st.text(), anything),
              metadata=st.one_of(str_pairs, anything)),
    st.builds(OpenReply, status=st.one_of(st.integers(-2, 8), anything), reason=st.one_of(st.text(), anything)),
    st.builds(Announce, name=st.one_of(names, anything), priority=st.one_of(st.integers(-1, 2**32), anything),
              version=st.one_of(st.text(max_size=70), anything),
              services=st.one_of(st.lists(names, max_size=3).map(tuple), anything)),
    st.builds(AnnounceReply, accepted=st.one_of(st.booleans(), anything), dmz_name=st.one_of(names, anything),
              services=st.one_of(st.lists(names, max_size=3).map(tuple), anything),
              refused=st.one_of(str_pairs, anything), message=st.one_of(st.text(), anything)),
)  # fmt: skip


@PROPS
@given(any_field_messages)
def test_encode_round_trips_or_raises_wire_error(message: Message) -> None:
    try:
        data = encode(message)
    except WireError:
        return
    assert decode(data) == message
    assert read([data], (type(message),))[0] == message

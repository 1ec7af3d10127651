"""shield-link version 1 (shield/link/wire.py) against docs/protocol.md and hostile input.

The doc's hex examples are parsed here and must be exactly what the codec produces, so the two
cannot drift. Hypothesis then checks that valid messages round-trip, that no input makes the
decoder raise anything but WireError, that payload behind a message is never lost whatever the
chunking, and that truncated or malformed messages are refused with a message saying why.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import given
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
    safe_text,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
SECTION = "## Gateway messages (shield-link version 1)"
ALL_TYPES = (Announce, AnnounceReply, OpenRequest, OpenReply)

# --- the doc ------------------------------------------------------------------------------------

DOC_EXAMPLES: dict[str, Message] = {
    "ANNOUNCE (connector -> DMZ): internal1, priority 100, version 0.1.0, offering echo and chat": Announce(
        name="internal1", priority=100, version="0.1.0", services=("echo", "chat")
    ),
    "ANNOUNCE_REPLY (DMZ -> connector): dmz1 accepts echo and refuses chat": AnnounceReply(
        accepted=True,
        dmz_name="dmz1",
        services=("echo",),
        refused=(("chat", "not offered by internal1"),),
        message="",
    ),
    "ANNOUNCE_REPLY (DMZ -> connector): dmz1 refuses the link": AnnounceReply(
        accepted=False, dmz_name="dmz1", services=(), refused=(), message="unknown connector internal9"
    ),
    "OPEN (DMZ -> connector): echo for WebSocket client 203.0.113.5:51234 on path /echo": OpenRequest(
        service="echo", client="203.0.113.5:51234", metadata=(("transport", "ws"), ("path", "/echo"))
    ),
    "OPEN_REPLY (connector -> DMZ): OK": OpenReply(OpenStatus.OK),
    "OPEN_REPLY (connector -> DMZ): BACKEND_REFUSED": OpenReply(
        OpenStatus.BACKEND_REFUSED, "connection refused"
    ),
}

_HEX_LINE = re.compile(r"((?:[0-9a-f]{2} )*[0-9a-f]{2})(?: {2,}\S.*)?")


def doc_section() -> str:
    return DOC.read_text().split(SECTION, 1)[1]


def documented_examples() -> dict[str, bytes]:
    """Title line -> bytes, for every example in the section's Examples code block."""
    block = doc_section().split("### Examples", 1)[1].split("```", 2)[1]
    examples: dict[str, bytes] = {}
    for paragraph in block.strip("\n").split("\n\n"):
        title, *lines = paragraph.splitlines()
        data = bytearray()
        for line in lines:
            match = _HEX_LINE.fullmatch(line)
            assert match, f"not a hex line in the example {title!r}: {line!r}"
            data += bytes.fromhex(match.group(1))
        examples[title] = bytes(data)
    return examples


def test_doc_examples_are_all_checked() -> None:
    assert set(documented_examples()) == set(DOC_EXAMPLES)


@pytest.mark.parametrize("title", sorted(DOC_EXAMPLES))
def test_doc_example_matches_the_codec(title: str) -> None:
    data = documented_examples()[title]
    message = DOC_EXAMPLES[title]
    assert encode(message) == data
    assert decode(data) == message
    assert MessageReader((type(message),)).feed(data) == (message, b"")


def test_doc_tables_match_the_code() -> None:
    section = doc_section()
    assert f"`^{NAME_PATTERN.pattern}$`" in section
    for type_ in MessageType:
        assert f"`{type_.value}` {type_.name}" in section
        assert f"### {type_.name} (type {type_.value}," in section
    documented = dict(re.findall(r"^\| (\d+) \| `([A-Z_]+)` \|", section, re.M))
    assert documented == {str(status.value): status.name for status in OpenStatus}


def test_documented_error_messages_are_the_real_ones() -> None:
    section = doc_section()
    with pytest.raises(WireError) as bad_magic:
        decode(b"GET / HTTP/1.1\r\n")
    with pytest.raises(WireError) as truncated:
        decode(b"SH\x01\x03\x00\x04\x04ech")
    assert f"`{bad_magic.value}`" in section
    assert f"`{truncated.value}`" in section


# --- strategies ---------------------------------------------------------------------------------

names = st.from_regex(NAME_PATTERN, fullmatch=True)
_chars = st.characters(blacklist_categories=("Cs", "Cc"))
text8 = st.text(_chars, max_size=63)  # at most 4 bytes a character: always fits a str8
text16 = st.text(_chars, max_size=300)


@st.composite
def announce_replies(draw: st.DrawFn) -> AnnounceReply:
    services = draw(st.lists(names, unique=True, max_size=20))
    split = draw(st.integers(0, len(services)))
    reasons = draw(st.lists(text16, min_size=len(services) - split, max_size=len(services) - split))
    return AnnounceReply(
        accepted=draw(st.booleans()),
        dmz_name=draw(names),
        services=tuple(services[:split]),
        refused=tuple(zip(services[split:], reasons)),
        message=draw(text16),
    )


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Announce,
        name=names,
        priority=st.integers(0, 2**32 - 1),
        version=text8,
        services=st.lists(names, unique=True, max_size=20).map(tuple),
    ),
    announce_replies(),
    st.builds(
        OpenRequest,
        service=names,
        client=text8,
        metadata=st.lists(st.tuples(names, text16), unique_by=lambda pair: pair[0], max_size=12).map(tuple),
    ),
    st.builds(OpenReply, status=st.sampled_from(OpenStatus), reason=text16),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


# --- properties ---------------------------------------------------------------------------------


@given(messages)
def test_round_trip(message: Message) -> None:
    data = encode(message)
    assert len(data) <= HEADER_SIZE + MAX_BODY
    assert decode(data) == message
    assert MessageReader((type(message),)).feed(data) == (message, b"")


@given(messages, st.binary(max_size=200), st.lists(st.integers(0, 10**6), max_size=12))
def test_payload_after_a_message_is_never_lost(message: Message, payload: bytes, cuts: list[int]) -> None:
    data = encode(message)
    reader = MessageReader((type(message),))
    chunks = chunked(data + payload, cuts)
    for index, chunk in enumerate(chunks):
        got, leftover = reader.feed(chunk)
        if got is not None:
            break
        assert leftover == b""
    assert got == message
    assert leftover + b"".join(chunks[index + 1 :]) == payload
    with pytest.raises(RuntimeError):
        reader.feed(b"more")


@given(messages, st.data())
def test_truncated_messages_never_decode(message: Message, data: st.DataObject) -> None:
    encoded = encode(message)
    drawn = data.draw(st.lists(st.integers(0, len(encoded) - 1), max_size=20))
    for length in {0, 1, HEADER_SIZE - 1, HEADER_SIZE, len(encoded) - 1, *drawn}:
        prefix = encoded[:length]
        with pytest.raises(WireError, match="truncated"):
            decode(prefix)
        assert MessageReader((type(message),)).feed(prefix) == (None, b"")


def decode_or_wire_error(data: bytes) -> None:
    try:
        decode(data)
    except WireError:
        pass


def read_or_wire_error(chunks: list[bytes], expect: tuple[type, ...], max_body: int) -> None:
    reader = MessageReader(expect, max_body)
    try:
        for chunk in chunks:
            message, _ = reader.feed(chunk)
            if message is not None:
                assert isinstance(message, expect)
                return
    except WireError:
        pass


expects = st.lists(st.sampled_from(ALL_TYPES), min_size=1, unique=True).map(tuple)


cut_points = st.lists(st.integers(0, 400), max_size=6)


@given(st.binary(max_size=300), expects, st.integers(0, MAX_BODY), cut_points)
def test_arbitrary_bytes_raise_only_wire_error(
    data: bytes, expect: tuple[type, ...], max_body: int, cuts: list[int]
) -> None:
    decode_or_wire_error(data)
    read_or_wire_error(chunked(data, cuts), expect, max_body)


@given(st.sampled_from(MessageType), st.binary(max_size=300), expects, cut_points)
def test_arbitrary_bodies_raise_only_wire_error(
    type_: MessageType, body: bytes, expect: tuple[type, ...], cuts: list[int]
) -> None:
    data = struct.pack(">2sBBH", b"SH", 1, type_, len(body)) + body
    decode_or_wire_error(data)
    read_or_wire_error(chunked(data, cuts), expect, MAX_BODY)


@given(messages, st.data())
def test_mutated_messages_raise_only_wire_error(message: Message, data: st.DataObject) -> None:
    encoded = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = data.draw(st.integers(0, 255))
        if action == "flip":
            encoded[position] = byte
        elif action == "insert":
            encoded.insert(position, byte)
        elif len(encoded) > 1:
            del encoded[position]
    decode_or_wire_error(bytes(encoded))
    read_or_wire_error([bytes(encoded)], ALL_TYPES, MAX_BODY)


# --- hand-built bodies for the rejection cases --------------------------------------------------


def s8(value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return bytes([len(raw)]) + raw


def s16(value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return len(raw).to_bytes(2, "big") + raw


def envelope(type_: int, body: bytes, *, magic: bytes = b"SH", version: int = 1) -> bytes:
    return magic + bytes([version, type_]) + len(body).to_bytes(2, "big") + body


def open_body(
    service: bytes | str = "echo", client: bytes | str = "203.0.113.5:1", metadata: bytes = b"\x00"
) -> bytes:
    return s8(service) + s8(client) + metadata


BAD_NAMES = ["", "a b", "-echo", ".echo", "_echo", "x" * 64, "écho", "a/b", "echo\n", "a:b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_when_decoding(name: str) -> None:
    cases = [
        (envelope(3, open_body(service=name)), "service"),
        (envelope(3, open_body(metadata=b"\x01" + s8(name) + s16("v"))), "metadata key"),
        (envelope(1, s8(name) + b"\0\0\0\0" + s8("1") + b"\0\0"), "connector"),
        (envelope(1, s8("c") + b"\0\0\0\0" + s8("1") + b"\0\1" + s8(name)), "service"),
        (envelope(2, b"\0" + s8(name) + b"\0\0\0\0" + s16("")), "DMZ"),
        (envelope(2, b"\0" + s8("d") + b"\0\1" + s8(name) + b"\0\0" + s16("")), "service"),
        (envelope(2, b"\0" + s8("d") + b"\0\0\0\1" + s8(name) + s16("r") + s16("")), "service"),
    ]
    for data, kind in cases:
        with pytest.raises(WireError, match=re.escape(f"{kind} name {name!r} is not valid")):
            decode(data)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_when_encoding(name: str) -> None:
    cases = [
        (OpenRequest(name, "c"), "service"),
        (OpenRequest("echo", "c", ((name, "v"),)), "metadata key"),
        (Announce(name, 0, "1", ()), "connector"),
        (Announce("c", 0, "1", (name,)), "service"),
        (AnnounceReply(True, name, (), (), ""), "DMZ"),
        (AnnounceReply(True, "d", (name,), (), ""), "service"),
        (AnnounceReply(False, "d", (), ((name, "r"),), ""), "service"),
    ]
    for message, kind in cases:
        with pytest.raises(WireError, match=re.escape(f"{kind} name {name!r} is not valid")):
            encode(message)


def test_longest_name_is_valid() -> None:
    name = "a" + "-._9Z" * 12 + "bc"
    assert len(name) == 63
    assert decode(encode(OpenRequest(name, ""))) == OpenRequest(name, "")


@pytest.mark.parametrize("raw", [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"ab\xe2\x82", b"\x80"])
def test_invalid_utf8_is_refused(raw: bytes) -> None:
    cases = [
        (envelope(3, open_body(client=raw)), "client"),
        (envelope(3, open_body(metadata=b"\x01" + s8("k") + s16(raw))), "value"),
        (envelope(4, b"\x02" + s16(raw)), "reason"),
        (envelope(1, s8("c") + b"\0\0\0\0" + s8(raw) + b"\0\0"), "version"),
        (envelope(2, b"\1" + s8("d") + b"\0\0\0\0" + s16(raw)), "message"),
    ]
    for data, field in cases:
        with pytest.raises(WireError, match=f"field '{field}' in [A-Z_]+ body is not valid UTF-8"):
            decode(data)


def test_lone_surrogate_is_refused_when_encoding() -> None:
    with pytest.raises(WireError, match="field 'reason' is not valid UTF-8"):
        encode(OpenReply(OpenStatus.OK, "\ud800"))


@pytest.mark.parametrize("char", ["\x00", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9f"])
def test_control_characters_are_refused(char: str) -> None:
    expected = f"field 'client' contains control character U\\+{ord(char):04X}"
    with pytest.raises(WireError, match=expected):
        encode(OpenRequest("echo", f"1.2.3.4:5{char}forged log line"))
    with pytest.raises(WireError, match=expected):
        decode(envelope(3, open_body(client=f"x{char}")))


def test_non_control_unicode_is_fine() -> None:
    message = OpenReply(OpenStatus.BACKEND_UNREACHABLE, "Zeitüberschreitung \u00a0 🚫 \u200b")
    assert decode(encode(message)) == message


@pytest.mark.parametrize(
    "data",
    [
        envelope(4, b"\x00" + s16("") + b"\x00"),
        envelope(3, open_body() + b"junk"),
        envelope(1, s8("c") + b"\0\0\0\0" + s8("1") + b"\0\0" + b"\0"),
        envelope(2, b"\0" + s8("d") + b"\0\0\0\0" + s16("") + b"\0\0"),
    ],
)
def test_trailing_bytes_inside_a_body_are_refused(data: bytes) -> None:
    with pytest.raises(WireError, match=r"trailing byte\(s\) after the last field"):
        decode(data)
    with pytest.raises(WireError, match=r"trailing byte\(s\) after the last field"):
        MessageReader(ALL_TYPES).feed(data + b"payload")


def test_bytes_after_the_message_are_refused_by_decode() -> None:
    with pytest.raises(WireError, match=r"2 byte\(s\) after the end of the OPEN_REPLY message"):
        decode(encode(OpenReply(OpenStatus.OK)) + b"hi")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (envelope(3, b"\x04ech"), "truncated str8 field 'service' in OPEN body"),
        (envelope(3, b""), "truncated str8 field 'service' in OPEN body"),
        (envelope(3, s8("echo") + s8("c")), "truncated u8 field 'metadata count' in OPEN body"),
        (
            envelope(3, open_body(metadata=b"\x01" + s8("k") + b"\x00")),
            "truncated str16 field 'value' in OPEN body",
        ),
        (envelope(1, s8("c") + b"\0\0\0"), "truncated u32 field 'priority' in ANNOUNCE body"),
        (
            envelope(1, s8("c") + b"\0\0\0\0" + s8("1") + b"\0\2" + s8("a")),
            "truncated str8 field 'service' in ANNOUNCE body",
        ),
        (envelope(2, b""), "truncated u8 field 'status' in ANNOUNCE_REPLY body"),
        (envelope(4, b"\x00\x00"), "truncated str16 field 'reason' in OPEN_REPLY body"),
        (b"SH\x01\x04\x00", "truncated header: 5 of 6 bytes"),
        (b"SH\x01\x04\x00\x05\x00", "truncated OPEN_REPLY message: body is 5 bytes, got 1"),
    ],
)
def test_truncation_errors_name_the_field(data: bytes, error: str) -> None:
    with pytest.raises(WireError, match=re.escape(error)):
        decode(data)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (envelope(4, b"\x06" + s16("")), "unknown OPEN_REPLY status 6"),
        (envelope(4, b"\xff" + s16("")), "unknown OPEN_REPLY status 255"),
        (envelope(2, b"\x02" + s8("d") + b"\0\0\0\0" + s16("")), "unknown ANNOUNCE_REPLY status 2"),
        (
            envelope(1, s8("c") + b"\0\0\0\0" + s8("1") + b"\0\2" + s8("a") + s8("a")),
            "service 'a' is listed twice",
        ),
        (
            envelope(2, b"\0" + s8("d") + b"\0\1" + s8("a") + b"\0\1" + s8("a") + s16("r") + s16("")),
            "service 'a' is listed twice",
        ),
        (
            envelope(3, open_body(metadata=b"\x02" + s8("k") + s16("1") + s8("k") + s16("2"))),
            "metadata key 'k' is listed twice",
        ),
    ],
)
def test_unknown_statuses_and_duplicates_are_refused(data: bytes, error: str) -> None:
    with pytest.raises(WireError, match=re.escape(error)):
        decode(data)


# --- the envelope, judged as early as possible --------------------------------------------------

GOOD = encode(OpenRequest("echo", "203.0.113.5:51234"))


@pytest.mark.parametrize(
    ("data", "judged_after", "error"),
    [
        (b"GET / HTTP/1.1\r\n", 2, "bad magic 0x4745 (expected 'SH'): not a shield peer"),
        (b"\x16\x03\x01\x02\x00", 2, "bad magic 0x1603 (expected 'SH'): not a shield peer"),
        (b"SH\x02" + GOOD[3:], 3, "unsupported shield-link version 2 (this gateway speaks version 1)"),
        (b"SH\x00" + GOOD[3:], 3, "unsupported shield-link version 0"),
        (b"SH\x01\x00" + GOOD[4:], 4, "unknown message type 0"),
        (b"SH\x01\x05" + GOOD[4:], 4, "unknown message type 5"),
        (encode(OpenReply(OpenStatus.OK)), 4, "unexpected OPEN_REPLY message (expected OPEN)"),
        (encode(Announce("c", 1, "1", ())), 4, "unexpected ANNOUNCE message (expected OPEN)"),
    ],
)
def test_reader_refuses_a_bad_envelope_as_soon_as_it_can(data: bytes, judged_after: int, error: str) -> None:
    reader = MessageReader((OpenRequest,))
    for byte in data[: judged_after - 1]:
        assert reader.feed(bytes([byte])) == (None, b"")
    with pytest.raises(WireError, match=re.escape(error)):
        reader.feed(data[judged_after - 1 : judged_after])
    with pytest.raises(RuntimeError):
        reader.feed(b"")


def test_reader_names_every_expected_type() -> None:
    expected = "unexpected OPEN message (expected ANNOUNCE or OPEN_REPLY)"
    with pytest.raises(WireError, match=re.escape(expected)):
        MessageReader((OpenReply, Announce)).feed(GOOD)


def test_reader_refuses_a_body_over_its_limit_after_six_bytes() -> None:
    body_length = len(GOOD) - HEADER_SIZE
    reader = MessageReader((OpenRequest,), max_body=body_length - 1)
    assert reader.feed(GOOD[:5]) == (None, b"")
    expected = f"OPEN body of {body_length} bytes is over the limit of {body_length - 1}"
    with pytest.raises(WireError, match=expected):
        reader.feed(GOOD[5:6])
    assert MessageReader((OpenRequest,), max_body=body_length).feed(GOOD)[0] == decode(GOOD)


def test_reader_returns_leftover_from_the_same_chunk_and_then_refuses_more() -> None:
    reader = MessageReader((OpenRequest,))
    assert reader.feed(b"") == (None, b"")
    assert reader.feed(GOOD[:10]) == (None, b"")
    message, leftover = reader.feed(GOOD[10:] + b"\x00client bytes")
    assert message == decode(GOOD)
    assert leftover == b"\x00client bytes"
    with pytest.raises(RuntimeError):
        reader.feed(b"x")


def test_reader_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        MessageReader(())
    with pytest.raises(TypeError):
        MessageReader((str,))
    with pytest.raises(ValueError):
        MessageReader((OpenRequest,), max_body=MAX_BODY + 1)
    with pytest.raises(ValueError):
        MessageReader((OpenRequest,), max_body=-1)


# --- encode refuses what a peer would refuse ----------------------------------------------------


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (Announce("c", -1, "1", ()), "field 'priority' must be an integer from 0 to 4294967295, got -1"),
        (Announce("c", 2**32, "1", ()), "field 'priority' must be an integer"),
        (Announce("c", True, "1", ()), "field 'priority' must be an integer"),
        (Announce("c", 1, "v" * 256, ()), "field 'version' is 256 bytes of UTF-8, more than the 255"),
        (Announce("c", 1, "é" * 128, ()), "field 'version' is 256 bytes of UTF-8"),
        (Announce("c", 1, "1", ["echo"]), "field 'services' must be a tuple"),  # type: ignore[arg-type]
        (Announce("c", 1, "1", ("echo", "echo")), "service 'echo' is listed twice"),
        (Announce("c", 1, b"1", ()), "field 'version' must be a str, not bytes"),  # type: ignore[arg-type]
        (AnnounceReply(1, "d", (), (), ""), "field 'accepted' must be a bool"),  # type: ignore[arg-type]
        (AnnounceReply(True, "d", ("a",), (("a", "r"),), ""), "service 'a' is listed twice"),
        (AnnounceReply(True, "d", (), (("a",),), ""), "must hold (str, str) pairs"),  # type: ignore[arg-type]
        (AnnounceReply(False, "d", (), (), "m" * 65536), "field 'message' is 65536 bytes of UTF-8"),
        (OpenRequest("echo", "c" * 256), "field 'client' is 256 bytes of UTF-8, more than the 255"),
        (OpenRequest("echo", "c", (("k", "1"), ("k", "2"))), "metadata key 'k' is listed twice"),
        (
            OpenRequest("echo", "c", tuple((f"k{i}", "") for i in range(256))),
            "too many metadata entries: 256 (at most 255)",
        ),
        (
            OpenRequest("echo", "c", tuple((f"k{i}", "v" * 300) for i in range(255))),
            "OPEN body is 78183 bytes, more than the 65535 a message can hold",
        ),
        (OpenReply(6), "unknown OPEN_REPLY status 6"),  # type: ignore[arg-type]
        (OpenReply(False), "unknown OPEN_REPLY status False"),  # type: ignore[arg-type]
        (OpenReply(OpenStatus.OK, "r" * 65536), "field 'reason' is 65536 bytes"),
    ],
)
def test_encode_refuses_invalid_messages(message: Message, error: str) -> None:
    with pytest.raises(WireError, match=re.escape(error)):
        encode(message)


def test_encode_refuses_too_many_services() -> None:
    services = tuple(f"s{i}" for i in range(65536))
    with pytest.raises(WireError, match=re.escape("too many services: 65536 (at most 65535)")):
        encode(Announce("c", 1, "1", services))


def test_encode_refuses_a_body_over_65535_bytes_and_accepts_one_at_the_limit() -> None:
    overhead = len(encode(OpenReply(OpenStatus.OK))) - HEADER_SIZE
    at_limit = OpenReply(OpenStatus.OK, "r" * (MAX_BODY - overhead))
    assert len(encode(at_limit)) == HEADER_SIZE + MAX_BODY
    assert decode(encode(at_limit)) == at_limit
    refused = ((f"s{i}", "r" * 300) for i in range(300))
    with pytest.raises(WireError, match="ANNOUNCE_REPLY body is .* more than the 65535 a message can hold"):
        encode(AnnounceReply(True, "d", (), tuple(refused), ""))


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(TypeError):
        encode("OPEN echo")  # type: ignore[arg-type]


def test_open_reply_status_may_be_a_plain_int() -> None:
    decoded = decode(encode(OpenReply(2, "refused")))  # type: ignore[arg-type]
    assert decoded == OpenReply(OpenStatus.BACKEND_REFUSED, "refused")
    assert isinstance(decoded.status, OpenStatus)


def test_ipv6_client_and_empty_fields_round_trip() -> None:
    for message in [
        OpenRequest("echo", "[2001:db8::1]:443", (("transport", "ws"), ("origin", "https://example.com"))),
        OpenRequest("echo", ""),
        Announce("c", 0, "", ()),
        AnnounceReply(True, "d", (), (), ""),
    ]:
        assert decode(encode(message)) == message


def test_wire_error_is_a_value_error() -> None:
    assert issubclass(WireError, ValueError)


@given(st.text(st.characters(blacklist_categories=()), max_size=400), st.integers(0, 600))
def test_safe_text_always_encodes(text: str, max_bytes: int) -> None:
    reason = safe_text(text, max_bytes)
    assert len(reason.encode("utf-8")) <= max_bytes
    client = safe_text(text, 255)
    message = OpenRequest("echo", client, (("k", reason),))
    assert decode(encode(message)) == message
    assert decode(encode(OpenReply(OpenStatus.OK, safe_text(text)))).reason == safe_text(text)


@given(text16)
def test_safe_text_keeps_clean_text(text: str) -> None:
    assert safe_text(text) == text


def test_safe_text_examples() -> None:
    assert safe_text("refused\r\nFAKE: line\ud800") == "refused  FAKE: line\ufffd"
    assert safe_text("éé", 3) == "é"


# -- one name rule: what the loader and the dev CA accept, the wire carries ---------------------


@given(st.text(alphabet="abcXYZ019._- /\n\u00e9", max_size=70))
def test_loader_dev_ca_and_wire_accept_the_same_names(name: str) -> None:
    """A connector named in a checked file, with a dev certificate, can always announce itself."""
    from shield.config.errors import ConfigError
    from shield.config.loader import _check_identity
    from shield.tls.devcerts import validate_name

    def accepted(check: Callable[[], object], *errors: type[Exception]) -> bool:
        try:
            check()
        except errors:
            return False
        return True

    by_loader = accepted(lambda: _check_identity(name, "internal.name", "gateway name"), ConfigError)
    by_dev_ca = accepted(lambda: validate_name(name), ValueError)
    by_wire = accepted(lambda: encode(Announce(name, 100, "1.0", ("echo",))), WireError)
    if name.lower() in ("ca", "ca-key"):  # the dev CA's own files
        assert not by_dev_ca and by_loader == by_wire
    else:
        assert by_loader == by_dev_ca == by_wire, (name, by_loader, by_dev_ca, by_wire)


@pytest.mark.parametrize("name", ["_conn", "-x", ".x", "x" * 64, "a b"])
def test_names_the_wire_refuses_are_refused_everywhere(name: str) -> None:
    from shield.cli import main

    with pytest.raises(WireError):
        encode(Announce(name, 100, "1.0", ("echo",)))
    assert main(["certs-dev", "--out", "/nonexistent-never-written", "--dmz-name", "dmz1", f"--connector={name}"]) == 2

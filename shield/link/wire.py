"""shield-link version 1: the two exchanges the gateways make inside yamux streams.

On a link the connector announces itself on the first stream (ANNOUNCE / ANNOUNCE_REPLY); for each
public client the DMZ opens a stream headed by OPEN, answered by OPEN_REPLY, after which the stream is
raw bytes. This module is the one definition of those bytes, sans-IO (no Twisted, no sockets) so both
gateways and the tests share it. docs/protocol.md ("Gateway messages") specifies every byte, and
tests/link/test_wire.py checks the doc's examples against this code.

Every message is ``"SH" | version u8 | type u8 | body length u16 | body``, integers big-endian.
Anything malformed raises ``WireError`` with a message that says what is wrong; the peer is either
not a shield gateway or broken, and the caller drops the stream or the link.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Union, cast

from shield.names import NAME_PATTERN, NAME_RULE

MAGIC = b"SH"
VERSION = 1
HEADER = struct.Struct(">2sBBH")
HEADER_SIZE = HEADER.size  # 6
#: The body length is a u16, so no message can be larger than HEADER_SIZE + MAX_BODY.
MAX_BODY = 0xFFFF

#: C0, DEL and C1 controls: refused in every text field so a peer cannot forge log lines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class WireError(ValueError):
    """The bytes (or the message to encode) break shield-link version 1; the text says how."""


class MessageType(IntEnum):
    ANNOUNCE = 1
    ANNOUNCE_REPLY = 2
    OPEN = 3
    OPEN_REPLY = 4


class AnnounceStatus(IntEnum):
    ACCEPTED = 0
    REFUSED = 1


class OpenStatus(IntEnum):
    """The connector's answer to OPEN; anything but OK ends the stream."""

    OK = 0
    UNKNOWN_SERVICE = 1
    BACKEND_REFUSED = 2
    BACKEND_UNREACHABLE = 3
    BACKEND_TIMEOUT = 4
    OVERLOADED = 5


@dataclass(frozen=True, slots=True)
class Announce:
    """Connector -> DMZ, first message on the control stream: who I am and what I offer."""

    name: str
    priority: int
    version: str
    services: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AnnounceReply:
    """DMZ -> connector: which announced services it will route here, which not and why."""

    accepted: bool
    dmz_name: str
    services: tuple[str, ...]
    refused: tuple[tuple[str, str], ...]
    message: str


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """DMZ -> connector, first bytes of a client stream: a service name, never an address."""

    service: str
    client: str
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class OpenReply:
    """Connector -> DMZ: the backend is connected (OK), or why not."""

    status: OpenStatus
    reason: str = ""


_MESSAGE_TYPES = frozenset(MessageType)
_ANNOUNCE_STATUSES = frozenset(AnnounceStatus)
_OPEN_STATUSES = frozenset(OpenStatus)

Message = Union[Announce, AnnounceReply, OpenRequest, OpenReply]

_TYPE_OF: dict[type, MessageType] = {
    Announce: MessageType.ANNOUNCE,
    AnnounceReply: MessageType.ANNOUNCE_REPLY,
    OpenRequest: MessageType.OPEN,
    OpenReply: MessageType.OPEN_REPLY,
}


# --- validation (shared by encode and decode, so both sides refuse the same things) -------------


def _check_text(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise WireError(f"field '{field}' must be a str, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise WireError(f"field '{field}' is not valid UTF-8 (it contains a lone surrogate)") from None
    control = _CONTROL.search(value)
    if control:
        raise WireError(f"field '{field}' contains control character U+{ord(control.group()):04X}")
    return value


def _check_name(kind: str, value: object) -> None:
    if not isinstance(value, str):
        raise WireError(f"{kind} name must be a str, not {type(value).__name__}")
    if not NAME_PATTERN.fullmatch(value):
        raise WireError(
            f"{kind} name {value!r} is not valid: expected {NAME_RULE}"
        )


def _check_tuple(field: str, value: object) -> tuple[object, ...]:
    if not isinstance(value, tuple):
        raise WireError(f"field '{field}' must be a tuple, not {type(value).__name__}")
    return value


def _check_pairs(field: str, value: object) -> tuple[tuple[object, object], ...]:
    for item in _check_tuple(field, value):
        if not (isinstance(item, tuple) and len(item) == 2):
            raise WireError(f"field '{field}' must hold (str, str) pairs, got {item!r}")
    return cast("tuple[tuple[object, object], ...]", value)


def _check_unique(kind: str, names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise WireError(f"{kind} {name!r} is listed twice")
        seen.add(name)


def _check_uint(field: str, value: object, bits: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << bits:
        raise WireError(f"field '{field}' must be an integer from 0 to {(1 << bits) - 1}, got {value!r}")


def _validate_announce(m: Announce) -> None:
    _check_name("connector", m.name)
    _check_uint("priority", m.priority, 32)
    _check_text("version", m.version)
    for service in _check_tuple("services", m.services):
        _check_name("service", service)
    _check_unique("service", m.services)


def _validate_announce_reply(m: AnnounceReply) -> None:
    if not isinstance(m.accepted, bool):
        raise WireError(f"field 'accepted' must be a bool, got {m.accepted!r}")
    _check_name("DMZ", m.dmz_name)
    for service in _check_tuple("services", m.services):
        _check_name("service", service)
    for service, reason in _check_pairs("refused", m.refused):
        _check_name("service", service)
        _check_text("reason", reason)
    _check_unique("service", [*m.services, *(service for service, _ in m.refused)])
    _check_text("message", m.message)


def _validate_open(m: OpenRequest) -> None:
    _check_name("service", m.service)
    _check_text("client", m.client)
    for key, value in _check_pairs("metadata", m.metadata):
        _check_name("metadata key", key)
        _check_text("value", value)
    _check_unique("metadata key", [key for key, _ in m.metadata])


def _validate_open_reply(m: OpenReply) -> None:
    status = m.status
    if isinstance(status, bool) or not isinstance(status, int) or status not in _OPEN_STATUSES:
        raise WireError(f"unknown OPEN_REPLY status {status!r}")
    _check_text("reason", m.reason)


_VALIDATORS: dict[MessageType, Callable[..., None]] = {
    MessageType.ANNOUNCE: _validate_announce,
    MessageType.ANNOUNCE_REPLY: _validate_announce_reply,
    MessageType.OPEN: _validate_open,
    MessageType.OPEN_REPLY: _validate_open_reply,
}


def safe_text(text: str, max_bytes: int = 0xFFFF) -> str:
    """``text`` made acceptable as a free-text field (reason, message, version, client).

    For callers that build a reason from an exception or an OS message: control characters
    become spaces, lone surrogates U+FFFD, and the result is cut to ``max_bytes`` of UTF-8 on a
    character boundary, so encode() never refuses it (use 255 for str8 fields).
    """
    cleaned = _SURROGATE.sub("\ufffd", _CONTROL.sub(" ", text))
    return cleaned.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


# --- encoding ------------------------------------------------------------------------------------


class _Writer:
    """Appends fields to a body, refusing values that do not fit their wire field."""

    def __init__(self) -> None:
        self.body = bytearray()

    def uint(self, field: str, value: int, size: int) -> None:
        if not 0 <= value < 1 << (8 * size):
            raise WireError(f"too many {field}: {value} (at most {(1 << (8 * size)) - 1})")
        self.body += value.to_bytes(size, "big")

    def text(self, field: str, value: str, size: int) -> None:
        data = value.encode("utf-8")
        limit = (1 << (8 * size)) - 1
        if len(data) > limit:
            raise WireError(
                f"field '{field}' is {len(data)} bytes of UTF-8, more than the {limit} it can hold"
            )
        self.body += len(data).to_bytes(size, "big") + data


def _encode_announce(m: Announce, w: _Writer) -> None:
    w.text("name", m.name, 1)
    w.uint("priority", m.priority, 4)
    w.text("version", m.version, 1)
    w.uint("services", len(m.services), 2)
    for service in m.services:
        w.text("service", service, 1)


def _encode_announce_reply(m: AnnounceReply, w: _Writer) -> None:
    w.uint("status", AnnounceStatus.ACCEPTED if m.accepted else AnnounceStatus.REFUSED, 1)
    w.text("dmz_name", m.dmz_name, 1)
    w.uint("accepted services", len(m.services), 2)
    for service in m.services:
        w.text("service", service, 1)
    w.uint("refused services", len(m.refused), 2)
    for service, reason in m.refused:
        w.text("service", service, 1)
        w.text("reason", reason, 2)
    w.text("message", m.message, 2)


def _encode_open(m: OpenRequest, w: _Writer) -> None:
    w.text("service", m.service, 1)
    w.text("client", m.client, 1)
    w.uint("metadata entries", len(m.metadata), 1)
    for key, value in m.metadata:
        w.text("key", key, 1)
        w.text("value", value, 2)


def _encode_open_reply(m: OpenReply, w: _Writer) -> None:
    w.uint("status", int(m.status), 1)
    w.text("reason", m.reason, 2)


_ENCODERS: dict[MessageType, Callable[..., None]] = {
    MessageType.ANNOUNCE: _encode_announce,
    MessageType.ANNOUNCE_REPLY: _encode_announce_reply,
    MessageType.OPEN: _encode_open,
    MessageType.OPEN_REPLY: _encode_open_reply,
}


def encode(message: Message) -> bytes:
    """The whole message, envelope included; raises WireError for anything a peer would refuse."""
    try:
        type_ = _TYPE_OF[type(message)]
    except KeyError:
        raise TypeError(f"not a shield-link message: {message!r}") from None
    _VALIDATORS[type_](message)
    writer = _Writer()
    _ENCODERS[type_](message, writer)
    if len(writer.body) > MAX_BODY:
        raise WireError(
            f"{type_.name} body is {len(writer.body)} bytes, more than the {MAX_BODY} a message can hold"
        )
    return HEADER.pack(MAGIC, VERSION, type_, len(writer.body)) + bytes(writer.body)


# --- decoding ------------------------------------------------------------------------------------


class _Cursor:
    """Reads fields off one body; running short or leaving bytes behind is an error."""

    def __init__(self, body: bytes, type_: MessageType) -> None:
        self._body = body
        self._pos = 0
        self._type = type_

    def _take(self, size: int, kind: str, field: str) -> bytes:
        end = self._pos + size
        if end > len(self._body):
            raise WireError(f"truncated {kind} field '{field}' in {self._type.name} body")
        data = self._body[self._pos : end]
        self._pos = end
        return data

    def uint(self, field: str, size: int) -> int:
        return int.from_bytes(self._take(size, f"u{8 * size}", field), "big")

    def text(self, field: str, size: int) -> str:
        kind = f"str{8 * size}"
        length = int.from_bytes(self._take(size, kind, field), "big")
        try:
            return self._take(length, kind, field).decode("utf-8")
        except UnicodeDecodeError:
            raise WireError(f"field '{field}' in {self._type.name} body is not valid UTF-8") from None

    def end(self) -> None:
        extra = len(self._body) - self._pos
        if extra:
            raise WireError(f"{extra} trailing byte(s) after the last field of the {self._type.name} body")


def _decode_announce(c: _Cursor) -> Announce:
    name = c.text("name", 1)
    priority = c.uint("priority", 4)
    version = c.text("version", 1)
    services = tuple(c.text("service", 1) for _ in range(c.uint("service count", 2)))
    return Announce(name, priority, version, services)


def _decode_announce_reply(c: _Cursor) -> AnnounceReply:
    status = c.uint("status", 1)
    if status not in _ANNOUNCE_STATUSES:
        raise WireError(f"unknown ANNOUNCE_REPLY status {status}")
    dmz_name = c.text("dmz_name", 1)
    services = tuple(c.text("service", 1) for _ in range(c.uint("accepted count", 2)))
    refused = tuple((c.text("service", 1), c.text("reason", 2)) for _ in range(c.uint("refused count", 2)))
    message = c.text("message", 2)
    return AnnounceReply(status == AnnounceStatus.ACCEPTED, dmz_name, services, refused, message)


def _decode_open(c: _Cursor) -> OpenRequest:
    service = c.text("service", 1)
    client = c.text("client", 1)
    metadata = tuple((c.text("key", 1), c.text("value", 2)) for _ in range(c.uint("metadata count", 1)))
    return OpenRequest(service, client, metadata)


def _decode_open_reply(c: _Cursor) -> OpenReply:
    status = c.uint("status", 1)
    if status not in _OPEN_STATUSES:
        raise WireError(f"unknown OPEN_REPLY status {status}")
    return OpenReply(OpenStatus(status), c.text("reason", 2))


_DECODERS: dict[MessageType, Callable[[_Cursor], Message]] = {
    MessageType.ANNOUNCE: _decode_announce,
    MessageType.ANNOUNCE_REPLY: _decode_announce_reply,
    MessageType.OPEN: _decode_open,
    MessageType.OPEN_REPLY: _decode_open_reply,
}


def _decode_body(type_: MessageType, body: bytes) -> Message:
    cursor = _Cursor(body, type_)
    message = _DECODERS[type_](cursor)
    cursor.end()
    _VALIDATORS[type_](message)
    return message


def _check_prefix(prefix: bytes, expect: frozenset[MessageType] | None, max_body: int) -> None:
    """Judge as much of the envelope as has arrived, so garbage is refused after 2 to 6 bytes."""
    if len(prefix) >= 2 and prefix[:2] != MAGIC:
        raise WireError(f"bad magic 0x{prefix[0]:02x}{prefix[1]:02x} (expected 'SH'): not a shield peer")
    if len(prefix) >= 3 and prefix[2] != VERSION:
        raise WireError(
            f"unsupported shield-link version {prefix[2]} (this gateway speaks version {VERSION})"
        )
    if len(prefix) >= 4:
        if prefix[3] not in _MESSAGE_TYPES:
            raise WireError(f"unknown message type {prefix[3]}")
        type_ = MessageType(prefix[3])
        if expect is not None and type_ not in expect:
            wanted = " or ".join(t.name for t in sorted(expect))
            raise WireError(f"unexpected {type_.name} message (expected {wanted})")
        if len(prefix) >= HEADER_SIZE:
            length = int.from_bytes(prefix[4:6], "big")
            if length > max_body:
                raise WireError(f"{type_.name} body of {length} bytes is over the limit of {max_body}")


def decode(data: bytes) -> Message:
    """Exactly one whole message: a short buffer or bytes after the message are errors."""
    data = bytes(data)
    _check_prefix(data[:HEADER_SIZE], None, MAX_BODY)
    if len(data) < HEADER_SIZE:
        raise WireError(f"truncated header: {len(data)} of {HEADER_SIZE} bytes")
    _, _, type_, length = HEADER.unpack_from(data)
    type_ = MessageType(type_)
    got = len(data) - HEADER_SIZE
    if got < length:
        raise WireError(f"truncated {type_.name} message: body is {length} bytes, got {got}")
    if got > length:
        raise WireError(f"{got - length} byte(s) after the end of the {type_.name} message")
    return _decode_body(type_, data[HEADER_SIZE:])


class MessageReader:
    """Reads the one message that heads a stream, handing back whatever payload followed it.

    Feed it the stream's bytes as they arrive. It answers ``(None, b"")`` until the message is
    complete, then ``(message, leftover)``: ``leftover`` is the start of the stream's payload and
    belongs to the caller. Bad bytes raise ``WireError`` as soon as they can be judged. Once it has
    answered or raised, the reader is finished and feeding it again is a programming error.
    """

    def __init__(self, expect: tuple[type, ...], max_body: int = MAX_BODY) -> None:
        if not expect:
            raise ValueError("expect must name at least one message class")
        for cls in expect:
            if cls not in _TYPE_OF:
                raise TypeError(f"not a shield-link message class: {cls!r}")
        if not 0 <= max_body <= MAX_BODY:
            raise ValueError(f"max_body must be from 0 to {MAX_BODY}, got {max_body}")
        self._expect = frozenset(_TYPE_OF[cls] for cls in expect)
        self._max_body = max_body
        self._buffer = bytearray()
        self._finished = False

    def feed(self, data: bytes) -> tuple[Message | None, bytes]:
        if self._finished:
            raise RuntimeError("MessageReader is finished: what follows its message is payload")
        before = len(self._buffer)
        self._buffer += data
        try:
            if before < HEADER_SIZE:
                _check_prefix(bytes(self._buffer[:HEADER_SIZE]), self._expect, self._max_body)
            if len(self._buffer) < HEADER_SIZE:
                return None, b""
            end = HEADER_SIZE + int.from_bytes(self._buffer[4:6], "big")
            if len(self._buffer) < end:
                return None, b""
            message = _decode_body(MessageType(self._buffer[3]), bytes(self._buffer[HEADER_SIZE:end]))
        except WireError:
            self._finish()
            raise
        leftover = bytes(self._buffer[end:])
        self._finish()
        return message, leftover

    def _finish(self) -> None:
        self._finished = True
        self._buffer = bytearray()

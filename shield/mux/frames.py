"""yamux framing: the 12-byte header and its constants (hashicorp/yamux spec.md).

Kept free of state so the session core and the tests share one definition of the wire.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

PROTOCOL_VERSION = 0
HEADER = struct.Struct(">BBHII")
HEADER_SIZE = HEADER.size  # 12

#: Every stream starts with this receive window (spec: 256 KiB).
INITIAL_WINDOW = 256 * 1024
#: Largest per-stream window shield lets configuration choose.
MAX_WINDOW = 16 * 1024 * 1024
#: Length and window fields are 32-bit unsigned.
MAX_UINT32 = 0xFFFF_FFFF


class FrameType(IntEnum):
    DATA = 0
    WINDOW_UPDATE = 1
    PING = 2
    GO_AWAY = 3


class Flag(IntFlag):
    NONE = 0
    SYN = 0x1
    ACK = 0x2
    FIN = 0x4
    RST = 0x8


class GoAwayCode(IntEnum):
    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """A decoded header; ``length`` is payload size, window delta, ping value or go-away code."""

    type: FrameType
    flags: Flag
    stream_id: int
    length: int


def encode_header(type_: FrameType, flags: Flag | int, stream_id: int, length: int) -> bytes:
    return HEADER.pack(PROTOCOL_VERSION, type_, flags, stream_id, length)


class HeaderError(ValueError):
    """The header is not yamux version 0 with a known type."""


def decode_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> FrameHeader:
    """Decode the header at ``offset``; ``buf`` must hold at least 12 bytes from there."""
    version, type_, flags, stream_id, length = HEADER.unpack_from(buf, offset)
    if version != PROTOCOL_VERSION:
        raise HeaderError(f"unsupported yamux version {version}")
    if type_ > FrameType.GO_AWAY:
        raise HeaderError(f"unknown frame type {type_}")
    return FrameHeader(FrameType(type_), Flag(flags & 0xF), stream_id, length)

"""Reading one PROXY protocol header (v1 or v2), sans-IO: bytes in, a ``ProxyHeader`` out.

``HeaderReader.feed`` takes the bytes as they arrive, in pieces of any size (one byte at a time
too), and returns ``None`` while the header is incomplete, then the header and the bytes that
followed it in the same piece (the start of the connection's payload, never lost). Anything that
is not a header, or breaks a rule of the specification (HAProxy's doc/proxy-protocol.txt), raises
``ProxyProtocolError`` as soon as the offending byte is in, with what is wrong; nothing else is
ever raised for any input. What is held is bounded: 107 bytes for v1, 16 + ``MAX_V2_BLOCK`` for
v2 (a longer v2 block is refused from its 16-byte preamble, before any of it is buffered).

Why hand-written: Twisted has ``twisted.protocols.haproxy``, but its parsers are private
(``_v1parser.V1Parser``, ``_v2parser.V2Parser``), and its public ``HAProxyProtocolWrapper``
(``_wrapper.py``, as of the installed Twisted 26.10) chooses the parser from the *first*
``dataReceived`` alone: unless that first read holds at least 16 bytes starting with the 12-byte
v2 signature and a version nibble of 2, or at least 8 bytes starting with ``PROXY``, it calls
``loseConnection`` — so a valid header whose first read is shorter (split by the network, or
sent a byte at a time) drops the connection. It also connects the wrapped protocol before the
header is read (``ProtocolWrapper.makeConnection``), so ``connectionMade`` sees the socket's
peer, not the header's, and it has no deadline for a header that never completes.

``header_start`` answers the other question the DMZ has: could a connection's first bytes be a
header (from a peer not allowed to send one)?
"""

from __future__ import annotations

import re
from enum import Enum
from ipaddress import IPv4Address, IPv6Address

from shield.proxy_protocol.header import V1_MAX_LENGTH, V1_PREFIX, V2_SIGNATURE, Endpoint, ProxyHeader

#: The longest v2 address block (addresses and TLVs, after the 16-byte preamble) accepted: the
#: largest address block (AF_UNIX, 216 bytes) and a few KiB of TLVs (ALPN, authority, unique id,
#: SSL details). The format allows 65535; a longer one is refused from its preamble.
MAX_V2_BLOCK = 4096

V2_PREAMBLE = 16
#: The address block's size for each v2 family (AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX).
V2_ADDRESS_SIZE = {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 216}
V2_LOCAL = 0x0
V2_PROXY = 0x1
V2_STREAM = 0x1
V2_TRANSPORTS = (0x0, 0x1, 0x2)  # UNSPEC, STREAM, DGRAM

_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header; the message says what is wrong."""


class HeaderStart(Enum):
    """What a connection's first bytes say about a header (``header_start``)."""

    HEADER = "header"  # they begin with the v1 prefix ``PROXY `` or the v2 signature
    UNDECIDED = "undecided"  # too few bytes to tell: they are the beginning of one of those
    PLAIN = "plain"  # not a header


def header_start(data: bytes) -> HeaderStart:
    """Whether ``data``, a connection's first bytes, begin a PROXY header. Only the first 12
    bytes matter, so a caller holding back a plain client's bytes holds at most 11."""
    for prefix in (V1_PREFIX, V2_SIGNATURE):
        if data.startswith(prefix):
            return HeaderStart.HEADER
        if data and prefix.startswith(data[: len(prefix)]):
            return HeaderStart.UNDECIDED
    return HeaderStart.PLAIN if data else HeaderStart.UNDECIDED


class HeaderReader:
    """Reads one header, v1 or v2, told apart by its first byte."""

    __slots__ = ("_buffer", "_done")

    def __init__(self) -> None:
        self._buffer = b""
        self._done = False

    @property
    def buffered(self) -> int:
        """Bytes held, waiting for the rest of the header."""
        return len(self._buffer)

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        """The header and what followed it once it is complete; ``None`` until then.
        Raises ``ProxyProtocolError`` as soon as the bytes cannot be a valid header."""
        assert not self._done, "a HeaderReader reads one header"
        buffer = self._buffer + data
        if not buffer:
            return None
        if buffer[0] == V1_PREFIX[0]:
            result = _read_v1(buffer)
        elif buffer[0] == V2_SIGNATURE[0]:
            result = _read_v2(buffer)
        else:
            raise ProxyProtocolError(f"not a PROXY protocol header: it starts with {buffer[:12]!r}")
        if result is None:
            self._buffer = buffer
            return None
        self._done = True
        self._buffer = b""
        return result


def _read_v1(buffer: bytes) -> tuple[ProxyHeader, bytes] | None:
    start = buffer[: len(V1_PREFIX)]
    if not V1_PREFIX.startswith(start):
        raise ProxyProtocolError(f"not a PROXY protocol header: it starts with {start!r}")
    end = buffer.find(b"\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(buffer) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(f"v1 header: no CRLF within {V1_MAX_LENGTH} bytes")
        if b"\r" in buffer[:-1]:
            raise ProxyProtocolError("v1 header: CR not followed by LF")
        return None
    if end == 0 or buffer[end - 1 : end] != b"\r":
        raise ProxyProtocolError("v1 header: LF without CR")
    return _parse_v1_line(buffer[: end - 1]), buffer[end + 1 :]


def _parse_v1_line(line: bytes) -> ProxyHeader:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1 header: bytes that are not ASCII") from None
    if not text.isprintable():
        raise ProxyProtocolError("v1 header: a control character in the line")
    words = line.split(b" ")
    if len(words) < 2:
        raise ProxyProtocolError("v1 header: no protocol after PROXY")
    protocol = words[1]
    if protocol == b"UNKNOWN":
        return ProxyHeader(None, None)  # the rest of the line is ignored (the specification says so)
    if protocol not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"v1 header: protocol {protocol!r} (expected TCP4, TCP6 or UNKNOWN)")
    if len(words) != 6:
        raise ProxyProtocolError(
            f"v1 header: {len(words) - 2} fields after {protocol.decode()} (expected 4, separated by single spaces)"
        )
    kind = IPv4Address if protocol == b"TCP4" else IPv6Address
    source = Endpoint(_v1_address(words[2], kind), _v1_port(words[4]))
    destination = Endpoint(_v1_address(words[3], kind), _v1_port(words[5]))
    return ProxyHeader(source, destination)


def _v1_address(word: bytes, kind: type[IPv4Address] | type[IPv6Address]) -> IPv4Address | IPv6Address:
    text = word.decode("ascii")
    if "%" in text:  # ipaddress accepts an IPv6 scope id; the specification's addresses have none
        raise ProxyProtocolError(f"v1 header: {text!r} is not an IPv6 address")
    try:
        return kind(text)
    except ValueError:
        family = "IPv4" if kind is IPv4Address else "IPv6"
        raise ProxyProtocolError(f"v1 header: {text!r} is not an {family} address") from None


def _v1_port(word: bytes) -> int:
    if _PORT.fullmatch(word) is None or int(word) > 65535:
        raise ProxyProtocolError(f"v1 header: port {word.decode('ascii')!r} (expected 0 to 65535, no leading zero)")
    return int(word)


def _read_v2(buffer: bytes) -> tuple[ProxyHeader, bytes] | None:
    start = buffer[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(start):
        raise ProxyProtocolError(f"not a PROXY protocol header: it starts with {start!r}")
    if len(buffer) > 12:
        version, command = buffer[12] >> 4, buffer[12] & 0xF
        if version != 2:
            raise ProxyProtocolError(f"v2 header: version {version} (expected 2)")
        if command not in (V2_LOCAL, V2_PROXY):
            raise ProxyProtocolError(f"v2 header: command {command} (expected 0 LOCAL or 1 PROXY)")
    if len(buffer) > 13:
        family, transport = buffer[13] >> 4, buffer[13] & 0xF
        if family not in V2_ADDRESS_SIZE or transport not in V2_TRANSPORTS:
            raise ProxyProtocolError(f"v2 header: address family and protocol byte 0x{buffer[13]:02x} is not defined")
    if len(buffer) < V2_PREAMBLE:
        return None
    length = int.from_bytes(buffer[14:16], "big")
    if length > MAX_V2_BLOCK:
        raise ProxyProtocolError(f"v2 header: {length} bytes of addresses and TLVs (at most {MAX_V2_BLOCK} accepted)")
    end = V2_PREAMBLE + length
    if len(buffer) < end:
        return None
    return _parse_v2_block(buffer[12], buffer[13], buffer[V2_PREAMBLE:end]), buffer[end:]


def _parse_v2_block(version_command: int, family_transport: int, block: bytes) -> ProxyHeader:
    if version_command & 0xF == V2_LOCAL:
        return ProxyHeader(None, None)  # the block is discarded, family included (the specification)
    family, transport = family_transport >> 4, family_transport & 0xF
    size = V2_ADDRESS_SIZE[family]
    if len(block) < size:
        raise ProxyProtocolError(f"v2 header: {len(block)} bytes for addresses of family {family} (needs {size})")
    _check_tlvs(block[size:])
    if transport != V2_STREAM or family not in (0x1, 0x2):
        return ProxyHeader(None, None)  # AF_UNSPEC, AF_UNIX or DGRAM: no TCP addresses to use
    half = (size - 4) // 2
    kind = IPv4Address if family == 0x1 else IPv6Address
    source = Endpoint(kind(block[:half]), int.from_bytes(block[2 * half : 2 * half + 2], "big"))
    destination = Endpoint(kind(block[half : 2 * half]), int.from_bytes(block[2 * half + 2 : size], "big"))
    return ProxyHeader(source, destination)


def _check_tlvs(tlvs: bytes) -> None:
    """TLVs are skipped, but each must fit: type (1 byte), length (2), then that many bytes."""
    offset = 0
    while offset < len(tlvs):
        if len(tlvs) - offset < 3:
            raise ProxyProtocolError(f"v2 header: {len(tlvs) - offset} bytes left, too few for a TLV")
        length = int.from_bytes(tlvs[offset + 1 : offset + 3], "big")
        offset += 3 + length
        if offset > len(tlvs):
            raise ProxyProtocolError(f"v2 header: TLV of type 0x{tlvs[offset - 3 - length]:02x} runs past the block")

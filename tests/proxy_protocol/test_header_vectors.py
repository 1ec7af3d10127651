"""Known headers from HAProxy's doc/proxy-protocol.txt (its examples and worst cases) and the
rules it states, each read and written by shield/proxy_protocol."""

from __future__ import annotations

import pytest

from shield.proxy_protocol.build import V1_UNKNOWN, V2_LOCAL, build_v1, build_v2
from shield.proxy_protocol.header import V1_MAX_LENGTH, Endpoint, ProxyHeader
from shield.proxy_protocol.parse import HeaderReader, HeaderStart, ProxyProtocolError, header_start

FFFF6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


def parse(data: bytes) -> tuple[ProxyHeader, bytes] | None:
    return HeaderReader().feed(data)


def relayed(source: str, sport: int, destination: str, dport: int) -> ProxyHeader:
    return ProxyHeader(Endpoint.of(source, sport), Endpoint.of(destination, dport))


def test_the_specifications_v1_examples() -> None:
    tcp4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    assert parse(tcp4) == (relayed("255.255.255.255", 65535, "255.255.255.255", 65535), b"")
    tcp6 = f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode()
    assert len(tcp6) == 104
    assert parse(tcp6) == (relayed(FFFF6, 65535, FFFF6, 65535), b"")
    assert parse(b"PROXY UNKNOWN\r\n") == (ProxyHeader(None, None), b"")
    # "the receiver must ignore anything presented before the CRLF is found": the worst case, 107
    unknown = f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode()
    assert len(unknown) == V1_MAX_LENGTH
    assert parse(unknown + b"data") == (ProxyHeader(None, None), b"data")
    example = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n"
    assert parse(example) == (relayed("192.168.0.1", 56324, "192.168.0.11", 443), b"GET / HTTP/1.1\r\n")


def test_v1_is_written_as_the_specification_shows() -> None:
    header = relayed("192.168.0.1", 56324, "192.168.0.11", 443)
    assert build_v1(header) == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    assert build_v1(relayed("2001:db8::1", 1, "::1", 2)) == b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"
    assert build_v1(ProxyHeader(None, None)) == V1_UNKNOWN == b"PROXY UNKNOWN\r\n"


def test_v2_is_written_byte_for_byte() -> None:
    header = relayed("192.168.0.1", 56324, "192.168.0.11", 443)
    expected = bytes.fromhex(
        "0d0a0d0a000d0a515549540a"  # signature
        "21"  # version 2, command PROXY
        "11"  # AF_INET, STREAM
        "000c"  # 12 bytes of addresses
        "c0a80001" "c0a8000b"  # 192.168.0.1, 192.168.0.11
        "dc04" "01bb"  # 56324, 443
    )  # fmt: skip
    assert build_v2(header) == expected
    assert parse(expected + b"x") == (header, b"x")
    six = build_v2(relayed("2001:db8::1", 1, "::1", 2))
    assert six[12:16] == bytes.fromhex("21210024") and len(six) == 16 + 36
    assert V2_LOCAL == bytes.fromhex("0d0a0d0a000d0a515549540a" "20" "00" "0000")  # fmt: skip
    assert build_v2(ProxyHeader(None, None)) == V2_LOCAL


@pytest.mark.parametrize(
    "family_transport, block",
    [
        ("00", ""),  # AF_UNSPEC
        ("31", "2f" * 216),  # AF_UNIX, STREAM
        ("12", "7f000001" "7f000002" "0001" "0002"),  # AF_INET, DGRAM
        ("10", "7f000001" "7f000002" "0001" "0002"),  # AF_INET, UNSPEC
    ],
)  # fmt: skip
def test_v2_families_without_tcp_addresses_say_unknown(family_transport: str, block: str) -> None:
    body = bytes.fromhex(block)
    data = bytes.fromhex("0d0a0d0a000d0a515549540a21" + family_transport) + len(body).to_bytes(2, "big") + body
    assert parse(data) == (ProxyHeader(None, None), b"")


def test_v2_local_discards_its_block() -> None:
    block = bytes.fromhex("7f000001" "7f000002" "0001" "0002")  # fmt: skip
    data = bytes.fromhex("0d0a0d0a000d0a515549540a2011000c") + block
    assert parse(data + b"rest") == (ProxyHeader(None, None), b"rest")


def test_v2_skips_tlvs_whose_lengths_fit() -> None:
    tlvs = bytes.fromhex("01000268320400020000")  # ALPN "h2", NOOP of two bytes
    block = bytes.fromhex("7f000005" "7f000001" "15b3" "0050") + tlvs  # fmt: skip
    data = bytes.fromhex("0d0a0d0a000d0a515549540a2111") + len(block).to_bytes(2, "big") + block
    assert parse(data) == (relayed("127.0.0.5", 5555, "127.0.0.1", 80), b"")


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "protocol"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "fields"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "fields"),
        (b"PROXY TCP4 ::1 ::2 1 2\r\n", "not an IPv4 address"),
        (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "not an IPv6 address"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "not an IPv6 address"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "not an IPv4 address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "LF without CR"),
        (b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2", "CR not followed by LF"),
        (b"PROXY TCP4 1.2.3.\xc3\xa9 5.6.7.8 1 2\r\n", "ASCII"),
        (b"PROXY \tTCP4\r\n", "control character"),
        (b"PROXY\r\n", "not a PROXY protocol header"),
        (b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n", "no CRLF within 107 bytes"),
        (bytes.fromhex("0d0a0d0a000d0a515549540a11"), "version 1"),
        (bytes.fromhex("0d0a0d0a000d0a515549540a22"), "command 2"),
        (bytes.fromhex("0d0a0d0a000d0a515549540a2141"), "not defined"),
        (bytes.fromhex("0d0a0d0a000d0a515549540a2113"), "not defined"),
        (bytes.fromhex("0d0a0d0a000d0a515549540a21110008") + bytes(8), "needs 12"),
        (bytes.fromhex("0d0a0d0a000d0a515549540a2111000e") + bytes(14), "too few for a TLV"),
        (bytes.fromhex("0d0a0d0a000d0a515549540a21110010") + bytes(12) + b"\x04\x00\x05\x00", "runs past"),
        (bytes.fromhex("0d0a0d0a000d0a5155495400"), "not a PROXY protocol header"),
    ],
)
def test_what_is_refused_and_why(data: bytes, problem: str) -> None:
    with pytest.raises(ProxyProtocolError, match=problem):
        parse(data)


def test_a_refusal_comes_as_soon_as_the_byte_is_in() -> None:
    for data in (b"G", b"PRX", b"\r\n\r\n\x01", bytes.fromhex("0d0a0d0a000d0a515549540a31")):
        with pytest.raises(ProxyProtocolError):
            parse(data)


def test_header_start() -> None:
    assert header_start(b"") is HeaderStart.UNDECIDED
    assert header_start(b"PROX") is HeaderStart.UNDECIDED
    assert header_start(b"\r\n\r\n\x00") is HeaderStart.UNDECIDED
    assert header_start(b"PROXY ") is HeaderStart.HEADER
    assert header_start(b"\r\n\r\n\x00\r\nQUIT\n\x21") is HeaderStart.HEADER
    assert header_start(b"GET / HTTP/1.1") is HeaderStart.PLAIN
    assert header_start(b"\x16\x03\x01") is HeaderStart.PLAIN  # a TLS ClientHello
    assert header_start(b"PROXYX") is HeaderStart.PLAIN
    assert header_start(b"\r\n\r\n\x00\r\nQUIT!") is HeaderStart.PLAIN

"""Properties of the PROXY protocol reader and writer (shield/proxy_protocol): what is built parses
back (v1 and v2), under any split of the bytes, with what follows the header kept; random bytes
and mutated headers raise only ``ProxyProtocolError``; a truncated header is "need more", never a
wrong answer; what may be held is bounded."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shield.proxy_protocol.build import build, build_v1, build_v2
from shield.proxy_protocol.header import V1_MAX_LENGTH, V1_PREFIX, V2_SIGNATURE, Endpoint, ProxyHeader
from shield.proxy_protocol.parse import (
    MAX_V2_BLOCK,
    HeaderReader,
    HeaderStart,
    ProxyProtocolError,
    header_start,
)

ports = st.integers(0, 65535)
v4 = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
v6 = st.builds(IPv6Address, st.integers(0, 2**128 - 1))


def endpoints(addresses: st.SearchStrategy[IPv4Address] | st.SearchStrategy[IPv6Address]) -> st.SearchStrategy[Endpoint]:
    return st.builds(Endpoint, addresses, ports)


relayed = st.one_of(
    st.builds(ProxyHeader, endpoints(v4), endpoints(v4)),
    st.builds(ProxyHeader, endpoints(v6), endpoints(v6)),
)
headers = st.one_of(relayed, st.just(ProxyHeader(None, None)))
versions = st.sampled_from(["v1", "v2"])


def feed_split(data: bytes, cuts: list[int]) -> tuple[ProxyHeader, bytes] | None:
    """Feed ``data`` cut at ``cuts``; what follows a completed header is collected as leftover."""
    reader = HeaderReader()
    result = None
    rest = b""
    previous = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        piece = data[previous:cut]
        previous = cut
        if result is not None:
            rest += piece
            continue
        result = reader.feed(piece)
    if result is None:
        return None
    return result[0], result[1] + rest


@given(headers, versions, st.binary(max_size=64), st.data())
def test_built_headers_parse_back_under_any_split(header: ProxyHeader, version: str, after: bytes, data: st.DataObject) -> None:
    encoded = build(header, version)  # type: ignore[arg-type]
    stream = encoded + after
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=len(stream)))
    assert feed_split(stream, cuts) == (header, after)


@given(headers, versions)
def test_one_byte_at_a_time(header: ProxyHeader, version: str) -> None:
    encoded = build(header, version)  # type: ignore[arg-type]
    reader = HeaderReader()
    for index in range(len(encoded) - 1):
        assert reader.feed(encoded[index : index + 1]) is None
    assert reader.feed(encoded[-1:]) == (header, b"")


@given(headers, versions, st.data())
def test_a_truncated_header_is_need_more(header: ProxyHeader, version: str, data: st.DataObject) -> None:
    encoded = build(header, version)  # type: ignore[arg-type]
    cut = data.draw(st.integers(0, len(encoded) - 1))
    assert HeaderReader().feed(encoded[:cut]) is None


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
def test_random_bytes_raise_only_the_one_error(blob: bytes, cuts: list[int]) -> None:
    try:
        feed_split(blob, [cut for cut in cuts if cut <= len(blob)])
    except ProxyProtocolError:
        pass


@given(headers, versions, st.data())
def test_mutated_headers_parse_to_something_or_raise_the_one_error(
    header: ProxyHeader, version: str, data: st.DataObject
) -> None:
    encoded = bytearray(build(header, version))  # type: ignore[arg-type]
    for _ in range(data.draw(st.integers(1, 4))):
        encoded[data.draw(st.integers(0, len(encoded) - 1))] = data.draw(st.integers(0, 255))
    try:
        result = HeaderReader().feed(bytes(encoded))
    except ProxyProtocolError:
        return
    if result is not None:
        assert isinstance(result[0], ProxyHeader)


@given(st.binary(min_size=V1_MAX_LENGTH - len(V1_PREFIX), max_size=400).filter(lambda b: b"\n" not in b and b"\r" not in b))
def test_v1_without_crlf_is_refused_by_107_bytes(tail: bytes) -> None:
    reader = HeaderReader()
    with pytest.raises(ProxyProtocolError):
        for offset in range(0, len(tail), 7):
            reader.feed((V1_PREFIX if offset == 0 else b"") + tail[offset : offset + 7])
        reader.feed(b"x")
    assert reader.buffered < V1_MAX_LENGTH


@given(st.integers(MAX_V2_BLOCK + 1, 65535), st.integers(0, 15), st.binary(max_size=64))
def test_v2_over_the_cap_is_refused_from_its_preamble(length: int, cut: int, more: bytes) -> None:
    preamble = V2_SIGNATURE + b"\x21\x11" + length.to_bytes(2, "big")
    reader = HeaderReader()
    assert reader.feed(preamble[:cut]) is None
    with pytest.raises(ProxyProtocolError, match="at most"):
        reader.feed(preamble[cut:] + more)


@given(st.integers(0, MAX_V2_BLOCK - 12))
def test_v2_within_the_cap_with_tlvs_is_accepted(extra: int) -> None:
    # one NOOP TLV (type 0x04) filling ``extra`` bytes, when there is room for its 3-byte head
    tlv = b"" if extra < 3 else b"\x04" + (extra - 3).to_bytes(2, "big") + bytes(extra - 3)
    block = bytes([127, 0, 0, 5, 127, 0, 0, 1]) + (5555).to_bytes(2, "big") + (80).to_bytes(2, "big") + tlv
    encoded = V2_SIGNATURE + b"\x21\x11" + len(block).to_bytes(2, "big") + block
    source = Endpoint.of("127.0.0.5", 5555)
    assert HeaderReader().feed(encoded + b"GET") == (ProxyHeader(source, Endpoint.of("127.0.0.1", 80)), b"GET")


@given(headers, versions)
def test_header_start_says_header_for_every_built_header(header: ProxyHeader, version: str) -> None:
    encoded = build(header, version)  # type: ignore[arg-type]
    assert header_start(encoded) is HeaderStart.HEADER
    for cut in range(12 if version == "v2" else 6):
        assert header_start(encoded[:cut]) is HeaderStart.UNDECIDED


@given(st.binary(max_size=40))
def test_header_start_is_consistent_with_the_reader(blob: bytes) -> None:
    start = header_start(blob)
    if start is HeaderStart.PLAIN:
        with pytest.raises(ProxyProtocolError):
            HeaderReader().feed(blob)
    if start is HeaderStart.UNDECIDED:
        assert len(blob) < 12


@given(relayed)
def test_mixed_families_are_written_ipv4_mapped(header: ProxyHeader) -> None:
    assert header.source is not None and header.destination is not None
    if isinstance(header.source.address, IPv6Address):
        return
    mixed = ProxyHeader(header.source, Endpoint(IPv6Address(2**128 - 2), 9))
    for encoded in (build_v1(mixed), build_v2(mixed)):
        parsed = HeaderReader().feed(encoded)
        assert parsed is not None
        source = parsed[0].source
        assert source is not None and isinstance(source.address, IPv6Address)
        assert source.address.ipv4_mapped == header.source.address


@settings(max_examples=50)
@given(st.sampled_from(["TCP4 1.2.3.4 5.6.7.8 1 2", "TCP6 ::1 ::2 1 2"]), st.integers(0, 30))
def test_v1_is_strict_about_spaces(line: str, where: int) -> None:
    spaces = [index for index, char in enumerate(line) if char == " "]
    doubled = line[: spaces[where % len(spaces)]] + " " + line[spaces[where % len(spaces)] :]
    with pytest.raises(ProxyProtocolError):
        HeaderReader().feed(b"PROXY " + doubled.encode() + b"\r\n")

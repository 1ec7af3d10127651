"""Writing a PROXY protocol header (v1 or v2) exactly as HAProxy's doc/proxy-protocol.txt says.

A relayed connection (``ProxyHeader`` with both ends) is ``PROXY TCP4``/``TCP6`` in v1 and
command PROXY over AF_INET/AF_INET6 and STREAM in v2; one without addresses is ``PROXY UNKNOWN``
in v1 and command LOCAL in v2 (a health check, or a client whose address the connector was not
told). When one end is IPv4 and the other IPv6, the IPv4 one is written IPv4-mapped (a header
has one family), as HAProxy does.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from shield.proxy_protocol.header import V2_SIGNATURE, Endpoint, ProxyHeader

Version = Literal["v1", "v2"]

V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
#: v2, command LOCAL (0x20), family AF_UNSPEC and protocol UNSPEC (0x00), no address block.
V2_LOCAL = V2_SIGNATURE + b"\x20\x00\x00\x00"


def build(header: ProxyHeader, version: Version) -> bytes:
    return build_v1(header) if version == "v1" else build_v2(header)


def build_v1(header: ProxyHeader) -> bytes:
    ends = _same_family(header)
    if ends is None:
        return V1_UNKNOWN
    source, destination = ends
    protocol = "TCP4" if isinstance(source.address, IPv4Address) else "TCP6"
    line = f"PROXY {protocol} {source.address} {destination.address} {source.port} {destination.port}\r\n"
    return line.encode("ascii")


def build_v2(header: ProxyHeader) -> bytes:
    ends = _same_family(header)
    if ends is None:
        return V2_LOCAL
    source, destination = ends
    family = b"\x11" if isinstance(source.address, IPv4Address) else b"\x21"  # AF_INET/AF_INET6, STREAM
    block = (
        source.address.packed + destination.address.packed + source.port.to_bytes(2, "big") + destination.port.to_bytes(2, "big")
    )
    return V2_SIGNATURE + b"\x21" + family + len(block).to_bytes(2, "big") + block


def _same_family(header: ProxyHeader) -> tuple[Endpoint, Endpoint] | None:
    source, destination = header.source, header.destination
    if source is None or destination is None:
        return None
    if type(source.address) is not type(destination.address):
        source, destination = _mapped(source), _mapped(destination)
    return source, destination


def _mapped(end: Endpoint) -> Endpoint:
    if isinstance(end.address, IPv6Address):
        return end
    return Endpoint(IPv6Address(f"::ffff:{end.address}"), end.port)

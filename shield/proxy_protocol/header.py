"""What a PROXY protocol header says, shared by the reader (``parse``) and the writer (``build``).

HAProxy's specification (doc/proxy-protocol.txt, "The PROXY protocol, versions 1 & 2") defines
two encodings of one fact: the connection was relayed, from ``source`` to ``destination`` (the
address the relay accepted it on). A header may also say nothing about addresses (v1
``UNKNOWN``, v2 ``LOCAL`` or an unsupported family): the relay's own connection, a health
check, whose addresses are then the socket's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

#: The 12 bytes every v2 header starts with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: Every v1 header starts with these 6 bytes.
V1_PREFIX = b"PROXY "
#: The longest v1 header, CRLF included (the specification's bound).
V1_MAX_LENGTH = 107


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An IP address and a TCP port."""

    address: IPv4Address | IPv6Address
    port: int

    @classmethod
    def of(cls, host: str, port: int) -> "Endpoint":
        return cls(ip_address(host), port)

    @property
    def host(self) -> str:
        return str(self.address)


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One header's meaning: the relayed connection's two ends, or None for a connection of the
    relay's own (v1 UNKNOWN, v2 LOCAL, or a family other than TCP over IPv4/IPv6)."""

    source: Endpoint | None
    destination: Endpoint | None

    @property
    def relayed(self) -> bool:
        return self.source is not None

"""The PROXY protocol door of a public port (shield/dmz/proxy_door.py), in memory: a real
``ServiceFront``, ``ClientGate`` and raw TCP front behind a ``ProxyHeaderFactory``, a real
connector link, one fake clock.

What a load balancer in ``proxy-protocol-from`` sends is read whole, in any split, and its source
is the client everywhere: admission's per-source count, the OPEN's label and metadata, logs; a
LOCAL header keeps the socket's address; a bad, truncated or late header is refused with one
line and a metric; a header from anyone else is refused; a plain client's bytes pass untouched.
"""

from __future__ import annotations

from ipaddress import ip_network
from typing import Iterator

import pytest
from twisted.internet.address import IPv4Address

from shield.config.model import ClientLimits
from shield.dmz.proxy_door import ProxyDoor, ProxyHeaderFactory, RelayedTransport, trusted
from shield.link.client_ends import client_ends
from shield.proxy_protocol.build import build_v1, build_v2
from shield.proxy_protocol.header import Endpoint, ProxyHeader
from shield.dmz.frontplane_ws import websocket_site
from tests.dmz.dmz_world_inprocess import Front, LogLines, Pipe, WsClient, capture_log, upgrade_request

LB = "10.0.0.2"
CLIENT = Endpoint.of("203.0.113.9", 5555)
ACCEPTED = Endpoint.of("192.0.2.80", 443)
HEADER = ProxyHeader(CLIENT, ACCEPTED)
TIMEOUT = 1.0


@pytest.fixture
def log() -> Iterator[LogLines]:
    yield from capture_log()


class Door:
    """A front whose port reads PROXY headers from 10.0.0.0/8."""

    def __init__(self, gateway: ClientLimits = ClientLimits()) -> None:
        self.front = Front(gateway=gateway)
        self.world = self.front.world
        self.factory = ProxyHeaderFactory(
            self.front.factory, [ip_network("10.0.0.0/8")], TIMEOUT, self.front.gate, "echo", "tcp://0.0.0.0:9000"
        )
        self._ports = iter(range(40000, 50000))

    def connect(self, host: str = LB) -> Pipe:
        address = IPv4Address("TCP", host, next(self._ports))
        pipe = self.world.client(host, address.port)
        protocol = self.factory.buildProtocol(address)
        assert protocol is not None
        pipe.connect(protocol)
        self.world.run()
        return pipe

    @property
    def opens(self) -> list:  # type: ignore[type-arg]
        return self.front.connector.dialer.opens

    def refusals(self, limit: str) -> float:
        return self.front.refusals(limit)


@pytest.mark.parametrize("build", [build_v1, build_v2])
def test_a_header_in_pieces_makes_its_source_the_client(build, log: LogLines) -> None:  # type: ignore[no-untyped-def]
    door = Door()
    pipe = door.connect()
    for byte in build(HEADER):
        assert not door.opens
        pipe.feed(bytes([byte]))
        door.world.run()
    (request,) = door.opens
    assert request.client == "203.0.113.9:5555"
    assert client_ends(request.metadata) == HEADER
    assert dict(door.front.gate.per_source) == {("", "203.0.113.9"): 1, ("echo", "203.0.113.9"): 1}
    pipe.feed(b"hello")
    door.world.run()
    (backend,) = door.front.backends
    assert bytes(backend.sent) == b"hello"  # the header never reaches the backend
    assert isinstance(pipe.protocol, ProxyDoor)
    inner = pipe.protocol.inner
    assert inner is not None and isinstance(inner.transport, RelayedTransport)  # type: ignore[attr-defined]
    assert (inner.transport.getPeer().host, inner.transport.getHost().port) == ("203.0.113.9", 443)  # type: ignore[attr-defined]
    assert not log.having("refused")


def test_payload_in_the_same_piece_as_the_header_is_kept() -> None:
    door = Door()
    pipe = door.connect()
    pipe.feed(build_v2(HEADER) + b"first bytes")
    door.world.run()
    (backend,) = door.front.backends
    assert bytes(backend.sent) == b"first bytes"


def test_a_local_header_keeps_the_sockets_address() -> None:
    door = Door()
    pipe = door.connect()
    pipe.feed(build_v2(ProxyHeader(None, None)))
    door.world.run()
    (request,) = door.opens
    assert request.client.startswith(f"{LB}:")
    assert dict(request.metadata)["client-ip"] == LB


def test_limits_per_source_apply_to_the_headers_source() -> None:
    door = Door(gateway=ClientLimits(max_connections_per_source=1))
    first, second, other = door.connect(), door.connect(), door.connect()
    first.feed(build_v1(HEADER))
    second.feed(build_v1(ProxyHeader(Endpoint.of("203.0.113.9", 6666), ACCEPTED)))
    other.feed(build_v1(ProxyHeader(Endpoint.of("198.51.100.1", 1), ACCEPTED)))
    door.world.run()
    assert (first.aborted, second.aborted, other.aborted) == (False, True, False)
    assert door.front.refusals("max_connections_per_source", service="") == 1
    assert len(door.opens) == 2


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "port '01'"),
        (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x31", "version 3"),
    ],
)
def test_a_malformed_header_is_refused_with_one_line(data: bytes, problem: str, log: LogLines) -> None:
    door = Door()
    pipe = door.connect()
    pipe.feed(data)
    door.world.run()
    assert pipe.aborted and not door.opens
    assert door.refusals("proxy_protocol_malformed") == 1
    (line,) = log.having("refused") or log.having("closed")
    assert f"connection from {LB}:" in line and "tcp://0.0.0.0:9000" in line and problem in line


def test_a_slow_header_is_refused_after_the_handshake_timeout(log: LogLines) -> None:
    door = Door()
    pipe = door.connect()
    pipe.feed(b"PROXY TCP4 1.2")
    door.world.advance(TIMEOUT - 0.01)
    assert not pipe.aborted
    door.world.advance(0.02)
    assert pipe.aborted and not door.opens
    assert door.refusals("proxy_protocol_timeout") == 1
    assert len(log.having("no complete PROXY protocol header within 1 s")) == 1


def test_a_header_cut_short_is_refused_but_an_empty_connection_is_not(log: LogLines) -> None:
    door = Door()
    cut = door.connect()
    cut.feed(build_v2(HEADER)[:20])
    cut.drop()
    empty = door.connect()
    empty.drop()
    door.world.run()
    assert door.refusals("proxy_protocol_truncated") == 1
    (line,) = log.having("closed after 20 bytes of a PROXY protocol header")
    assert not door.opens
    door.world.advance(TIMEOUT * 2)  # the deadlines of both were stopped
    assert door.refusals("proxy_protocol_timeout") == 0


def test_refusals_in_a_burst_give_one_line(log: LogLines) -> None:
    door = Door()
    for _ in range(5):
        door.connect().feed(b"garbage")
    door.world.run()
    assert door.refusals("proxy_protocol_malformed") == 5
    assert len(log.having("bad PROXY protocol header")) == 1
    door.world.advance(1.0)
    assert log.having("4 more refused by proxy_protocol_malformed")


@pytest.mark.parametrize("build", [build_v1, build_v2])
def test_a_header_from_outside_the_list_is_refused(build, log: LogLines) -> None:  # type: ignore[no-untyped-def]
    door = Door()
    pipe = door.connect(host="198.51.100.7")  # not in 10.0.0.0/8: served at once, as itself
    data = build(HEADER)
    pipe.feed(data[:3])
    door.world.run()
    assert not pipe.aborted
    pipe.feed(data[3:])
    door.world.run()
    assert pipe.aborted
    assert door.refusals("proxy_protocol_unexpected") == 1
    (line,) = log.having("is not in proxy-protocol-from")
    assert "connection from 198.51.100.7:" in line
    assert all(not backend.sent for backend in door.front.backends)  # no header byte went on


def test_a_plain_client_is_served_as_itself_and_its_bytes_pass_untouched() -> None:
    door = Door()
    pipe = door.connect(host="198.51.100.7")
    (request,) = door.opens  # its tunnel opened at once: a server may speak first
    assert request.client.startswith("198.51.100.7:")
    pipe.feed(b"PRO")  # could still be "PROXY ": held
    door.world.run()
    (backend,) = door.front.backends
    assert backend.sent == b""
    pipe.feed(b"TOCOL 1\r\n")
    door.world.run()
    assert bytes(backend.sent) == b"PROTOCOL 1\r\n"
    pipe.feed(b"\x16\x03")
    door.world.run()
    assert bytes(backend.sent) == b"PROTOCOL 1\r\n\x16\x03"


def test_undecided_bytes_go_on_after_the_deadline_or_at_the_end_of_input() -> None:
    door = Door()
    pipe = door.connect(host="198.51.100.7")
    pipe.feed(b"\r\n")
    door.world.advance(TIMEOUT)
    (backend,) = door.front.backends
    assert bytes(backend.sent) == b"\r\n"
    other = door.connect(host="198.51.100.8")
    other.feed(b"PROX")
    other.feed_eof()
    door.world.run()
    assert bytes(door.front.backends[1].sent) == b"PROX"


def test_a_websocket_client_behind_the_header_is_upgraded_and_served_as_the_headers_source() -> None:
    door = Door()
    site = websocket_site([("/echo", door.front.front, "ws://0.0.0.0:9000/echo")], door.front.gate)
    door.factory.wrapped = site  # the port's factory: a ws:// site
    pipe = door.connect()
    client = WsClient(pipe)
    client.send(build_v1(HEADER) + upgrade_request("/echo"))
    door.world.run()
    client.read()
    assert client.upgraded, (client.status, client.body)
    (request,) = door.opens
    assert request.client == "203.0.113.9:5555"
    assert client_ends(request.metadata) == HEADER
    # Autobahn took the connection from twisted.web: events now reach the WebSocket protocol
    client.send_message(b"through")
    door.world.run()
    (backend,) = door.front.backends
    assert bytes(backend.sent) == b"through"
    assert dict(door.front.gate.per_source) == {("", "203.0.113.9"): 1, ("echo", "203.0.113.9"): 1}


@pytest.mark.parametrize(
    "host, expected",
    [
        ("10.1.2.3", True),
        ("11.0.0.1", False),
        ("::ffff:10.1.2.3", True),  # a dual-stack listener's IPv4 peer
        ("2001:db8::7", True),
        ("2001:db9::7", False),
        ("not-an-address", False),
    ],
)
def test_who_may_send_a_header(host: str, expected: bool) -> None:
    networks = [ip_network("10.0.0.0/8"), ip_network("2001:db8::/32")]
    assert trusted(IPv4Address("TCP", host, 1), networks) is expected


def test_an_ipv6_client_behind_an_ipv4_load_balancer() -> None:
    door = Door()
    pipe = door.connect()
    six = ProxyHeader(Endpoint.of("2001:db8::9", 5555), Endpoint.of("2001:db8::80", 443))
    pipe.feed(build_v2(six))
    door.world.run()
    (request,) = door.opens
    assert request.client == "[2001:db8::9]:5555"
    assert client_ends(request.metadata) == six
    assert ("echo", "2001:db8::9") in door.front.gate.per_source

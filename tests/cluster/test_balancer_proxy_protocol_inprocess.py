"""A balancer behind a load balancer that sends the PROXY protocol: the client a member is handed
is the header's source, in the forward header and on the stream it reads (issue 14)."""

from __future__ import annotations

from ipaddress import ip_network

from cluster_world_inprocess import local
from test_balancer_inprocess import Balancer, cluster
from twisted.internet.address import IPv4Address

from shield.dmz.proxy_door import ProxyHeaderFactory
from shield.proxy_protocol.build import build_v2
from shield.proxy_protocol.header import Endpoint, ProxyHeader

HEADER = ProxyHeader(Endpoint.of("203.0.113.9", 5555), Endpoint.of("192.0.2.80", 8000))


def test_a_forwarded_client_is_the_headers_source() -> None:
    c, a, b, d = cluster(a=5, b=2, d=7)
    lb = Balancer(c, a)
    door = ProxyHeaderFactory(lb.factory, [ip_network("10.0.0.0/8")], 5.0, lb.front.gate, "lb", "tcp://0.0.0.0:8000")
    address = IPv4Address("TCP", "10.0.0.2", 40001)
    client = c.client(address.host, address.port)
    protocol = door.buildProtocol(address)
    assert protocol is not None
    client.connect(protocol)
    c.run()
    assert local(b).forwarded == []  # nothing is placed before the header
    client.feed(build_v2(HEADER) + b"hello")
    c.run()
    ((request, _, inner),) = local(b).forwarded
    assert (request.client_host, request.client_port) == ("203.0.113.9", 5555)
    assert inner.transport is not None
    peer = inner.transport.getPeer()
    assert (peer.host, peer.port) == ("203.0.113.9", 5555)  # type: ignore[attr-defined]
    assert bytes(inner.received) == b"hello"
    assert ("lb", "203.0.113.9") in lb.front.gate.per_source

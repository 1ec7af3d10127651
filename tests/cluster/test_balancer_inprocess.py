"""A balancer service (shield/dmz/balancer.py) in process, over a cluster of real nodes.

A raw TCP client connects to member a's balancer (``BalancedTcpFactory``); a chooses the member
with the fewest clients that serves the balancer, from the heartbeats it has heard, and splices
the client to it over a real member link (or serves it itself). Members refuse or fall silent on
demand, so the retry and the 503 a client gets when nobody can take it are exact.

(Here rather than in tests/dmz: it needs the cluster harness of this folder.)
"""

from __future__ import annotations

from typing import Iterator

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IAddress, IProtocol

from cluster_world_inprocess import local, BALANCER, Cluster, Local, LogLines, Pipe, Recorder, capture_log
from shield.cluster.messages import ForwardReply
from shield.cluster.node import ClusterNode
from shield.config.model import ClientLimits, DmzService, Uri
from shield.dmz.admission import ClientGate
from shield.dmz.balancer import (
    MAX_HEAD,
    BalancedClientState,
    BalancedHttpClient,
    BalancedHttpFactory,
    BalancedTcpClient,
    BalancedTcpFactory,
    BalancerFront,
)
from shield.lifecycle import StateError
from shield.ops.metrics import Metrics


@pytest.fixture
def log() -> Iterator[LogLines]:
    yield from capture_log()


class Balancer:
    """Member a's balancer service ``lb`` (proxy mode) on ``tcp://0.0.0.0:8000``."""

    def __init__(self, cluster: Cluster, node: ClusterNode, open_timeout: float = 5.0) -> None:
        self.cluster = cluster
        self.metrics = Metrics()
        self.here: list[Recorder] = []
        config = DmzService(name="lb", accept=(BALANCER,), type="balancer", mode="proxy", open_timeout=open_timeout)
        gate = ClientGate(ClientLimits(), self.metrics, cluster.clock)
        self.front = BalancerFront(config, node, self.metrics, self._serve_here, gate)
        self.factory = BalancedTcpFactory(self.front, BALANCER)
        self._ports = iter(range(50000, 60000))

    def _serve_here(self, service: str, kind: str, peer: IAddress) -> IProtocol | None:
        inner = Recorder()
        self.here.append(inner)
        return inner

    def connect(self) -> Pipe:
        address = IPv4Address("TCP", "198.51.100.7", next(self._ports))
        client = self.cluster.client(address.host, address.port)
        client.connect(self.factory.buildProtocol(address))
        self.cluster.run()
        return client

    def balanced(self, member: str) -> float:
        labels = {"service": "lb", "member": member, "mode": "proxy"}
        return self.metrics.registry.get_sample_value("shield_balanced_clients_total", labels) or 0.0


def cluster(a: int, b: int, d: int, a_live: bool = True) -> tuple[Cluster, ClusterNode, ClusterNode, ClusterNode]:
    """Members a, b and d with these numbers of clients, all linked and beating."""
    c = Cluster()
    nodes = (c.node("a", Local("a", a, live=a_live)), c.node("b", Local("b", b)), c.node("d", Local("d", d)))
    for node in nodes:
        node.start()
    c.mesh(*nodes)
    return (c, *nodes)


def served_by(node: ClusterNode) -> list[Recorder]:
    return [inner for _, _, inner in local(node).forwarded]


def test_a_client_goes_to_the_member_with_the_fewest_clients_and_bytes_flow() -> None:
    c, a, b, d = cluster(a=5, b=2, d=7)
    lb = Balancer(c, a)
    client = lb.connect()

    (inner,) = served_by(b)
    assert served_by(d) == [] and lb.here == []
    assert lb.balanced("b") == 1
    client.feed(b"hello through the balancer")
    c.run()
    assert bytes(inner.received) == b"hello through the balancer"
    assert inner.transport is not None
    inner.transport.write(b"hello from b")
    c.run()
    assert client.read() == b"hello from b"


def test_this_member_serves_the_client_itself_when_it_is_the_least_busy() -> None:
    c, a, b, d = cluster(a=1, b=2, d=7)
    lb = Balancer(c, a)
    client = lb.connect()

    (inner,) = lb.here
    assert served_by(b) == [] and served_by(d) == []
    assert lb.balanced("a") == 1
    client.feed(b"served here")
    assert bytes(inner.received) == b"served here"


def test_the_choice_follows_the_heartbeats() -> None:
    c, a, b, d = cluster(a=9, b=0, d=1)
    lb = Balancer(c, a)
    lb.connect()
    assert len(served_by(b)) == 1
    local(b).clients = 5
    c.advance(1.0)  # b's next heartbeat says it is busy now
    lb.connect()
    assert len(served_by(d)) == 1 and len(served_by(b)) == 1


def test_a_draining_member_is_not_chosen() -> None:
    c, a, b, d = cluster(a=9, b=0, d=4)
    local(b).draining = True
    c.advance(1.0)
    lb = Balancer(c, a)
    lb.connect()
    assert served_by(b) == [] and len(served_by(d)) == 1


def test_a_member_that_refuses_is_skipped_for_the_next(log: LogLines) -> None:
    c, a, b, d = cluster(a=9, b=0, d=4)
    local(b).refuse = ForwardReply(503, "member 'b' is draining")
    lb = Balancer(c, a)
    client = lb.connect()
    assert len(served_by(d)) == 1 and not client.disconnecting
    assert lb.balanced("d") == 1 and lb.balanced("b") == 0


def test_when_no_member_takes_the_client_it_is_closed_with_the_reasons(log: LogLines) -> None:
    c, a, b, d = cluster(a=9, b=0, d=4, a_live=False)
    local(b).refuse = ForwardReply(503, "member 'b' is draining")
    local(d).refuse = ForwardReply(503, "no live link for service 'echo' on member 'd'")
    lb = Balancer(c, a)
    client = lb.connect()

    assert client.lost and not client.aborted
    (line,) = log.having("-> lb: 503")
    assert "tcp client 198.51.100.7:50000 -> lb: 503 no cluster member took the client for 'lb'" in line
    assert "member 'b': member 'b' is draining" in line
    assert "member 'd': no live link for service 'echo' on member 'd'" in line
    failures = lb.metrics.registry.get_sample_value("shield_open_failures_total", {"service": "lb", "reason": "no_member"})
    assert failures == 1


def test_without_any_member_that_serves_it_the_reply_says_so(log: LogLines) -> None:
    c = Cluster()
    a = c.node("a", Local("a", live=False))
    lb = Balancer(c, a)
    client = lb.connect()
    assert client.lost
    assert log.having(
        "-> lb: 503 no cluster member can serve 'lb' now (0 peers alive; none live, not draining and balanced by this accept)"
    )


def test_a_member_that_does_not_answer_in_time_is_skipped_after_open_timeout() -> None:
    c, a, b, d = cluster(a=9, b=0, d=4)
    silent = next(pair for pair in c.pairs if {pair.dialled.host, pair.accepted.host} == {a, b})
    silent.partitioned = True
    lb = Balancer(c, a, open_timeout=2.0)
    client = lb.connect()

    c.advance(1.75)
    assert served_by(d) == [] and not client.disconnecting
    c.advance(0.25)
    assert len(served_by(d)) == 1
    client.feed(b"late but served")
    c.run()
    assert bytes(served_by(d)[0].received) == b"late but served"


def test_a_client_leaving_while_a_member_is_asked_is_not_offered_to_another() -> None:
    c, a, b, d = cluster(a=9, b=0, d=4)
    silent = next(pair for pair in c.pairs if {pair.dialled.host, pair.accepted.host} == {a, b})
    silent.partitioned = True
    lb = Balancer(c, a, open_timeout=2.0)
    client = lb.connect()
    protocol = client.protocol
    assert isinstance(protocol, BalancedTcpClient) and protocol.state is BalancedClientState.PLACING
    client.drop(clean=False)
    c.run()
    assert protocol.state is BalancedClientState.GONE
    c.advance(3.0)
    assert served_by(b) == [] and served_by(d) == [] and lb.here == []
    assert lb.front.relays == set()


def test_a_balanced_client_reports_a_handshake_out_of_turn_loudly() -> None:
    c, a, b, d = cluster(a=9, b=0, d=4)
    lb = Balancer(c, a)
    client = lb.connect()
    protocol = client.protocol
    assert isinstance(protocol, BalancedTcpClient) and protocol.state is BalancedClientState.RELAYING
    with pytest.raises(StateError, match="BalancedTcpClient: event HANDSHAKE_DONE is not allowed in state RELAYING"):
        protocol.handshakeCompleted()  # a raw TCP client has no TLS handshake
    assert len(served_by(b)) == 1 and not client.disconnecting


WS_BALANCER = Uri("ws", "0.0.0.0", 8080, "/lb")


class HttpBalancer:
    """Member a's balancer ``lb`` on ``ws://0.0.0.0:8080/lb`` (``BalancedHttpFactory``), no fallback site."""

    def __init__(self, cluster: Cluster, node: ClusterNode, head_timeout: float = 3.0) -> None:
        self.cluster = cluster
        self.metrics = Metrics()
        limits = ClientLimits(handshake_timeout=head_timeout)
        config = DmzService(name="lb", accept=(WS_BALANCER,), type="balancer", mode="proxy", limits=limits)
        gate = ClientGate(ClientLimits(), self.metrics, cluster.clock)
        self.front = BalancerFront(config, node, self.metrics, lambda service, kind, peer: None, gate)
        self.factory = BalancedHttpFactory({"/lb": (self.front, WS_BALANCER)}, None, gate)
        self.gate = gate

    def connect(self) -> tuple[Pipe, BalancedHttpClient]:
        address = IPv4Address("TCP", "198.51.100.7", 50000)
        client = self.cluster.client(address.host, address.port)
        protocol = self.factory.buildProtocol(address)
        assert isinstance(protocol, BalancedHttpClient)
        client.connect(protocol)
        return client, protocol


def responses(data: bytes) -> list[int]:
    """The status of every HTTP response in ``data``."""
    return [int(line.split()[1]) for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


def test_an_http_client_without_a_head_in_time_gets_408_once() -> None:
    c = Cluster()
    lb = HttpBalancer(c, c.node("a", Local("a")), head_timeout=3.0)
    client, protocol = lb.connect()
    client.feed(b"GET /lb HTTP/1.1\r\n")
    c.advance(2.75)
    assert client.read() == b"" and protocol.state is BalancedClientState.READING_HEAD
    c.advance(0.25)
    assert responses(client.read()) == [408]
    assert client.lost and protocol.state is BalancedClientState.GONE
    assert lb.gate.total == 0


def test_an_oversized_head_is_431_and_what_follows_is_dropped() -> None:
    c = Cluster()
    lb = HttpBalancer(c, c.node("a", Local("a")))
    client, protocol = lb.connect()
    client.feed(b"GET /lb HTTP/1.1\r\nX: " + b"x" * MAX_HEAD)
    assert protocol.state is BalancedClientState.CLOSING
    client.feed(b"\r\n\r\n")  # arrives before the close: read by nobody
    c.run()
    assert responses(client.read()) == [431]
    assert client.lost


def test_a_path_of_no_balancer_is_404_without_a_fallback_site() -> None:
    c = Cluster()
    lb = HttpBalancer(c, c.node("a", Local("a")))
    client, protocol = lb.connect()
    client.feed(b"GET /elsewhere HTTP/1.1\r\nHost: lb.example\r\n\r\n")
    c.run()
    assert responses(client.read()) == [404] and client.lost


def test_an_http_client_nobody_can_serve_gets_503_with_the_reason(log: LogLines) -> None:
    c = Cluster()
    lb = HttpBalancer(c, c.node("a", Local("a", live=False)))
    client, protocol = lb.connect()
    client.feed(b"GET /lb HTTP/1.1\r\nHost: lb.example\r\n\r\n")
    c.run()
    answer = client.read()
    assert responses(answer) == [503]
    assert b"no cluster member can serve 'lb' now" in answer
    assert client.lost and protocol.state is BalancedClientState.GONE
    assert len(log.having("ws client 198.51.100.7:50000 -> lb: 503")) == 1

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
from shield.config.model import ClientLimits, DmzService
from shield.dmz.admission import ClientGate
from shield.dmz.balancer import BalancedTcpFactory, BalancerFront
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

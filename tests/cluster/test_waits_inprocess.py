"""The node's waits are fired by membership events, not by a poll: ``settled`` at start and
``announce_draining`` at SIGTERM (shield/cluster/node.py, ``MembershipWaits``)."""

from __future__ import annotations

from typing import Any, Iterator, cast

import pytest
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

from cluster_world_inprocess import CLUSTER, Cluster, Local, LogLines, NoTLS, capture_log, local
from shield.cluster.node import ClusterNode
from shield.config.model import DmzCluster, Uri
from shield.mux.config import MuxConfig


@pytest.fixture
def log() -> Iterator[LogLines]:
    yield from capture_log()


@implementer(IOpenSSLClientConnectionCreator)
class NoClientTLS:
    """For the dialler of ``members``: the memory reactor never connects, so it is never asked."""

    def clientConnectionForTLS(self, protocol: object) -> SSL.Connection:
        raise AssertionError("no member is dialled for real here")


def member_with_peers(c: Cluster, name: str, *peers: ClusterNode) -> ClusterNode:
    """A node whose ``members`` lists ``peers`` (dialled at start: the memory reactor never answers)."""
    config = DmzCluster(
        name=CLUSTER, accept=Uri("tls", "192.0.2.99", 7000), members=tuple(peer.config.accept for peer in peers)
    )
    node = ClusterNode(name, config, Local(name), cast(Any, c.clock), NoTLS(), NoClientTLS(), MuxConfig(keepalive_interval=0))
    c.nodes[name] = node
    return node


def fired(deferred: Deferred[None]) -> list[None]:
    seen: list[None] = []
    deferred.addCallback(seen.append)
    return seen


def pending_times(c: Cluster) -> list[float]:
    return sorted(call.getTime() for call in c.clock.getDelayedCalls())


def test_settled_fires_when_the_last_static_peer_is_heard(log: LogLines) -> None:
    c = Cluster()
    b, d = c.node("b"), c.node("d")
    a = member_with_peers(c, "a", b, d)
    for node in (a, b, d):
        node.start()
    settled = fired(a.settled())
    assert settled == []
    # Nothing polls: the heartbeat ticks and the 3-interval deadline are all that is scheduled.
    assert 0.02 not in pending_times(c) and 3.0 in pending_times(c)

    c.link(a, b)  # b's first heartbeat arrives with its link
    assert settled == []
    c.link(a, d)
    assert settled == [None], "fired by d's first heartbeat, at once"
    assert c.clock.seconds() == 0.0
    assert log.having("cluster c1: 2 peers alive at start: b, d")
    assert 3.0 not in pending_times(c), "the deadline is cancelled"


def test_settled_gives_up_after_three_intervals(log: LogLines) -> None:
    c = Cluster()
    b = c.node("b")
    a = member_with_peers(c, "a", b)
    a.start()
    settled = fired(a.settled())
    c.advance(2.75)
    assert settled == []
    c.advance(0.25)
    assert settled == [None]
    assert log.having("cluster c1: 0 peers alive at start: none")


def test_a_peer_that_falls_silent_no_longer_holds_the_drain_up(log: LogLines) -> None:
    c = Cluster()
    a, b, d = c.node("a"), c.node("b", interval=0.25), c.node("d")
    for node in (a, b, d):
        node.start()
    silent = c.link(a, b)
    c.link(a, d)
    c.link(b, d)
    c.advance(0.5)
    silent.partitioned = True  # b falls silent; its link stays up
    local(a).draining = True
    done = fired(a.announce_draining())
    c.run()
    assert done == [], "d acknowledged, b cannot"
    # b beats every 0.25 s and was last heard at 0.5 s: it is alive up to 1.25 s, gone just after,
    # and the drain goes on at that moment (not at a's next tick at 2 s, nor at its 3.5 s deadline).
    c.advance(0.75, step=0.25)
    assert done == []
    c.advance(0.001)
    assert done == [None]
    assert log.having("cluster c1: peers know we drain: d")
    assert not log.having("draining without acknowledgement")
    assert not log.having("member b is gone"), "said at a's next tick, as before"


def test_a_drain_nobody_acknowledges_schedules_only_its_deadline_and_the_peers_silence() -> None:
    c = Cluster()
    a, b = c.node("a"), c.node("b")
    for node in (a, b):
        node.start()
    pair = c.link(a, b)
    pair.partitioned = True
    local(a).draining = True
    done = fired(a.announce_draining())
    # the heartbeat ticks (1 s) and the deadline (3 s); b's silence ends just after the deadline,
    # so nothing waits for it; no 20 ms poll.
    assert sorted({t for t in pending_times(c) if t > 0}) == [1.0, 3.0]
    c.advance(3.0, step=0.5)
    assert done == [None]

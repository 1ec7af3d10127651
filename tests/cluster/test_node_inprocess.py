"""Cluster nodes in process: heartbeats on the clock, silence, drain, and whom a balancer picks.

Nodes are started for real (``start`` listens on the memory reactor and beats every
``heartbeat-interval`` on the fake clock); links are in memory and can be partitioned, so a member
that falls silent without its link dropping is exact in time.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from twisted.internet.defer import Deferred

from cluster_world_inprocess import local, BALANCER, Cluster, Local, LogLines, capture_log
from shield.cluster.node import ClusterNode
from shield.config.model import DmzCluster


@pytest.fixture
def log() -> Iterator[LogLines]:
    yield from capture_log()


def started(c: Cluster, *nodes: ClusterNode) -> None:
    for node in nodes:
        listening: list[object] = []
        node.start().addCallback(listening.append)
        assert listening, "the memory reactor listens at once"


def heard_seq(listener: ClusterNode, member: str) -> int:
    heartbeat = listener.membership.members[member].heartbeat
    assert heartbeat is not None
    return heartbeat.seq


def test_start_listens_on_the_accept_address_and_beats_every_interval() -> None:
    c = Cluster()
    a, b = c.node("a", interval=0.5), c.node("b")
    started(c, a)
    (port,) = c.clock.tcpServers
    assert (port[0], port[3]) == (a.config.accept.port, a.config.accept.host)
    c.link(a, b)
    assert heard_seq(b, "a") == 0  # the heartbeat sent when the link came up

    c.advance(0.25)
    assert heard_seq(b, "a") == 0
    c.advance(0.25)
    assert heard_seq(b, "a") == 1
    c.advance(2.0)
    assert heard_seq(b, "a") == 5


def test_heartbeats_carry_the_gateway_s_state() -> None:
    c = Cluster()
    a, b = c.node("a", Local("a", clients=1)), c.node("b")
    started(c, a, b)
    c.link(a, b)
    local(a).clients = 42
    local(a).live = False
    c.advance(1.0)
    heartbeat = b.membership.members["a"].heartbeat
    assert heartbeat is not None
    assert heartbeat.clients == 42 and [s.live for s in heartbeat.services] == [False]


def test_a_member_silent_for_three_intervals_is_dead(log: LogLines) -> None:
    c = Cluster()
    a, b = c.node("a"), c.node("b")
    started(c, a, b)
    pair = c.link(a, b)
    c.advance(1.0)
    pair.partitioned = True  # b's heartbeats stop arriving; the link itself stays up
    heard_at = c.clock.seconds()

    c.advance(3.0)
    assert a.alive_members() == ["b"], "three intervals of silence are still alive"
    c.advance(0.25)
    assert a.alive_members() == [], "more than three are not"
    assert not log.having("member b is gone"), "said at the next heartbeat tick"
    c.advance(0.75)
    (gone,) = log.having("member b is gone")
    assert "cluster c1: member b is gone: no heartbeat for 3 intervals" in gone
    assert c.clock.seconds() == heard_at + 4.0

    # The link heals: what b said meanwhile arrives, and b is alive again.
    pair.partitioned = False
    c.run()
    assert a.alive_members() == ["b"]
    assert len(log.having("member b is alive")) == 2


def test_members_that_keep_beating_stay_alive() -> None:
    c = Cluster()
    a, b = c.node("a"), c.node("b")
    started(c, a, b)
    c.link(a, b)
    c.advance(20.0, step=0.5)
    assert a.alive_members() == ["b"] and b.alive_members() == ["a"]


def test_draining_is_announced_and_acknowledged_within_one_round_trip(log: LogLines) -> None:
    c = Cluster()
    a, b, d = c.node("a"), c.node("b"), c.node("d")
    started(c, a, b, d)
    c.mesh(a, b, d)
    local(a).draining = True
    done: list[None] = []
    a.announce_draining().addCallback(done.append)
    c.run()
    c.advance(0.02, step=0.02)

    assert done == [None], "both peers acknowledged at once, long before three intervals"
    assert log.having("cluster c1: peers know we drain: b, d")
    assert log.having("cluster c1: member a is draining")
    # Balancers on b no longer choose a.
    assert [candidate.member for candidate in b.candidates(BALANCER, set())] == [None, "d"]


def test_draining_without_acknowledgement_goes_on_after_three_intervals(log: LogLines) -> None:
    c = Cluster()
    a, b = c.node("a"), c.node("b")
    started(c, a, b)
    pair = c.link(a, b)
    pair.partitioned = True
    local(a).draining = True
    done: Deferred[None] = a.announce_draining()
    fired: list[None] = []
    done.addCallback(fired.append)

    c.advance(2.98, step=0.02)
    assert fired == []
    c.advance(0.06, step=0.02)
    assert fired == [None]
    assert log.having("cluster c1: draining without acknowledgement from b")


def test_candidates_are_the_members_with_the_fewest_clients_that_serve_the_balancer() -> None:
    c = Cluster()
    a = c.node("a", Local("a", clients=5))
    b = c.node("b", Local("b", clients=2))
    d = c.node("d", Local("d", clients=7))
    down = c.node("e", Local("e", clients=0, live=False))  # no connector link for echo
    other = c.node("f", Local("f", clients=0, balance=("tcp://lb.example:8001",)))  # another balancer
    started(c, a, b, d, down, other)
    c.mesh(a, b, d, down, other)

    found = a.candidates(BALANCER, set())
    assert [(x.member, x.clients) for x in found] == [("b", 2), (None, 5), ("d", 7)]
    assert found[0].service == "echo" and found[0].accept == ("tcp://b.example:9000",)
    assert [x.member for x in a.candidates(BALANCER, {"b", None})] == ["d"]

    # Clients sent to b since its last heartbeat count too, until it tells its own count.
    for _ in range(4):
        a.forwarded_to("b")
    assert [(x.member, x.clients) for x in a.candidates(BALANCER, set())] == [(None, 5), ("b", 6), ("d", 7)]
    local(b).clients = 3
    c.advance(1.0)
    assert [(x.member, x.clients) for x in a.candidates(BALANCER, set())][0] == ("b", 3)


def test_a_new_heartbeat_interval_from_a_reload_is_used_at_once() -> None:
    c = Cluster()
    a, b = c.node("a"), c.node("b")
    started(c, a)
    c.link(a, b)
    c.advance(2.0)
    assert heard_seq(b, "a") == 2
    old = a.config
    a.reconfigure(DmzCluster(name=old.name, accept=old.accept, heartbeat_interval=0.25))
    c.advance(1.0)
    assert heard_seq(b, "a") == 6


def test_stopping_closes_links_and_the_peers_see_it_go(log: LogLines) -> None:
    c = Cluster()
    a, b = c.node("a"), c.node("b")
    started(c, a, b)
    c.link(a, b)
    a.stop()
    c.run()
    assert b.alive_members() == []
    assert log.having("cluster c1: member a is gone: link lost")
    assert not log.having("member b is gone"), "the member that stops does not report its peers as gone"

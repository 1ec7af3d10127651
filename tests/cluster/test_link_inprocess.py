"""Member links in process: two real cluster nodes joined over iosim, heartbeats, forward streams.

What a member checks of a peer is what the TLS layer vouched for (its certificate's name) and what
its heartbeats say; anything that does not match closes the link with one log line. Forward
streams carry one public client from a balancer to a member, after the member's answer.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from twisted.internet.address import IPv4Address
from twisted.python.failure import Failure

from cluster_world_inprocess import local, Cluster, Local, LogLines, Recorder, capture_log
from shield.cluster.link import HANDSHAKE_TIMEOUT, ForwardFailed, ForwardStream
from shield.cluster.messages import ForwardReply, ForwardRequest
from shield.relay import Relay, RelayedProtocol

REQUEST = ForwardRequest(service="echo", kind="tcp", client_host="198.51.100.7", client_port=4000)


@pytest.fixture
def log() -> Iterator[LogLines]:
    yield from capture_log()


def test_linked_members_hear_each_other_at_once(log: LogLines) -> None:
    c = Cluster()
    a = c.node("a", Local("a", clients=4))
    b = c.node("b", Local("b", clients=3))
    pair = c.link(a, b)

    assert a.alive_members() == ["b"] and b.alive_members() == ["a"]
    assert pair.dialled.peer_name == "b" and pair.accepted.peer_name == "a"
    assert log.having("cluster c1: member b is alive (1 services live, 3 clients)")
    assert log.having("cluster c1: member a is alive (1 services live, 4 clients)")
    assert a.links == {pair.dialled} and b.links == {pair.accepted}


def test_a_heartbeat_for_another_cluster_closes_the_link(log: LogLines) -> None:
    c = Cluster()
    a = c.node("a")
    stranger = c.node("x", cluster="other")
    pair = c.link(stranger, a)

    assert log.having("member 'x' belongs to cluster 'other', not 'c1'; link closed")
    assert a.alive_members() == []
    assert not pair.accepted.mux.is_open


def test_a_heartbeat_that_names_someone_else_than_the_certificate_closes_the_link(log: LogLines) -> None:
    c = Cluster()
    a = c.node("a")
    b = c.node("b")
    pair = c.link(b, a, a_shows="mallory")  # b's certificate names mallory; its heartbeats say b

    assert log.having("heartbeat names 'b' but the certificate says 'mallory'; link closed")
    assert a.alive_members() == []
    assert not pair.accepted.mux.is_open


def test_a_link_to_itself_is_closed_and_not_dialled_again(log: LogLines) -> None:
    c = Cluster()
    a = c.node("a")
    twin = c.node("a-again")
    pair = c.link(a, twin, b_shows="a")  # a dialled a members address that turns out to be a itself

    assert not pair.dialled.mux.is_open
    assert a.links == set() and a.alive_members() == []
    assert log.having(f"cluster: {pair.dialled.endpoint} is this member itself; not dialling it")


def test_no_tls_handshake_within_the_timeout_cuts_the_link(log: LogLines) -> None:
    c = Cluster()
    a, b = c.node("a"), c.node("b")
    pair = c.link(a, b, handshake=False)

    c.advance(HANDSHAKE_TIMEOUT - 0.25)
    assert pair.accepted.mux.is_open and pair.dialled.mux.is_open
    c.advance(0.25)
    assert not pair.accepted.mux.is_open and not pair.dialled.mux.is_open
    # Each side says so once: the dialler per endpoint, the acceptor per source host.
    assert log.having(f"cluster c1: no member link to {pair.dialled.endpoint}: no TLS handshake within 10 s")
    assert log.having(f"cluster c1: no member link from {pair.accepted.endpoint}: no TLS handshake within 10 s")


def test_a_lost_link_makes_the_member_dead_at_once(log: LogLines) -> None:
    c = Cluster()
    a, b = c.node("a"), c.node("b")
    pair = c.link(a, b)
    pair.dialled.mux.abort("test cuts the link")
    c.run()

    assert a.alive_members() == [] and b.alive_members() == []
    assert log.having("cluster c1: member b is gone: link lost (test cuts the link)")
    assert len(log.having("cluster c1: member a is gone: link lost")) == 1


def test_a_forwarded_client_reaches_the_member_with_its_address_and_bytes_flow_both_ways() -> None:
    c = Cluster()
    a, b = c.node("a"), c.node("b", Local("b"))
    c.link(a, b)
    outcome: list[object] = []
    a.forward("b", REQUEST, 5.0).addBoth(outcome.append)
    c.run()

    (stream,) = outcome
    assert isinstance(stream, ForwardStream) and stream.member == "b"
    ((request, balancer, inner),) = local(b).forwarded
    assert request == REQUEST and balancer == "a"
    assert inner.transport is not None
    peer = inner.transport.getPeer()
    assert isinstance(peer, IPv4Address)
    assert (peer.host, peer.port) == ("198.51.100.7", 4000), "the member sees the public client's address"

    # The balancer splices its public client onto the stream.
    client = c.client()
    public = client.connect(RelayedProtocol())
    public.join(lambda side: stream.join(lambda other: Relay(side, other)))  # type: ignore[attr-defined]
    chunks = [bytes([65 + i % 26]) * (100 * i + 1) for i in range(30)]
    for chunk in chunks:
        client.feed(chunk)
    c.run()
    assert bytes(inner.received) == b"".join(chunks)
    inner.transport.write(b"from the member")
    c.run()
    assert client.read() == b"from the member"


def test_a_member_that_refuses_says_why_and_another_may_be_tried() -> None:
    c = Cluster()
    a, b = c.node("a"), c.node("b", Local("b"))
    local(b).refuse = ForwardReply(503, "member 'b' is draining")
    c.link(a, b)
    outcome: list[Failure] = []
    a.forward("b", REQUEST, 5.0).addErrback(outcome.append)
    c.run()

    (failure,) = outcome
    problem = failure.value
    assert isinstance(problem, ForwardFailed)
    assert (problem.status, problem.retry) == (503, True)
    assert problem.reason == "member 'b': member 'b' is draining"


def test_a_member_that_does_not_answer_fails_the_forward_at_the_timeout() -> None:
    c = Cluster()
    a, b = c.node("a"), c.node("b")
    pair = c.link(a, b)
    pair.partitioned = True  # the network goes silent
    outcome: list[Failure] = []
    a.forward("b", REQUEST, 2.0).addErrback(outcome.append)
    c.run()

    c.advance(1.75)
    assert outcome == []
    c.advance(0.25)
    (failure,) = outcome
    assert isinstance(failure.value, ForwardFailed)
    assert failure.value.status == 504 and failure.value.retry
    assert failure.value.reason == "member 'b' did not answer within 2 s"


def test_forwarding_to_a_member_without_a_link_fails_at_once() -> None:
    c = Cluster()
    a = c.node("a")
    outcome: list[Failure] = []
    a.forward("zed", REQUEST, 5.0).addErrback(outcome.append)
    (failure,) = outcome
    assert isinstance(failure.value, ForwardFailed)
    assert failure.value.status == 503
    assert failure.value.reason == "no usable link to member 'zed'"


def test_a_member_that_cannot_take_a_client_keeps_its_link_for_the_others(log: LogLines) -> None:
    c = Cluster()
    a, b = c.node("a"), c.node("b")

    def broken(request: ForwardRequest, balancer: str) -> tuple[ForwardReply, Recorder | None]:
        raise RuntimeError("gateway bug")

    local(b).serve_forward = broken  # type: ignore[method-assign]
    pair = c.link(a, b)
    outcome: list[Failure] = []
    a.forward("b", REQUEST, 5.0).addErrback(outcome.append)
    c.run()

    (failure,) = outcome
    assert isinstance(failure.value, ForwardFailed)
    assert failure.value.status == 502
    assert "internal error on the member" in failure.value.reason
    assert pair.accepted.mux.is_open and a.alive_members() == ["b"]


def test_a_forward_whose_client_left_before_the_answer_is_reset_and_fails_only_once() -> None:
    from twisted.internet.defer import CancelledError

    c = Cluster()
    a, b = c.node("a"), c.node("b")
    pair = c.link(a, b)
    pair.partitioned = True  # b has not answered yet
    link = pair.end_of(a)
    streams_before = len(link.mux.streams)
    outcome: list[Failure] = []
    pending = a.forward("b", REQUEST, 2.0)
    pending.addErrback(outcome.append)
    c.run()
    assert len(link.mux.streams) == streams_before + 1

    pending.cancel()  # the balancer's client left
    c.run()
    (failure,) = outcome
    assert failure.check(CancelledError)
    assert len(link.mux.streams) == streams_before, "the forward stream is reset, not left to the member"
    c.advance(5.0)
    assert len(outcome) == 1  # no 504 later for a client that is gone

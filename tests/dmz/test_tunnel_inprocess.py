"""Opening tunnels in process: the router's choice and the OPEN exchange with real connectors.

Every connector here is the real link protocol with the real backend stream (OPEN is read, the
backend dialled from the connector's own services, OK or a reason answered); only the dial is in
memory. So the reply codes a public client would see (503, 502, 504) come out of the whole path.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from twisted.internet.defer import Deferred

from dmz_world_inprocess import LogLines, World, capture_log, dmz_config
from shield.dmz.tunnel import OpenFailed, TunnelState, TunnelStream
from shield.lifecycle import StateError
from shield.relay import ByteTally, RelayedProtocol


@pytest.fixture
def log() -> Iterator[LogLines]:
    yield from capture_log()


def world(open_timeout: float = 10.0) -> World:
    connectors: dict[str, tuple[str, ...]] = {name: ("echo", "web") for name in ("internal1", "internal2", "internal3")}
    return World(dmz_config(connectors, ("echo", "web"), open_timeout=open_timeout))


def opened(result: TunnelStream | OpenFailed) -> TunnelStream:
    assert isinstance(result, TunnelStream), f"expected a tunnel, got {result!r}"
    return result


def failed(result: TunnelStream | OpenFailed) -> OpenFailed:
    assert isinstance(result, OpenFailed), f"expected a refusal, got {result!r}"
    return result


def test_the_highest_priority_connector_takes_the_client() -> None:
    w = world()
    standby = w.connector("internal1", priority=50)
    active = w.connector("internal2", priority=200)
    w.link(standby)
    w.link(active)

    tunnel = opened(w.open())
    assert tunnel.link.connector == "internal2"
    assert active.dialer.dials == ["echo"] and standby.dialer.dials == []
    # The OPEN named the service and the client, and the connector's dial answered OK.
    assert tunnel.request.service == "echo" and tunnel.request.client == "198.51.100.7:4000"


def test_among_equal_priorities_the_link_with_fewest_tunnels_is_chosen() -> None:
    w = world()
    connector = w.connector("internal1")
    links = [w.link(connector) for _ in range(3)]

    tunnels = [opened(w.open()) for _ in range(6)]
    # Each new tunnel went to the least loaded link: two each.
    assert sorted(link.registered.tunnels for link in links) == [2, 2, 2]  # type: ignore[union-attr]
    assert [t.link for t in tunnels[:3]] == [link.registered for link in links]
    # A closed tunnel frees its place: the next client goes to that link.
    tunnels[4].transport.loseConnection()
    connector.dialer.backends[4].drop()  # its backend closes too
    w.run()
    assert tunnels[4].link.tunnels == 1
    assert opened(w.open()).link is tunnels[4].link


def test_a_connector_whose_backend_refuses_is_skipped_for_the_next(log: LogLines) -> None:
    w = world()
    broken = w.connector("internal1", priority=200, mode="refuse")
    fine = w.connector("internal2", priority=100)
    w.link(broken)
    w.link(broken)  # its second link is not tried: the backend behind it is the same
    w.link(fine)

    tunnel = opened(w.open())
    assert tunnel.link.connector == "internal2"
    assert broken.dialer.dials == ["echo"]
    assert fine.dialer.dials == ["echo"]
    # The connector logs the refusal with where it dialled; the client never sees that address.
    assert log.having("backend tcp://10.0.0.5:7000 for 'echo'")


def test_when_every_connector_fails_the_reply_is_502_and_names_each() -> None:
    w = world()
    w.link(w.connector("internal1", priority=200, mode="refuse"))
    w.link(w.connector("internal2", priority=100, mode="refuse"))

    problem = failed(w.open())
    assert problem.status == 502
    assert problem.label == "backend_refused"
    assert "no connector could serve 'echo'" in problem.reason
    assert "connector 'internal1': backend of 'echo' refused the connection" in problem.reason
    assert "connector 'internal2': backend of 'echo' refused the connection" in problem.reason
    assert "10.0.0.5" not in problem.reason


def test_a_single_connector_s_refusal_reaches_the_client_as_it_was() -> None:
    w = world()
    w.link(w.connector("internal1", mode="refuse"))
    problem = failed(w.open())
    assert (problem.status, problem.label) == (502, "backend_refused")
    assert problem.reason == "connector 'internal1': backend of 'echo' refused the connection"


def test_a_connector_that_does_not_have_the_service_answers_unknown_and_another_is_tried() -> None:
    w = world()
    # internal1 announces web but has no such service in its own configuration (a reload racing).
    confused = w.connector("internal1", offers=("echo", "web"), serves=("echo",), priority=200)
    good = w.connector("internal2", offers=("web",), priority=100)
    w.link(confused)
    w.link(good)

    tunnel = opened(w.open("web"))
    assert tunnel.link.connector == "internal2"
    assert confused.dialer.dials == []  # nothing dialled for an unknown service


def test_without_any_link_for_the_service_the_reply_is_503() -> None:
    w = world()
    w.link(w.connector("internal1", offers=("web",)))
    problem = failed(w.open("echo"))
    assert (problem.status, problem.label) == (503, "no_link")
    assert problem.reason == "no live link for service 'echo'"


def test_a_withdrawn_service_is_502_backend_down_not_503() -> None:
    w = world()
    connector = w.connector("internal1", offers=("echo", "web"))
    link = w.link(connector)
    connector.offers = ("web",)  # its health checks found the echo backend down
    link.connector.announce_again()
    w.run()

    problem = failed(w.open("echo"))
    assert (problem.status, problem.label) == (502, "backend_down")
    assert "'internal1' report it down" in problem.reason


def test_a_connector_going_away_takes_no_new_client() -> None:
    w = world()
    leaving = w.link(w.connector("internal1", priority=200))
    staying = w.connector("internal2", priority=100)
    w.link(staying)
    leaving.connector.mux.go_away()
    w.run()

    assert opened(w.open()).link.connector == "internal2"
    leaving_only = world()
    alone = leaving_only.link(leaving_only.connector("internal1"))
    alone.connector.mux.go_away()
    leaving_only.run()
    problem = failed(leaving_only.open())
    assert problem.status == 503


def test_a_busy_connector_is_503_overloaded_and_the_next_one_is_tried() -> None:
    w = world()
    busy = w.connector("internal1", priority=200, mode="hold", max_pending_opens=1)
    w.link(busy)
    waiting: Deferred[TunnelStream] = w.opener.open("echo", "198.51.100.7:4000", (), 10.0)
    w.run()
    assert busy.dialer.dials == ["echo"] and not waiting.called

    problem = failed(w.open())
    assert (problem.status, problem.label) == (503, "connector_overloaded")
    assert "1 stream opens already pending" in problem.reason

    w.link(w.connector("internal2", priority=100))
    assert opened(w.open()).link.connector == "internal2"
    waiting.cancel()
    waiting.addErrback(lambda _: None)


def test_no_answer_within_open_timeout_is_504_at_that_time() -> None:
    w = world(open_timeout=4.0)
    hung = w.connector("internal1", mode="hold")
    w.link(hung)
    outcome: list[object] = []
    w.opener.open("echo", "198.51.100.7:4000", (), 4.0).addBoth(outcome.append)
    w.run()

    w.advance(3.5, step=0.5)
    assert outcome == []
    w.advance(0.5)
    (result,) = outcome
    problem = result.value  # type: ignore[attr-defined]
    assert isinstance(problem, OpenFailed)
    assert (problem.status, problem.label) == (504, "open_timeout")
    assert problem.reason == "connector 'internal1' did not answer within 4 s"
    # The stream was reset: the connector gave up the dial and its pending place.
    assert hung.dialer.held[0].called
    assert w.registry.links[0].tunnels == 0


def test_a_tunnel_carries_bytes_both_ways_intact_and_in_order() -> None:
    w = world()
    connector = w.connector("internal1")
    w.link(connector)
    tunnel = opened(w.open())
    (backend,) = connector.dialer.backends

    # Splice the DMZ's end of the stream to an in-memory public client, as a frontplane does.
    client = w.client()
    public = client.connect(RelayedProtocol())
    to_backend, to_client = ByteTally(), ByteTally()
    finished: list[str] = []
    public.join(lambda side: tunnel.start_relay(side, to_backend, to_client, finished.append))  # type: ignore[attr-defined]

    chunks = [bytes([i]) * (1000 + 97 * i) for i in range(40)]
    for chunk in chunks:
        client.feed(chunk)
    w.run()
    assert backend.read() == b"".join(chunks)
    replies = [f"reply {i};".encode() * (i + 1) for i in range(30)]
    for reply in replies:
        backend.feed(reply)
    w.run()
    assert client.read() == b"".join(replies)
    assert (to_backend.total, to_client.total) == (sum(map(len, chunks)), sum(map(len, replies)))

    # The backend closes: its last bytes, then EOF (a half-close) reach the client; once the
    # client has finished too, the tunnel ends cleanly.
    backend.feed(b"bye")
    backend.drop(clean=True)
    w.run()
    assert client.read() == b"bye"
    assert client.write_closed and not client.lost
    client.feed(b"last words")
    client.feed_eof()
    w.run()
    assert client.lost and not client.aborted
    assert finished == ["both sides finished"]
    assert tunnel.link.tunnels == 0


def test_a_tunnel_is_joined_once_and_cancelled_only_before_its_answer() -> None:
    """Events out of turn raise (they used to be acted on): a second join, a cancel after OK."""
    w = world()
    connector = w.connector("internal1")
    w.link(connector)
    tunnel = opened(w.open())
    assert tunnel.state is TunnelState.ANSWERED
    with pytest.raises(StateError, match="TunnelStream: event CANCEL is not allowed in state ANSWERED"):
        tunnel.cancel()
    assert tunnel.state is TunnelState.ANSWERED and not tunnel.transport.disconnecting

    public = w.client().connect(RelayedProtocol())
    public.join(lambda side: tunnel.start_relay(side, ByteTally(), ByteTally(), lambda reason: None))  # type: ignore[attr-defined]
    assert tunnel.state is TunnelState.RELAYING
    with pytest.raises(StateError, match="event JOIN is not allowed in state RELAYING"):
        tunnel.start_relay(public.side, ByteTally(), ByteTally(), lambda reason: None)  # type: ignore[arg-type]

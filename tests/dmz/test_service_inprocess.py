"""A public raw TCP client through the DMZ in process: admission, limits, timers, pacing, relay.

The client is ``PublicTcpProtocol`` (built by ``PublicTcpFactory``) on an in-memory socket; its
service is a real ``ServiceFront`` with a real ``ClientGate``; the tunnel goes over a real
backplane link to a real connector whose backend is an in-memory socket. Limits are checked the
way a user sees them: the connection is cut (raw TCP has no status to send), one log line says
why, and ``shield_refusals_total`` counts it. Timers run on the fake clock.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import pytest
from twisted.internet.address import IPv4Address

from dmz_world_inprocess import HOST_A, HOST_B, Front, LogLines, Pipe, capture_log
from shield.config.model import ClientLimits
from shield.dmz.admission import Refused
from shield.dmz.frontplane_tcp import PublicTcpProtocol, TcpClientState
from shield.lifecycle import StateError

@pytest.fixture
def log() -> Iterator[LogLines]:
    yield from capture_log()


def test_a_client_is_not_read_until_the_connector_answers_then_bytes_flow_both_ways() -> None:
    f = Front(mode="hold")
    client = f.connect()
    # The tunnel is opening: the DMZ does not read the client yet, so nothing piles up.
    assert client.producerState == "paused"
    assert f.connector.dialer.dials == ["echo"]

    f.connector.dialer.held[0].callback(f.connector.dialer.connect_backend())
    f.world.run()
    assert client.producerState == "producing"
    (backend,) = f.backends
    request = b"GET / HTTP/1.0\r\n\r\n"
    client.feed(request)
    f.world.run()
    assert backend.read() == request
    backend.feed(b"HTTP/1.0 200 OK\r\n\r\nhello")
    f.world.run()
    assert client.read() == b"HTTP/1.0 200 OK\r\n\r\nhello"
    assert f.sample("shield_streams_active", service="echo") == 1
    assert f.sample("shield_bytes_total", service="echo", direction="to_backend") == len(request)
    assert f.sample("shield_bytes_total", service="echo", direction="to_client") == 24

    client.drop(clean=True)  # the client leaves: its tunnel and backend connection end
    f.world.run()
    backend.drop(clean=True)  # the backend answers the EOF by closing
    f.world.run()
    assert backend.write_closed
    assert f.sample("shield_streams_active", service="echo") == 0
    assert f.gate.per_service["echo"] == 0 and f.gate.total == 0


def test_no_live_link_closes_the_client_with_one_line(log: LogLines) -> None:
    f = Front(linked=False)
    client = f.connect()
    assert client.lost and not client.aborted
    assert log.having(f"tcp client {HOST_A}:50000 -> echo: 503 no live link for service 'echo'")
    assert f.sample("shield_open_failures_total", service="echo", reason="no_link") == 1
    assert f.gate.per_service["echo"] == 0  # its place is free again


def test_connections_per_source_are_limited_per_service(log: LogLines) -> None:
    f = Front(limits=ClientLimits(max_connections_per_source=2))
    first, second = f.connect(HOST_A), f.connect(HOST_A)
    third = f.connect(HOST_A)

    assert not first.disconnecting and not second.disconnecting
    assert third.aborted, "a refused raw TCP client is cut: there is no status to send"
    assert len(f.backends) == 2, "the refused client cost no tunnel"
    assert log.having(f"client {HOST_A}:50002 -> echo: refused (503): too many connections from {HOST_A}: 2 open to 'echo'")
    assert f.refusals("max_connections_per_source") == 1
    # Another address is not affected.
    other = f.connect(HOST_B)
    assert not other.disconnecting and len(f.backends) == 3
    # Once one of the first two has gone, that source may connect again.
    first.drop(clean=False)
    f.world.run()
    again = f.connect(HOST_A)
    assert not again.disconnecting and len(f.backends) == 4


def test_connections_per_service_are_limited(log: LogLines) -> None:
    f = Front(limits=ClientLimits(max_connections=2))
    f.connect(HOST_A)
    f.connect(HOST_B)
    refused = f.connect("192.0.2.77")
    assert refused.aborted
    assert log.having("-> echo: refused (503): too many connections: service 'echo' has 2 open")
    assert f.refusals("max_connections") == 1


def test_the_gateway_limit_refuses_at_accept_before_any_service() -> None:
    f = Front(gateway=ClientLimits(max_connections=10, max_connections_per_source=1))
    kept = f.connect(HOST_A)
    refused_protocol = f.factory.buildProtocol(IPv4Address("TCP", HOST_A, 40000))
    assert isinstance(refused_protocol, Refused)
    socket = Pipe(IPv4Address("TCP", HOST_A, 40000))
    socket.connect(refused_protocol)
    assert socket.aborted and socket.value() == b""
    assert f.refusals("max_connections_per_source", service="") == 1
    # A WebSocket port answers the same refusal in HTTP.
    answered = Pipe()
    answered.connect(Refused(refused_protocol.refusal, http=True))
    assert answered.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert answered.value().endswith(f"too many connections from {HOST_A}: 1 open to this gateway\n".encode())
    assert answered.disconnecting and not answered.aborted
    # The gateway's ticket goes with the socket.
    kept.drop()
    f.world.run()
    assert not f.connect(HOST_A).disconnecting


def test_a_flood_of_refusals_is_one_line_then_one_summary_a_second(log: LogLines) -> None:
    f = Front(limits=ClientLimits(max_connections_per_source=1))
    f.connect(HOST_A)
    for _ in range(5):
        assert f.connect(HOST_A).aborted
    assert len(log.having("refused (503)")) == 1
    assert f.refusals("max_connections_per_source") == 5
    f.world.advance(1.0)
    (summary,) = log.having("more refused by")
    assert "4 more refused by max_connections_per_source for 'echo'" in summary


def test_a_tls_client_without_a_handshake_is_cut_at_the_handshake_timeout(log: LogLines) -> None:
    f = Front(limits=ClientLimits(handshake_timeout=3.0, max_connections_per_source=1))
    client = f.connect(kind="tls")
    assert f.connector.dialer.dials == [], "no tunnel before the TLS handshake"

    f.world.advance(2.5)
    assert not client.disconnecting
    f.world.advance(0.5)
    assert client.aborted and client.lost
    assert log.having(f"tls client {HOST_A}:50000 -> echo: no TLS handshake within 3 s; closed")
    assert f.refusals("handshake_timeout") == 1
    assert f.connector.dialer.dials == []
    # Its place is free again.
    assert not f.connect(HOST_A, kind="tls").disconnecting


def test_a_tls_handshake_in_time_opens_the_tunnel_and_stops_the_timer() -> None:
    f = Front(limits=ClientLimits(handshake_timeout=3.0))
    client = f.connect(kind="tls")
    f.world.advance(2.0)
    protocol = client.protocol
    assert isinstance(protocol, PublicTcpProtocol)
    protocol.handshakeCompleted()  # what the TLS layer calls
    f.world.run()
    assert f.connector.dialer.dials == ["echo"]
    f.world.advance(5.0)
    assert not client.disconnecting
    assert f.refusals("handshake_timeout") == 0
    # A second handshake report is a bug, refused loudly: it used to open a second tunnel.
    assert protocol.state is TcpClientState.RELAYING
    with pytest.raises(StateError, match="PublicTcpProtocol: event HANDSHAKE_DONE is not allowed in state RELAYING"):
        protocol.handshakeCompleted()
    f.world.run()
    assert f.connector.dialer.dials == ["echo"]


def test_an_idle_tunnel_is_closed_after_the_idle_timeout(log: LogLines) -> None:
    f = Front(limits=ClientLimits(idle_timeout=4.0))
    client = f.connect()
    (backend,) = f.backends

    # Traffic every 2 s keeps it open, whichever way it goes.
    for i in range(5):
        f.world.advance(2.0)
        (client.feed if i % 2 else backend.feed)(b"ping")
        f.world.run()
    assert not client.disconnecting
    # Then silence: closed between 4 and 5 s (the watch looks four times per timeout).
    f.world.advance(3.75, step=0.25)
    assert not client.disconnecting
    f.world.advance(1.25, step=0.25)
    assert client.aborted
    assert log.having(f"tcp client {HOST_A}:50000 -> echo: closed, idle for 4 s")
    assert f.refusals("idle_timeout") == 1


def test_bytes_per_second_pauses_the_tunnel_until_the_bucket_refills() -> None:
    f = Front(limits=ClientLimits(bytes_per_second=1000))
    client = f.connect()
    (backend,) = f.backends

    backend.feed(b"a" * 1500)  # 500 bytes over one second's worth: 0.5 s of pause
    f.world.run()
    assert client.read() == b"a" * 1500
    backend.feed(b"b" * 100)
    f.world.run()
    assert client.read() == b"", "paced: held in the tunnel, not sent"
    f.world.advance(0.25)
    assert client.read() == b""
    f.world.advance(0.25)
    assert client.read() == b"b" * 100


def test_a_slow_client_pauses_the_backend_and_nothing_is_lost() -> None:
    """A client that stops reading: its socket buffer fills, the tunnel stops granting window, the
    connector stops reading the backend. Memory stays bounded; when the client reads again,
    everything arrives, in order."""
    f = Front()
    client = f.connect(limit=64 * 1024)
    (backend,) = f.backends
    total = 4 * 1024 * 1024
    chunk = 16 * 1024
    sent = hashlib.sha256()
    received = hashlib.sha256()
    written = 0
    pauses = 0
    most_unread = 0

    def backend_writes() -> None:
        nonlocal written
        while backend.producerState == "producing" and written < total:
            block = (written // chunk).to_bytes(4, "big") * (chunk // 4)
            sent.update(block)
            written += len(block)
            backend.feed(block)
            f.world.run()

    backend_writes()
    # The client has not read anything: the backend was paused long before 4 MiB.
    assert backend.producerState == "paused"
    # At most one stream window (256 KiB) is read from the backend for a client that reads nothing.
    assert written <= 256 * 1024, f"{written} bytes read from the backend for a client that reads nothing"
    while written < total or client.unread:
        most_unread = max(most_unread, client.unread)
        received.update(client.read())
        f.world.run()
        pauses += backend.producerState == "paused"
        backend_writes()
    received.update(client.read())
    assert received.hexdigest() == sent.hexdigest()
    assert pauses > 3, "the backend was paused again and again while the client lagged"
    assert most_unread <= 64 * 1024 + chunk, "the client socket held more than its buffer and one chunk"


def test_a_client_leaving_while_its_tunnel_opens_cancels_the_dial() -> None:
    f = Front(mode="hold")
    client = f.connect()
    (dial,) = f.connector.dialer.held
    client.drop(clean=False)
    f.world.run()
    assert dial.called, "the connector gave up the dial"
    assert f.world.registry.links[0].tunnels == 0
    assert f.gate.per_service["echo"] == 0


def test_a_client_leaving_while_its_tunnel_opens_is_not_offered_to_another_connector() -> None:
    """Its cancelled tunnel is no refusal by the link: nothing is opened on the next one."""
    f = Front(mode="hold", connectors=("internal1", "internal2"))
    other = f.world.connector("internal2", mode="hold")
    f.world.link(other)
    client = f.connect()
    tried = f.connector.dialer.dials + other.dialer.dials
    assert tried == ["echo"]
    client.drop(clean=False)
    f.world.run()
    assert f.connector.dialer.dials + other.dialer.dials == ["echo"], "no second backend was dialled"
    assert all(link.tunnels == 0 for link in f.world.registry.links)
    assert f.gate.per_service["echo"] == 0

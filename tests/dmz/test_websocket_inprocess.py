"""A public WebSocket client through the DMZ in process: the upgrade waits for the tunnel, refusals
are HTTP answers with one log line, messages go both ways, and every end reaches the other side.

The client is ``PublicWebSocketProtocol`` (Autobahn, built by the service's WebSocket factory) on
an in-memory socket, speaking to ``WsClient``, which reads every byte the server sends; the
tunnel goes over a real backplane link to a real connector whose backend is an in-memory socket.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import pytest
import txaio
from twisted.internet import error
from twisted.python.failure import Failure

from dmz_world_inprocess import HOST_A, Front, LogLines, WsClient, capture_log, upgrade_request
from shield.config.model import ClientLimits
from shield.dmz.frontplane_ws import PublicWebSocketProtocol, WsClientState
from shield.lifecycle import StateError


@pytest.fixture
def log() -> Iterator[LogLines]:
    yield from capture_log()


@pytest.fixture
def front(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Front]:
    """Builds a ``Front``; Autobahn's timers (open and close handshakes) run on its clock."""

    def make(**kwargs: object) -> Front:
        f = Front(**kwargs)  # type: ignore[arg-type]
        monkeypatch.setattr(txaio.config, "loop", f.world.clock)  # Autobahn schedules on txaio's one loop
        return f

    return make


def upgraded(f: Front, **kwargs: object) -> WsClient:
    client = f.connect_ws(**kwargs)  # type: ignore[arg-type]
    client.send(upgrade_request())
    f.world.run()
    client.read()
    assert client.status == 101, (client.status, client.body)
    return client


def protocol_of(client: WsClient) -> PublicWebSocketProtocol:
    protocol = client.pipe.protocol
    assert isinstance(protocol, PublicWebSocketProtocol)
    return protocol


def test_the_upgrade_waits_for_the_tunnel_then_messages_flow_both_ways(front: Callable[..., Front]) -> None:
    f = front(mode="hold")
    client = f.connect_ws()
    client.send(upgrade_request())
    f.world.run()
    client.read()
    assert client.status is None, "no answer before the connector has its backend"
    assert protocol_of(client).lifecycle_state is WsClientState.OPENING

    f.connector.dialer.held[0].callback(f.connector.dialer.connect_backend())
    f.world.run()
    client.read()
    assert client.status == 101 and protocol_of(client).lifecycle_state is WsClientState.RELAYING
    (backend,) = f.backends
    client.send_message(b"hello")
    client.send_message(b" world")
    f.world.run()
    assert backend.read() == b"hello world"
    backend.feed(b"reply")
    f.world.run()
    client.read()
    assert client.messages == [b"reply"]
    assert f.sample("shield_streams_active", service="echo") == 1

    client.send_close(1000)  # the client says goodbye: the server answers and the tunnel ends
    f.world.run()
    client.read()
    assert client.close_code == 1000 and client.pipe.lost
    assert backend.write_closed, "the backend got EOF"
    backend.drop(clean=True)
    f.world.run()
    assert f.sample("shield_streams_active", service="echo") == 0
    assert f.gate.per_service["echo"] == 0 and f.world.registry.links[0].tunnels == 0
    assert client.after_end == b""


def test_the_backend_closing_closes_the_client_with_1000(front: Callable[..., Front]) -> None:
    f = front()
    client = upgraded(f)
    (backend,) = f.backends
    backend.feed(b"last words")
    backend.drop(clean=True)
    f.world.run()
    client.read()
    assert client.messages == [b"last words"] and client.close_code == 1000
    client.send_close(1000)
    f.world.run()
    assert client.pipe.lost
    assert f.sample("shield_streams_active", service="echo") == 0 and f.gate.per_service["echo"] == 0


def test_a_refused_tunnel_is_the_http_status_with_the_reason_and_one_line(front: Callable[..., Front], log: LogLines) -> None:
    f = front(mode="refuse")
    client = f.connect_ws()
    client.send(upgrade_request())
    f.world.run()
    client.read()
    assert client.status == 502 and b"refused the connection" in client.body
    assert client.after_end == b"" and client.pipe.lost
    assert len(log.having(f"ws client {HOST_A}:50000 -> echo: 502")) == 1
    assert f.sample("shield_open_failures_total", service="echo", reason="backend_refused") == 1
    assert f.gate.per_service["echo"] == 0


def test_a_forbidden_origin_is_403_before_any_tunnel(front: Callable[..., Front], log: LogLines) -> None:
    f = front()
    f.front.config = dataclasses.replace(f.front.config, allow_origin=("https://ok.test",))
    client = f.connect_ws()
    client.send(upgrade_request(headers=(("Origin", "https://evil.test"),)))
    f.world.run()
    client.read()
    assert client.status == 403 and client.pipe.lost
    assert f.connector.dialer.dials == []
    assert len(log.having("origin 'https://evil.test' is not allowed")) == 1


def test_a_bad_upgrade_request_is_400_with_one_line(front: Callable[..., Front], log: LogLines) -> None:
    f = front()
    client = f.connect_ws()
    client.send(b"GET /echo HTTP/1.1\r\nHost: echo.test\r\n\r\n")  # no Upgrade
    f.world.run()
    client.read()
    assert client.status is not None and 400 <= client.status < 500 and client.pipe.lost
    assert len(log.having(f"ws client {HOST_A}:50000 -> echo: {client.status}")) == 1
    assert f.connector.dialer.dials == []


def test_a_client_over_the_limit_is_answered_at_once_and_not_read(front: Callable[..., Front]) -> None:
    f = front(limits=ClientLimits(max_connections=1))
    kept = upgraded(f)
    refused = f.connect_ws(run=False)
    refused.read()
    assert refused.status == 503 and refused.pipe.disconnecting
    assert protocol_of(refused).lifecycle_state is WsClientState.TURNED_AWAY
    refused.pipe.feed(upgrade_request())  # arrived before the close: read by nobody
    f.world.run()
    assert refused.pipe.lost and len(f.backends) == 1
    assert protocol_of(refused).lifecycle_state is WsClientState.GONE
    assert not kept.pipe.disconnecting


def test_a_client_leaving_while_its_tunnel_opens_costs_a_dropped_tunnel_and_no_line(
    front: Callable[..., Front], log: LogLines
) -> None:
    f = front(mode="hold")
    client = f.connect_ws()
    client.send(upgrade_request())
    f.world.run()
    client.pipe.drop(clean=False)
    f.world.run()
    assert protocol_of(client).lifecycle_state is WsClientState.GONE
    f.connector.dialer.held[0].callback(f.connector.dialer.connect_backend())
    f.world.run()
    (backend,) = f.backends
    assert backend.lost, "the tunnel it no longer needs was dropped, and its backend connection"
    assert f.world.registry.links[0].tunnels == 0 and f.gate.per_service["echo"] == 0
    assert f.sample("shield_streams_active", service="echo") == 0
    assert log.having("-> echo: 5") == []
    assert client.pipe.writes_after_end == 0, "no 101 is written to a connection already lost"


def test_a_client_that_left_gets_no_refusal_written_after_it(front: Callable[..., Front], log: LogLines) -> None:
    f = front(mode="hold")
    client = f.connect_ws()
    client.send(upgrade_request())
    f.world.run()
    client.pipe.drop(clean=True)
    f.world.run()
    f.connector.dialer.held[0].errback(Failure(error.ConnectionRefusedError("connection refused")))
    f.world.run()
    assert client.pipe.writes_after_end == 0, "no 502 is written to a connection already lost"
    assert log.having("-> echo: 502") == [], "nor logged: nobody was refused"
    assert f.world.registry.links[0].tunnels == 0 and f.gate.per_service["echo"] == 0


def test_events_out_of_turn_raise(front: Callable[..., Front]) -> None:
    f = front()
    client = upgraded(f)
    protocol = protocol_of(client)
    with pytest.raises(StateError, match="PublicWebSocketProtocol: event UPGRADED is not allowed in state RELAYING"):
        protocol.onOpen()
    assert protocol.lifecycle_state is WsClientState.RELAYING and len(f.backends) == 1

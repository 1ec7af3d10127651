"""What a ``wss://`` link's carriage relies on in Autobahn, pinned for the installed version.

shield/link/websocket.py replaces two of Autobahn's methods on the link's protocols: its
``dataReceived`` goes straight to ``_dataReceived`` (Autobahn's Twisted adapter formats a debug
line per read first), and its ``sendData`` writes to the transport when nothing is queued
(Autobahn's formats one per frame). It also streams ``onMessageFrameData`` to the mux as it comes,
relying on Autobahn to hand over each read's part of a frame at once. If Autobahn changes any of
this, these tests say so before a link misbehaves (like tests/dmz/test_autobahn_adapter.py for
the public WebSocket frontplane).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

import pytest
import txaio
from autobahn.twisted.websocket import WebSocketAdapterProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport

from shield.config.model import KeepaliveSettings, Uri
from shield.link.websocket import LinkWebSocketClient, LinkWebSocketServer, LinkWebSocketServerFactory


def body_of(function: Any) -> list[ast.stmt]:
    """The statements of a function, without its docstring."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    (definition,) = tree.body
    assert isinstance(definition, ast.FunctionDef)
    body = definition.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return body


def test_the_adapter_s_data_received_only_logs_and_hands_the_read_to_the_parser() -> None:
    statements = [ast.unparse(statement) for statement in body_of(WebSocketAdapterProtocol.dataReceived)]
    assert len(statements) == 2, statements
    assert statements[0].startswith("self.log.debug(")
    assert statements[1] == "self._dataReceived(data)"
    assert callable(WebSocketProtocol._dataReceived)
    assert LinkWebSocketServer.dataReceived is LinkWebSocketClient.dataReceived
    assert LinkWebSocketServer.dataReceived is not WebSocketAdapterProtocol.dataReceived


class _Stats:
    outgoingOctetsWireLevel = 0
    preopenOutgoingOctetsWireLevel = 0


class _Quiet:
    def debug(self, *args: object, **kwargs: object) -> None:
        pass


class _Sender:
    """Just what Autobahn's sendData reads of its protocol."""

    state = WebSocketProtocol.STATE_OPEN
    logOctets = False
    peer = "peer"
    log = _Quiet()
    sendData = WebSocketProtocol.sendData

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.send_queue: list[tuple[bytes, bool]] = []
        self.trafficStats = _Stats()
        self.triggered = 0

    def _trigger(self) -> None:
        self.triggered += 1


def test_autobahn_s_send_data_writes_straight_to_the_transport_when_nothing_is_queued() -> None:
    sender = _Sender()
    sender.sendData(b"frame one")
    sender.sendData(b"frame two")
    assert sender.transport.value() == b"frame oneframe two"
    assert sender.send_queue == [] and sender.triggered == 0

    sender.send_queue.append((b"queued", False))  # something waits: what follows waits behind it
    sender.sendData(b"frame three")
    assert sender.transport.value() == b"frame oneframe two"
    assert sender.send_queue == [(b"queued", False), (b"frame three", False)] and sender.triggered == 1


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> LinkWebSocketServer:
    """The DMZ's end of a link, upgraded, on a StringTransport, its timers on a fake clock."""
    clock = MemoryReactorClock()
    monkeypatch.setattr(txaio.config, "loop", clock)
    factory = LinkWebSocketServerFactory(
        Factory.forProtocol(Frames), Uri("wss", "dmz", 8443, "/shield"), KeepaliveSettings(0, 3), print
    )
    protocol = factory.buildProtocol(None)
    assert isinstance(protocol, LinkWebSocketServer)
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(
        b"GET /shield HTTP/1.1\r\nHost: dmz:8443\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Protocol: shield.link.v1\r\n\r\n"
    )
    assert protocol.state == WebSocketProtocol.STATE_OPEN
    protocol.clock = clock  # type: ignore[attr-defined]
    return protocol


class Frames(Protocol):
    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.pieces.append(data)

    def abort(self, reason: str) -> None:
        raise AssertionError(reason)


def test_shield_s_send_data_keeps_autobahn_s_queue_in_order(server: LinkWebSocketServer) -> None:
    transport: StringTransport = server.transport
    transport.clear()
    server.sendData(b"direct")
    assert transport.value() == b"direct"
    server.send_queue.append((b" queued", False))
    server.sendData(b" behind it")
    assert b"behind it" not in transport.value(), "behind a queue, a write waits its turn"
    server.clock.advance(1)  # type: ignore[attr-defined]
    assert transport.value() == b"direct queued behind it"


def test_each_read_s_part_of_a_frame_is_handed_over_as_it_arrives(server: LinkWebSocketServer) -> None:
    inner: Frames = server.inner  # type: ignore[assignment]
    payload = b"0123456789"
    frame = b"\x82" + bytes([len(payload)]) + payload  # unmasked, as a link's connector sends
    server.dataReceived(frame[:1])
    server.dataReceived(frame[1:2])
    assert inner.pieces == [], "a header alone is no data"
    server.dataReceived(frame[2:6])
    assert inner.pieces == [b"0123"], "nothing held back for the rest of the frame"
    server.dataReceived(frame[6:])
    assert inner.pieces == [b"0123", b"456789"]

    server.dataReceived(b"\x82\x03abc\x82\x02de")  # two messages in one read: one piece each
    assert inner.pieces == [b"0123", b"456789", b"abc", b"de"]


def test_frames_of_a_fragmented_message_are_handed_over_as_they_come(server: LinkWebSocketServer) -> None:
    inner: Frames = server.inner  # type: ignore[assignment]
    server.dataReceived(b"\x02\x03abc")  # first frame of a binary message, FIN not set
    assert inner.pieces == [b"abc"], "not held until the message ends"
    server.dataReceived(b"\x80\x02de")  # the continuation with FIN
    assert inner.pieces == [b"abc", b"de"]

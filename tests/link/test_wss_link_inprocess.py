"""A ``wss://`` link's WebSocket carriage (shield/link/websocket.py) in process, without sockets.

The DMZ's end (``LinkWebSocketServerFactory``) and the connector's (``_LinkWebSocketClientFactory``,
what ``LinkWebSocketEndpoint`` dials with) are joined by twisted.test.iosim, with Autobahn's
timers on a fake clock (txaio's loop). The protocols above them are recorders (``Inner``, which
aborts like a ``MuxProtocol``: by cutting its transport), or real ``MuxProtocol`` pairs. What an
operator would check: the upgrade, bytes both ways whatever the writes and reads, the refusals, a
text message, the peer's close codes, the upgrade timeout, and the transport the mux sees.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any, Iterator, Self

import pytest
import txaio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.defer import succeed
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim

from shield.config.model import KeepaliveSettings, Uri
from shield.link.roles import why_link_ended
from shield.link.websocket import (
    CLOSE_TIMEOUT,
    SUBPROTOCOL,
    UPGRADE_TIMEOUT,
    LinkWebSocketClient,
    LinkWebSocketEndpoint,
    LinkWebSocketServer,
    LinkWebSocketServerFactory,
    MessagePipe,
    WebSocketEnded,
    _LinkWebSocketClientFactory,
)
from shield.mux.config import MuxConfig
from shield.mux.protocol import MuxProtocol
from shield.net import READ_SIZE, set_no_delay
from shield.tls import contexts

DMZ = IPv4Address("TCP", "192.0.2.1", 8443)
CONNECTOR = IPv4Address("TCP", "198.51.100.7", 40100)
NO_PINGS = KeepaliveSettings(interval=0, misses=3)
TEXT_REASON = "protocol error: a text message on a link (links carry binary messages)"

OP_TEXT, OP_BINARY, OP_CLOSE = 0x1, 0x2, 0x8


@pytest.fixture(autouse=True)
def _restore_txaio_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``Link`` puts Autobahn's timers (txaio's one loop) on its clock; this puts it back."""
    monkeypatch.setattr(txaio.config, "loop", txaio.config.loop)


class Inner(Protocol):
    """What a link's protocol above the WebSocket gets; ``abort`` cuts the transport, as the mux's does."""

    hello = b""  # written at connectionMade, before any upgrade (as the connector's ANNOUNCE is)

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.aborted: list[str] = []
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        if self.hello:
            self.pipe.write(self.hello)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def abort(self, reason: str) -> None:
        self.aborted.append(reason)
        self.pipe.abortConnection()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = reason

    @property
    def data(self) -> bytes:
        return b"".join(self.received)

    @property
    def pipe(self) -> MessagePipe:
        """The transport the carriage gave this protocol."""
        assert isinstance(self.transport, MessagePipe)
        return self.transport


class Announcing(Inner):
    hello = b"ANNOUNCE"


class Tap(iosim.FakeTransport):
    """An in-memory socket that keeps a copy of everything written to it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent = bytearray()

    def write(self, data: bytes) -> None:
        if not self.disconnecting:
            self.sent += data
        super().write(data)


class Link:
    """The two ends of one ``wss://`` link over an in-memory socket, on one fake clock."""

    def __init__(
        self,
        client_inner: Any = Inner,
        server_inner: Any = Inner,
        path: str = "/shield",
        protocols: list[str] | None = None,
        clock: MemoryReactorClock | None = None,
    ) -> None:
        self.clock = clock if clock is not None else MemoryReactorClock()
        txaio.config.loop = self.clock  # Autobahn's timers (upgrade, closing handshake) run on it
        self.refused: list[tuple[object, str]] = []
        self.server_factory = LinkWebSocketServerFactory(
            Factory.forProtocol(server_inner),
            Uri("wss", "dmz.example", 8443, "/shield"),
            NO_PINGS,
            lambda addr, reason: self.refused.append((addr, reason)),
        )
        self.client_factory = _LinkWebSocketClientFactory(
            Factory.forProtocol(client_inner), f"wss://dmz.example:8443{path}", NO_PINGS
        )
        if protocols is not None:
            self.client_factory.protocols = protocols
        server = self.server_factory.buildProtocol(CONNECTOR)
        client = self.client_factory.buildProtocol(DMZ)
        assert isinstance(server, LinkWebSocketServer) and isinstance(client, LinkWebSocketClient)
        self.server, self.client = server, client
        self.server_io = Tap(server, isServer=True, hostAddress=DMZ, peerAddress=CONNECTOR)
        self.client_io = Tap(client, isServer=False, hostAddress=CONNECTOR, peerAddress=DMZ)
        self.pump = iosim.connect(server, self.server_io, client, self.client_io, greet=False, clock=self.clock)

    @property
    def server_inner(self) -> Inner:
        return self.server.inner  # type: ignore[return-value]

    @property
    def client_inner(self) -> Inner:
        return self.client.inner  # type: ignore[return-value]

    def run(self) -> None:
        self.pump.flush()

    def upgraded(self) -> Self:
        self.run()
        assert self.client.state == self.server.state == LinkWebSocketClient.STATE_OPEN
        return self

    def run_split(self, sizes: list[int]) -> None:
        """Pump, but each side's bytes reach the other in reads of the given sizes (cycled)."""
        for _ in range(1000):
            self.clock.advance(0)
            moved = False
            for source, target in ((self.client_io, self.server_io), (self.server_io, self.client_io)):
                data = source.getOutBuffer() or b""
                moved = moved or bool(data)
                for piece in split(data, sizes):
                    target.bufferReceived(piece)
            if not moved:
                return
        raise AssertionError("the link never went quiet")


def split(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    pos, turn = 0, 0
    while pos < len(data):
        size = sizes[turn % len(sizes)] if sizes else len(data)
        yield data[pos : pos + size]
        pos, turn = pos + size, turn + 1


def frames(data: bytes) -> list[tuple[int, bool, bytes]]:
    """(opcode, masked, payload) of each WebSocket frame in ``data``: masked is the MASK bit of the
    frame's second byte (a masked payload is unmasked)."""
    found, pos = [], 0
    while pos < len(data):
        first, second = data[pos], data[pos + 1]
        pos += 2
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        masked = bool(second & 0x80)
        key = b""
        if masked:
            key, pos = data[pos : pos + 4], pos + 4
        payload = data[pos : pos + length]
        if masked:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        found.append((first & 0x0F, masked, payload))
        pos += length
    return found


def after_http(sent: bytes) -> bytes:
    """What an end wrote after its HTTP request or answer: its WebSocket frames."""
    head, sep, rest = sent.partition(b"\r\n\r\n")
    assert sep, sent
    return rest


def ended(failure: Failure | None) -> str:
    assert failure is not None, "connectionLost was not called"
    assert isinstance(failure.value, WebSocketEnded), failure
    return str(failure.value)


# --- 1. the upgrade, and bytes both ways ---------------------------------------------------------


def test_the_upgrade_selects_the_link_subprotocol_and_bytes_flow_both_ways() -> None:
    link = Link().upgraded()
    assert link.client.websocket_protocol_in_use == SUBPROTOCOL
    assert link.server.websocket_protocol_in_use == SUBPROTOCOL
    request = bytes(link.client_io.sent).split(b"\r\n\r\n")[0].decode()
    assert request.startswith("GET /shield HTTP/1.1\r\n")
    assert f"Sec-WebSocket-Protocol: {SUBPROTOCOL}" in request
    assert bytes(link.server_io.sent).startswith(b"HTTP/1.1 101 ")

    link.client_inner.pipe.write(b"from the connector")
    link.server_inner.pipe.write(b"from the DMZ")
    link.client_inner.pipe.writeSequence([b"one ", b"message"])
    link.run()
    assert link.server_inner.data == b"from the connectorone message"
    assert link.client_inner.data == b"from the DMZ"
    assert link.client_inner.aborted == link.server_inner.aborted == []
    assert link.client_inner.lost is link.server_inner.lost is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    client_chunks=st.lists(st.binary(max_size=300), max_size=8),
    server_chunks=st.lists(st.binary(max_size=300), max_size=8),
    before=st.integers(0, 8),
    reads=st.lists(st.integers(1, 64), min_size=1, max_size=6),
)
def test_any_writes_arrive_intact_and_in_order_whatever_the_reads(
    client_chunks: list[bytes], server_chunks: list[bytes], before: int, reads: list[int]
) -> None:
    """The first ``before`` writes of each side are made before the upgrade; every read on both
    sides is cut to the sizes in ``reads``."""
    link = Link()
    for chunk in client_chunks[:before]:
        link.client_inner.pipe.write(chunk)
    for chunk in server_chunks[:before]:
        link.server_inner.pipe.write(chunk)
    link.run_split(reads)
    assert link.client.state == link.server.state == LinkWebSocketClient.STATE_OPEN
    for chunk in client_chunks[before:]:
        link.client_inner.pipe.write(chunk)
    for chunk in server_chunks[before:]:
        link.server_inner.pipe.write(chunk)
    link.run_split(reads)

    assert link.server_inner.data == b"".join(client_chunks)
    assert link.client_inner.data == b"".join(server_chunks)
    assert all(link.server_inner.received) and all(link.client_inner.received), "no empty reads"
    assert link.client_inner.aborted == link.server_inner.aborted == []


@pytest.mark.parametrize("size", [125, 126, 65535, 65536, 300_000])
def test_messages_of_every_length_encoding_arrive_whole(size: int) -> None:
    link = Link().upgraded()
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    link.client_inner.pipe.write(payload)
    link.server_inner.pipe.write(payload[::-1])
    link.run()
    assert link.server_inner.data == payload
    assert link.client_inner.data == payload[::-1]


def test_what_the_connector_writes_before_the_upgrade_arrives_first_and_once() -> None:
    link = Link(client_inner=Announcing)
    link.client_inner.pipe.write(b" and a ping")
    assert link.client.state == LinkWebSocketClient.STATE_CONNECTING
    assert after_http(bytes(link.client_io.sent)) == b"", "nothing but the request before the answer"
    link.upgraded()
    link.client_inner.pipe.write(b" then more")
    link.run()

    assert link.server_inner.data == b"ANNOUNCE and a ping then more"
    wire = frames(after_http(bytes(link.client_io.sent)))
    assert wire == [(OP_BINARY, False, b"ANNOUNCE and a ping"), (OP_BINARY, False, b" then more")]


def test_what_the_dmz_writes_before_the_upgrade_arrives_first_and_once() -> None:
    link = Link(server_inner=Announcing)
    link.upgraded()
    link.server_inner.pipe.write(b"!")
    link.run()
    assert link.client_inner.data == b"ANNOUNCE!"
    assert frames(after_http(bytes(link.server_io.sent))) == [(OP_BINARY, False, b"ANNOUNCE"), (OP_BINARY, False, b"!")]


def test_the_connector_does_not_mask_its_frames_and_the_dmz_accepts_them() -> None:
    link = Link().upgraded()
    for size in (1, 200, 70_000):
        link.client_inner.pipe.write(b"m" * size)
    link.run()
    client_frames = after_http(bytes(link.client_io.sent))
    assert [(opcode, masked) for opcode, masked, _ in frames(client_frames)] == [(OP_BINARY, False)] * 3
    assert [len(p) for _, _, p in frames(client_frames)] == [1, 200, 70_000]
    assert link.server_inner.data == b"m" * 70_201
    assert link.server.state == LinkWebSocketServer.STATE_OPEN and link.server_inner.lost is None


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Received(Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class LoggedMux(MuxProtocol):
    """A ``MuxProtocol`` that keeps the reason its connection ended with (as its owner would)."""

    lost_reason: Failure | None = None

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost_reason = reason
        super().connectionLost(reason)


class MuxLink(Link):
    """A real yamux session over the carriage: the DMZ's mux echoes every stream the connector opens."""

    def __init__(self) -> None:
        self.muxes: list[LoggedMux] = []
        clock = MemoryReactorClock()
        config = MuxConfig(keepalive_interval=0)

        def mux(client: bool) -> type[Protocol]:
            muxes = self.muxes

            class Built(LoggedMux):
                def __init__(self) -> None:
                    super().__init__(client, config, None if client else Factory.forProtocol(Echo), clock)
                    muxes.append(self)

            return Built

        super().__init__(client_inner=mux(True), server_inner=mux(False), clock=clock)

    @property
    def client_mux(self) -> LoggedMux:
        return self.client.inner  # type: ignore[return-value]

    @property
    def server_mux(self) -> LoggedMux:
        return self.server.inner  # type: ignore[return-value]


def test_a_mux_pair_over_the_carriage_opens_a_stream_and_echoes() -> None:
    link = MuxLink()
    received = Received()
    stream = link.client_mux.open_stream(received)  # before the upgrade, as a connector's first stream might
    stream.write(b"hello through yamux")
    link.upgraded()
    stream.write(b", twice")
    link.run()
    assert received.data == b"hello through yamux, twice"
    assert len(link.server_mux.streams) == 1 and link.client_mux.is_open and link.server_mux.is_open
    assert all(opcode == OP_BINARY and not masked for opcode, masked, _ in frames(after_http(bytes(link.client_io.sent))))


# --- 2. refused upgrades -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "protocols", "status", "reason"),
    [
        ("/wrong", None, 404, "no backplane at /wrong (it is at /shield)"),
        ("/shield", [], 400, f"not a shield link: the upgrade must offer subprotocol {SUBPROTOCOL} (offered: none)"),
        ("/shield", ["chat"], 400, f"not a shield link: the upgrade must offer subprotocol {SUBPROTOCOL} (offered: chat)"),
    ],
)
def test_the_dmz_refuses_a_wrong_upgrade_once_and_nothing_reaches_either_mux(
    path: str, protocols: list[str] | None, status: int, reason: str
) -> None:
    link = Link(client_inner=Announcing, server_inner=Announcing, path=path, protocols=protocols)
    link.client_inner.pipe.write(b"more")
    link.run()

    assert link.refused == [(CONNECTOR, f"{status} {reason}")]
    answer = bytes(link.server_io.sent)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    assert answer.endswith(f"\r\n\r\n{reason}\n".encode()), "the body says why (and where the backplane is)"
    if status == 404:
        assert b"/shield" in answer.partition(b"\r\n\r\n")[2]

    assert link.client_inner.aborted == [f"WebSocket connection upgrade failed [{status}]: " + ("Not Found" if status == 404 else "Bad Request")]
    assert f"[{status}]" in ended(link.client_inner.lost)
    assert ended(link.server_inner.lost) == f"WebSocket upgrade refused: {status} {reason}"
    assert link.client_inner.received == [] and link.server_inner.received == []
    assert link.server_io.disconnected and link.client_io.disconnected
    assert not link.clock.getDelayedCalls()


def test_a_refused_upgrade_ends_the_client_end_once_through_ending() -> None:
    link = Link(path="/elsewhere")
    link.run()
    assert link.client._why == link.client_inner.aborted[0] == "WebSocket connection upgrade failed [404]: Not Found"
    link.client.ending("something later")
    assert link.client._why == "WebSocket connection upgrade failed [404]: Not Found", "the first reason stays"


# --- 3. a text message ---------------------------------------------------------------------------


def test_a_text_message_from_the_peer_ends_the_link() -> None:
    link = Link().upgraded()
    link.server.sendMessage(b"hello", isBinary=False)
    link.run()
    assert link.client_inner.aborted == [TEXT_REASON]
    assert ended(link.client_inner.lost) == TEXT_REASON
    assert link.client_inner.received == [], "the text's payload is not link data"


def test_a_text_message_ends_a_mux_link_with_that_reason_not_the_mux_s_parse_error() -> None:
    link = MuxLink().upgraded()
    link.server.sendMessage(b"not yamux at all", isBinary=False)  # 'n' would be an unknown yamux version
    link.run()
    mux = link.client_mux
    assert mux.lost_reason is not None
    assert why_link_ended(mux, mux.lost_reason) == TEXT_REASON


def test_a_frame_the_websocket_refuses_ends_the_link_as_a_websocket_protocol_error() -> None:
    link = Link().upgraded()
    link.server_io.write(b"\xf2\x01x")  # a binary frame with all three reserved bits set
    link.run()
    why = ended(link.client_inner.lost)
    assert why.startswith("WebSocket protocol error: ") and "RSV" in why, why
    assert link.client_inner.received == []
    assert ended(link.server_inner.lost).startswith("the peer closed the WebSocket (1002: RSV"), "and the DMZ hears why"


def test_a_refused_frame_is_the_reason_even_when_the_peer_never_answers_the_close() -> None:
    clock = MemoryReactorClock()
    client, transport = client_alone(clock)
    inner: Inner = client.inner  # type: ignore[assignment]
    transport.registerProducer(Protocol(), True)  # as the mux does (Autobahn unregisters it when it drops)
    client.dataReceived(answer_upgrade(client, transport) + b"\xf2\x01x")
    assert [opcode for opcode, _, _ in frames(transport.value())] == [OP_CLOSE]
    clock.advance(CLOSE_TIMEOUT + 1)  # the closing handshake's time runs out: Autobahn drops the connection
    assert transport.disconnecting
    client.connectionLost(Failure(error.ConnectionAborted()))
    assert ended(inner.lost) == "WebSocket protocol error: RSV = 7 and no extension negotiated"


# --- 4. how the peer ended the WebSocket ---------------------------------------------------------


def test_the_peer_closing_with_1001_ends_the_link_with_that_code_and_reason() -> None:
    link = Link().upgraded()
    link.server.sendCloseFrame(code=1001, reasonUtf8="going away for a restart".encode())  # sendClose allows only 1000, 3000-4999
    link.run()
    why = ended(link.client_inner.lost)
    assert why == "the peer closed the WebSocket (1001: going away for a restart)"
    assert link.client_inner.aborted == []
    assert link.server_inner.lost is not None and isinstance(link.server_inner.lost.value, error.ConnectionDone)


def test_a_close_code_without_a_reason_is_named_alone() -> None:
    link = Link().upgraded()
    link.server.sendClose(code=4000)
    link.run()
    assert ended(link.client_inner.lost) == "the peer closed the WebSocket (4000)"


def test_a_normal_close_gives_the_connection_s_own_reason() -> None:
    link = Link().upgraded()
    link.server.sendClose(code=1000, reason="bye")
    link.run()
    for inner in (link.client_inner, link.server_inner):
        assert inner.lost is not None and isinstance(inner.lost.value, error.ConnectionDone), inner.lost
    assert not link.clock.getDelayedCalls(), "no closing-handshake timer left behind"


def test_a_plain_connection_loss_gives_the_original_reason() -> None:
    link = Link().upgraded()
    gone = error.ConnectionLost("the network went away")
    link.client_io.disconnectReason = gone  # type: ignore[assignment]
    link.server_io.loseConnection()  # no close frame: TCP just ends
    link.run()
    assert link.client_inner.lost is not None and link.client_inner.lost.value is gone


def test_why_link_ended_says_what_the_websocket_said() -> None:
    link = MuxLink().upgraded()
    link.server.sendCloseFrame(code=1001, reasonUtf8=b"drain")
    link.run()
    mux = link.client_mux
    assert mux.lost_reason is not None and mux.ended_by is None
    assert why_link_ended(mux, mux.lost_reason) == "the peer closed the WebSocket (1001: drain)"

    assert why_link_ended(mux, Failure(WebSocketEnded("any text at all"))) == "any text at all"
    plain = why_link_ended(mux, Failure(error.ConnectionLost("gone")))
    assert "WebSocket" not in plain


# --- 5. the connector's upgrade timeout ----------------------------------------------------------


def client_alone(clock: MemoryReactorClock) -> tuple[LinkWebSocketClient, StringTransport]:
    """The connector's end on a socket whose other side never answers."""
    txaio.config.loop = clock
    factory = _LinkWebSocketClientFactory(Factory.forProtocol(Inner), "wss://dmz.example:8443/shield", NO_PINGS)
    client = factory.buildProtocol(DMZ)
    assert isinstance(client, LinkWebSocketClient)
    transport = StringTransport(hostAddress=CONNECTOR, peerAddress=DMZ)
    client.makeConnection(transport)
    return client, transport


def test_no_answer_to_the_upgrade_aborts_the_link_after_ten_seconds() -> None:
    clock = MemoryReactorClock()
    client, transport = client_alone(clock)
    inner: Inner = client.inner  # type: ignore[assignment]
    assert transport.value().startswith(b"GET /shield HTTP/1.1\r\n")
    clock.advance(UPGRADE_TIMEOUT - 0.1)
    assert inner.aborted == [] and not transport.disconnecting
    clock.advance(0.1)
    assert inner.aborted == ["no answer to the WebSocket upgrade within 10 s"]
    assert transport.disconnecting, "the mux's abort cuts the connection"
    client.connectionLost(Failure(error.ConnectionAborted()))
    assert ended(inner.lost) == "no answer to the WebSocket upgrade within 10 s"


def test_an_answered_upgrade_leaves_no_timeout_behind() -> None:
    link = Link().upgraded()
    link.clock.advance(UPGRADE_TIMEOUT * 3)
    assert link.client_inner.aborted == [] and link.client.state == LinkWebSocketClient.STATE_OPEN
    assert not link.clock.getDelayedCalls()


def test_the_dmz_end_keeps_no_upgrade_timer_of_its_own() -> None:
    """The link's announce deadline (the backplane's) covers TLS and the upgrade."""
    clock = MemoryReactorClock()
    txaio.config.loop = clock
    factory = LinkWebSocketServerFactory(Factory.forProtocol(Inner), Uri("wss", "dmz", 8443, "/shield"), NO_PINGS, print)
    server = factory.buildProtocol(CONNECTOR)
    assert server is not None
    server.makeConnection(StringTransport())
    assert not clock.getDelayedCalls()


def test_the_timeout_after_the_upgrade_does_nothing() -> None:
    link = Link().upgraded()
    link.client.onOpenHandshakeTimeout()
    assert link.client_inner.aborted == []


def answer_upgrade(client: LinkWebSocketClient, transport: StringTransport, protocol: str | None = SUBPROTOCOL) -> bytes:
    """A DMZ's 101 to the request ``client`` wrote to ``transport`` (which is cleared)."""
    request = transport.value().decode()
    transport.clear()
    (key,) = [line.split(":", 1)[1].strip() for line in request.split("\r\n") if line.lower().startswith("sec-websocket-key:")]
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Accept: {accept}"]
    if protocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_an_answer_that_does_not_select_the_subprotocol_ends_the_link_and_nothing_after_it_is_delivered() -> None:
    clock = MemoryReactorClock()
    client, transport = client_alone(clock)
    inner: Inner = client.inner  # type: ignore[assignment]
    client.dataReceived(answer_upgrade(client, transport, protocol=None) + b"\x82\x05hello")
    assert inner.aborted == [f"the DMZ's answer to the WebSocket upgrade did not select {SUBPROTOCOL}"]
    assert inner.received == []
    assert transport.disconnecting


class Producing(StringTransport):
    """A transport with the mux registered as its producer (Autobahn unregisters it when it drops)."""

    def __init__(self) -> None:
        super().__init__(hostAddress=CONNECTOR, peerAddress=DMZ)
        self.registerProducer(Protocol(), True)


def test_unanswered_websocket_pings_end_the_link() -> None:
    clock = MemoryReactorClock()
    txaio.config.loop = clock
    factory = _LinkWebSocketClientFactory(Factory.forProtocol(Inner), "wss://dmz.example:8443/shield", KeepaliveSettings(5, 3))
    client = factory.buildProtocol(DMZ)
    assert isinstance(client, LinkWebSocketClient)
    transport = Producing()
    client.makeConnection(transport)
    inner: Inner = client.inner  # type: ignore[assignment]
    client.dataReceived(answer_upgrade(client, transport))
    assert client.state == LinkWebSocketClient.STATE_OPEN

    clock.advance(5)
    assert [opcode for opcode, _, _ in frames(transport.value())] == [0x9], "a ping at the keepalive interval"
    clock.advance(5 * 4 - 0.5)  # the ping's answer may take (misses + 1) intervals
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting and inner.aborted == []
    client.connectionLost(Failure(error.ConnectionAborted()))
    assert ended(inner.lost) == "no answer to a WebSocket ping in time"


# --- 6. MessagePipe ------------------------------------------------------------------------------


class Below(StringTransport):
    """The TLS transport under a link, as far as MessagePipe reaches into it."""

    certificate = object()
    handle = object()

    def __init__(self) -> None:
        super().__init__(hostAddress=DMZ, peerAddress=CONNECTOR)
        self.no_delay: list[bool] = []
        self.bufferSize = 4096

    def getPeerCertificate(self) -> object:
        return self.certificate

    def getHandle(self) -> object:
        return self.handle

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay.append(enabled)


def piped(inner: Any = Inner) -> tuple[MessagePipe, Below, LinkWebSocketServer]:
    factory = LinkWebSocketServerFactory(Factory.forProtocol(inner), Uri("wss", "dmz", 8443, "/shield"), NO_PINGS, print)
    server = factory.buildProtocol(CONNECTOR)
    assert isinstance(server, LinkWebSocketServer)
    below = Below()
    server.makeConnection(below)
    pipe = server.inner.transport  # type: ignore[attr-defined]
    assert isinstance(pipe, MessagePipe)
    return pipe, below, server


def test_message_pipe_forwards_addresses_certificate_handle_and_producers() -> None:
    pipe, below, _ = piped()
    assert pipe.transport is below
    assert pipe.getPeer() == CONNECTOR and pipe.getHost() == DMZ
    assert pipe.getPeerCertificate() is Below.certificate
    assert pipe.getHandle() is Below.handle

    producer = Protocol()
    pipe.registerProducer(producer, True)
    assert below.producer is producer and below.streaming
    pipe.pauseProducing()
    assert below.producerState == "paused"
    pipe.resumeProducing()
    assert below.producerState == "producing"
    pipe.unregisterProducer()
    assert below.producer is None
    pipe.stopProducing()
    assert below.producerState == "stopped"

    assert not pipe.disconnecting
    pipe.abortConnection()
    assert below.disconnected and below.disconnecting and pipe.disconnecting


def test_shield_net_and_tls_look_through_the_pipe() -> None:
    pipe, below, _ = piped()
    below.no_delay.clear()  # (Autobahn sets it too, on the transport it is given)
    set_no_delay(pipe)  # type: ignore[arg-type]
    assert below.no_delay == [True] and below.bufferSize == READ_SIZE

    assert not contexts.refusal_logged(pipe)
    contexts._refused.add(below)
    try:
        assert contexts.refusal_logged(pipe)
    finally:
        contexts._refused.discard(below)


def test_lose_connection_on_an_open_link_sends_a_normal_close_not_a_cut() -> None:
    link = Link().upgraded()
    before = len(after_http(bytes(link.client_io.sent)))
    link.client_inner.pipe.loseConnection()
    closing = frames(after_http(bytes(link.client_io.sent))[before:])
    assert closing == [(OP_CLOSE, False, struct.pack("!H", 1000) + b"link closed")]
    assert not link.client_io.disconnecting, "TCP is not cut: the closing handshake is"
    link.client_inner.pipe.write(b"too late")  # closing: dropped
    link.run()
    assert link.server_inner.received == []
    for inner in (link.client_inner, link.server_inner):
        assert inner.lost is not None and isinstance(inner.lost.value, error.ConnectionDone), inner.lost
    assert not link.clock.getDelayedCalls()


def test_lose_connection_before_the_upgrade_closes_the_connection() -> None:
    link = Link()
    link.client_inner.pipe.loseConnection()
    assert link.client_io.disconnecting
    link.run()
    assert link.client_inner.lost is not None and not isinstance(link.client_inner.lost.value, WebSocketEnded)
    assert link.server_inner.received == []


class Listening(Inner):
    """An inner protocol that hears of TLS's handshake and read batches, as the mux does."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def handshakeCompleted(self) -> None:
        self.events.append("handshake")

    def begin_batch(self) -> None:
        self.events.append("begin")

    def end_batch(self) -> None:
        self.events.append("end")


def test_tls_handshake_and_read_batches_reach_the_protocol_above() -> None:
    _, _, server = piped(Listening)
    inner: Listening = server.inner  # type: ignore[assignment]
    server.handshakeCompleted()
    server.begin_batch()
    server.end_batch()
    assert inner.events == ["handshake", "begin", "end"]
    _, _, plain = piped(Inner)  # a protocol without them is fine too
    plain.handshakeCompleted()
    plain.begin_batch()
    plain.end_batch()


def test_a_link_factory_that_refuses_refuses_the_connection() -> None:
    refusing = Factory()
    refusing.buildProtocol = lambda addr: None  # type: ignore[method-assign]
    factory = LinkWebSocketServerFactory(refusing, Uri("wss", "dmz", 8443, "/shield"), NO_PINGS, print)
    assert factory.buildProtocol(CONNECTOR) is None


class Dialled:
    """A TLS endpoint that connects at once, to an in-memory transport."""

    def __init__(self) -> None:
        self.transport = StringTransport(hostAddress=CONNECTOR, peerAddress=DMZ)

    def connect(self, factory: Any) -> Any:
        protocol = factory.buildProtocol(DMZ)
        protocol.makeConnection(self.transport)
        return succeed(protocol)


def test_the_endpoint_dials_the_upgrade_and_gives_the_dialler_its_own_protocol() -> None:
    txaio.config.loop = MemoryReactorClock()
    tls = Dialled()
    endpoint = LinkWebSocketEndpoint(tls, Uri("wss", "dmz.example", 8443, "/backplane"), NO_PINGS)  # type: ignore[arg-type]
    connected: list[object] = []
    endpoint.connect(Factory.forProtocol(Inner)).addCallback(connected.append)
    (inner,) = connected
    assert isinstance(inner, Inner) and isinstance(inner.transport, MessagePipe)
    request = tls.transport.value().decode()
    assert request.startswith("GET /backplane HTTP/1.1\r\n")
    assert "Host: dmz.example:8443\r\n" in request and f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n" in request
    assert "User-Agent: shield-link\r\n" in request

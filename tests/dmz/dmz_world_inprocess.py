"""A DMZ gateway's runtime in memory, shared by the ``test_*_inprocess.py`` files of tests/dmz.

No sockets, no subprocesses, one fake clock:

- A connector is the real ``ConnectorLinkEnd`` (shield/internal/link.py) with a fake pool
  slot; its backend dialer hands out in-memory backends (``Pipe``) or refuses, or holds the dial.
- The DMZ side of each link is the real ``DmzLinkEnd`` built by ``BackplaneFactory``; the two
  are joined by ``twisted.test.iosim``. TLS is left out: the DMZ's transport answers
  ``getPeerCertificate`` with a certificate naming the connector (what the TLS layer would give),
  and the test calls ``handshakeCompleted`` on both sides as the TLS layer would.
- ``Pipe`` stands for a socket (a public client or a backend): a StringTransport with a bounded
  send buffer that pauses its registered producer when full, half-close, and a loss the world
  delivers on the next turn, as a reactor would.
- ``Front`` is one public service on such a world: a real ``ServiceFront`` and ``ClientGate`` with
  the real raw TCP and WebSocket protocols; ``WsClient`` speaks WebSocket on a ``Pipe``.
"""

from __future__ import annotations

import datetime
import functools
from pathlib import Path
from typing import Any, Iterator, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import error
from twisted.internet.error import CannotListenError
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim

from shield.config.model import (
    ClientLimits,
    DmzBackplane,
    DmzConfig,
    DmzService,
    InternalService,
    KeepaliveSettings,
    Uri,
)
from shield.dmz.admission import ClientGate
from shield.dmz.backplane import BackplaneFactory, DmzLinkEnd
from shield.dmz.frontplane_tcp import PublicTcpFactory
from shield.dmz.frontplane_ws import websocket_factory
from shield.dmz.service import ServiceFront
from shield.dmz.links import ConnectorLink, LinkRegistry
from shield.dmz.tunnel import OpenFailed, TunnelOpener, TunnelStream
from shield import __version__
from shield.internal.backend import BackendConnection, BackendDialer, BackendStreamFactory
from shield.link.wire import Announce, OpenRequest
from shield.proxy_protocol.header import ProxyHeader
from shield.internal.link import ConnectorLinkEnd
from shield.mux.config import MuxConfig
from shield.ops.metrics import Metrics
from shield.tls.transport import LinkTLSFactory

DMZ_NAME = "dmz1"
DMZ_ADDRESS = IPv4Address("TCP", "192.0.2.1", 5941)
HOST_A = "198.51.100.7"
HOST_B = "203.0.113.9"


# --- certificates: what the TLS layer would hand the DMZ ---------------------------------------


@functools.lru_cache(maxsize=None)
def certificate(identity: str) -> x509.Certificate:
    """A self-signed certificate whose subject CN is ``identity`` (the DMZ reads only that)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


class TcpTransport(iosim.FakeTransport):
    """iosim's transport with TCP's close: what was written before or just after ``loseConnection``
    (in the same turn, as the mux's end-of-turn flush does) still goes out, then the FIN; an abort
    drops what is unsent. (iosim's own transport drops every write after ``loseConnection``.)"""

    aborted = False

    def write(self, data: bytes) -> None:
        if self.disconnected or self.aborted:
            return
        self.stream.append(data)

    def abortConnection(self) -> None:
        self.aborted = True
        self.stream = []
        self.disconnecting = True


class CertifiedTransport(TcpTransport):
    """An in-memory transport whose peer presented a certificate naming ``identity`` (or none)."""

    def __init__(self, protocol: IProtocol, is_server: bool, identity: str | None, host: Any = None, peer: Any = None) -> None:
        super().__init__(protocol, is_server, host, peer)
        self.identity = identity

    def getPeerCertificate(self) -> x509.Certificate | None:
        return certificate(self.identity) if self.identity is not None else None


# --- sockets in memory -------------------------------------------------------------------------


class Pipe(StringTransport):
    """A socket in memory: what is written waits in a send buffer of ``limit`` bytes.

    Like a Twisted socket transport, it pauses its registered streaming producer when the buffer
    is full and resumes it once ``read`` has emptied the buffer. ``producerState`` says whether
    the reactor would read from this socket (``feed`` refuses to deliver while it is paused).
    ``loseConnection`` and ``abortConnection`` end the connection on the next ``settle``.
    """

    def __init__(self, peer: IPv4Address | None = None, limit: int | None = None) -> None:
        super().__init__(peerAddress=peer, lenient=True)
        self.protocol: IProtocol | None = None
        self.limit = limit
        self.sent = bytearray()  # everything written, for the test to read
        self._unread = 0  # of which still in the send buffer
        self._paused_producer = False
        self.write_closed = False
        self.aborted = False
        self.lost = False
        self.writes_after_end = 0  # bytes written after its EOF or its end: no peer would get them

    def connect(self, protocol: IProtocol) -> IProtocol:
        self.protocol = protocol
        protocol.makeConnection(self)
        return protocol

    # ITransport
    def write(self, data: bytes) -> None:
        if self.write_closed or self.lost:
            self.writes_after_end += len(data)
        if self.disconnecting or self.write_closed:
            return
        super().write(data)
        self.sent += data
        self._unread += len(data)
        if (
            self.limit is not None and self._unread >= self.limit and self.producer is not None
            and self.streaming and not self._paused_producer
        ):  # fmt: skip
            self._paused_producer = True
            self.producer.pauseProducing()

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnecting = True

    def unregisterProducer(self) -> None:
        # Twisted's socket transports allow this twice (the relay and TLS may both let go).
        self.producer = None
        self.streaming = None
        self._paused_producer = False

    def pauseProducing(self) -> None:
        if self.producerState != "stopped":
            self.producerState = "paused"

    def resumeProducing(self) -> None:
        if self.producerState != "stopped":
            self.producerState = "producing"

    # for the test
    def read(self) -> bytes:
        """Take what the peer has not read yet; an emptied buffer resumes the producer."""
        data = bytes(self.sent[len(self.sent) - self._unread :])
        self._unread = 0
        if self._paused_producer and self.producer is not None:
            self._paused_producer = False
            self.producer.resumeProducing()
        return data

    @property
    def unread(self) -> int:
        return self._unread

    def feed(self, data: bytes) -> None:
        """Bytes arrive from the remote end (the reactor reads them only while not paused)."""
        assert self.producerState == "producing", f"{self!r} is paused: the reactor would not read it"
        assert self.protocol is not None
        self.protocol.dataReceived(data)

    def feed_eof(self) -> None:
        assert self.protocol is not None
        half = getattr(self.protocol, "readConnectionLost", None)
        assert half is not None, "the protocol cannot half-close"
        half()

    def settle(self) -> bool:
        """Deliver the end of a connection the protocol asked to end; True if one was delivered."""
        if self.disconnecting and not self.lost and self.protocol is not None:
            self.lost = True
            self.connected = False
            reason = error.ConnectionAborted() if self.aborted else error.ConnectionDone()
            self.protocol.connectionLost(Failure(reason))
            return True
        return False

    def drop(self, clean: bool = True) -> None:
        """The remote end went away (FIN and close, or a reset)."""
        self.aborted = not clean
        self.disconnecting = True


# --- a connector: the real link protocol, a fake pool slot and backends ------------------------


class Dialer(BackendDialer):
    """The connector's backend dialer, in memory. ``mode``: "connect", "refuse" or "hold"."""

    def __init__(self, services: tuple[str, ...], clock: MemoryReactorClock, mode: str = "connect") -> None:
        super().__init__(
            tuple(InternalService(name=name, connect=Uri("tcp", "10.0.0.5", 7000)) for name in services),
            Metrics(),
            cast(Any, clock),
        )
        self.mode = mode
        self.dials: list[str] = []
        self.held: list[Deferred[BackendConnection]] = []
        self.backends: list[Pipe] = []
        self.backend_limit: int | None = None
        self.opens: list[OpenRequest] = []  # each OPEN that named a known service, in order

    def proxy_header(self, service: InternalService, request: OpenRequest) -> ProxyHeader | None:
        self.opens.append(request)
        return super().proxy_header(service, request)

    def dial(self, service: InternalService, header: ProxyHeader | None = None) -> Deferred[BackendConnection]:
        self.dials.append(service.name)
        if self.mode == "refuse":
            return fail(error.ConnectionRefusedError("connection refused"))
        if self.mode == "hold":
            held: Deferred[BackendConnection] = Deferred()
            self.held.append(held)
            return held
        return succeed(self.connect_backend())

    def connect_backend(self) -> BackendConnection:
        pipe = Pipe(IPv4Address("TCP", "10.0.0.5", 7000), limit=self.backend_limit)
        backend = BackendConnection()
        pipe.connect(backend)
        self.backends.append(pipe)
        return backend


class Connector:
    """A connector's pool slot as its links see it (``LinkHost``, shield/internal/link.py)."""

    def __init__(
        self, name: str, offers: tuple[str, ...], clock: MemoryReactorClock, priority: int = 100,
        serves: tuple[str, ...] | None = None, mode: str = "connect", max_pending_opens: int = 256,
    ) -> None:  # fmt: skip
        self.name = name
        self.offers = offers  # what its health checks report up (what it announces)
        self.dialer = Dialer(offers if serves is None else serves, clock, mode)
        self.clock = clock
        self.endpoint = f"{DMZ_ADDRESS.host}:{DMZ_ADDRESS.port}"
        self.priority = priority
        self.max_pending_opens = max_pending_opens
        self.up: list[ConnectorLinkEnd] = []
        self.lost: list[str] = []

    def announcement(self) -> Announce:
        return Announce(name=self.name, priority=self.priority, version=__version__, services=self.offers)

    def new_link(self) -> ConnectorLinkEnd:
        """A link as the connector's pool makes one (shield/internal/pool.py ``LinkSlot.new_link``)."""
        streams = BackendStreamFactory(
            self.dialer, lambda: self.endpoint, max_pending_opens=self.max_pending_opens, clock=self.clock
        )
        return ConnectorLinkEnd(self, MuxConfig(keepalive_interval=0), streams, self.clock)

    def link_up(self, link: ConnectorLinkEnd) -> None:
        self.up.append(link)

    def link_lost(self, link: ConnectorLinkEnd, uptime: float, reason: str) -> None:
        self.lost.append(reason)


# --- the DMZ -----------------------------------------------------------------------------------


def dmz_config(
    connectors: dict[str, tuple[str, ...]],
    services: tuple[str, ...] = ("echo",),
    limits: ClientLimits = ClientLimits(),
    open_timeout: float = 10.0,
    keepalive: float = 0.0,
) -> DmzConfig:
    return DmzConfig(
        name=DMZ_NAME,
        backplane=DmzBackplane(
            accept=Uri("tls", DMZ_ADDRESS.host, DMZ_ADDRESS.port),
            cert=Path("/nonexistent/dmz.pem"),
            ca=Path("/nonexistent/ca.pem"),
            connectors=connectors,
            keepalive=KeepaliveSettings(interval=keepalive),
        ),
        services=tuple(
            DmzService(name=name, accept=(Uri("tcp", "0.0.0.0", 9000 + i),), open_timeout=open_timeout, limits=limits)
            for i, name in enumerate(services)
        ),
    )


class Link:
    """One backplane link: the DMZ's end, the connector's, and the pump between them."""

    def __init__(self, dmz: DmzLinkEnd, connector: ConnectorLinkEnd, pump: iosim.IOPump) -> None:
        self.dmz = dmz
        self.connector = connector
        self.pump = pump

    @property
    def registered(self) -> ConnectorLink | None:
        return self.dmz.link

    @property
    def live(self) -> bool:
        return not self.pump.serverIO.disconnecting

    def drop(self) -> None:
        """The connection under the link is reset (both ends see it on the next pump)."""
        self.pump.serverIO.abortConnection()

    @property
    def pending_opens(self) -> int:
        """Streams the connector holds a pending-open place for (``OpenLimits.pending``)."""
        return self.connector.backend_streams.limits.pending


class World:
    """A DMZ's backplane, registry and tunnel opener, and the connectors linked to it."""

    def __init__(self, config: DmzConfig) -> None:
        self.clock = MemoryReactorClock()
        self.config = config
        self.registry = LinkRegistry()
        self.backplane = BackplaneFactory(config, self.registry, self.clock)
        self.opener = TunnelOpener(
            self.registry, self.clock, None,
            lambda service: [c for c, offered in config.backplane.connectors.items() if service in offered],
        )  # fmt: skip
        self.links: list[Link] = []
        self.pipes: list[Pipe] = []
        self._port = 40000

    def connector(self, name: str, offers: tuple[str, ...] = ("echo",), **kwargs: Any) -> Connector:
        return Connector(name, offers, self.clock, **kwargs)

    def link(self, connector: Connector, identity: str | None = "", handshake: bool = True, announce: bool = True) -> Link:
        """Dial a link from ``connector``; its certificate names ``identity`` (default: its name)."""
        self._port += 1
        peer = IPv4Address("TCP", "198.18.0.2", self._port)
        dmz_mux = self.backplane.buildProtocol(peer)
        dmz = dmz_mux.owner
        assert isinstance(dmz, DmzLinkEnd)
        ours = connector.new_link()
        pump = iosim.connect(
            dmz_mux, CertifiedTransport(dmz_mux, True, connector.name if identity == "" else identity, DMZ_ADDRESS, peer),
            ours.mux, TcpTransport(ours.mux, False, peer, DMZ_ADDRESS),
            greet=False, clock=self.clock,
        )  # fmt: skip
        link = Link(dmz, ours, pump)
        self.links.append(link)
        if handshake:
            dmz_mux.handshakeCompleted()  # what the TLS layer calls once the handshake is done
            if announce:
                ours.mux.handshakeCompleted()
        self.run()
        return link

    def link_tls(self, connector: Connector, server_tls: Any, client_tls: Any) -> Link:
        """Dial a link from ``connector`` through the real TLS layer (``LinkTLSFactory``) on both
        sides: the handshake, the certificate identity and ``handshakeCompleted`` are TLS's own."""
        self._port += 1
        peer = IPv4Address("TCP", "198.18.0.2", self._port)
        server = LinkTLSFactory(server_tls, False, self.backplane, clock=self.clock)
        client = LinkTLSFactory(
            client_tls, True,
            Factory.forProtocol(lambda: connector.new_link().mux),
            clock=self.clock,
        )  # fmt: skip
        dmz_tls, connector_tls = server.buildProtocol(peer), client.buildProtocol(DMZ_ADDRESS)
        pump = iosim.connect(
            dmz_tls, TcpTransport(dmz_tls, True, DMZ_ADDRESS, peer),
            connector_tls, TcpTransport(connector_tls, False, peer, DMZ_ADDRESS),
            greet=False, clock=self.clock,
        )  # fmt: skip
        dmz, ours = dmz_tls.wrappedProtocol.owner, connector_tls.wrappedProtocol.owner
        assert isinstance(dmz, DmzLinkEnd) and isinstance(ours, ConnectorLinkEnd)
        link = Link(dmz, ours, pump)
        self.links.append(link)
        self.run()
        return link

    def client(self, host: str = "198.51.100.7", port: int = 50000, limit: int | None = None) -> Pipe:
        pipe = Pipe(IPv4Address("TCP", host, port), limit)
        self.pipes.append(pipe)
        return pipe

    def run(self) -> None:
        """Move bytes and fire what is due now until nothing moves any more."""
        quiet = 0
        for _ in range(10_000):
            moved = False
            for link in self.links:
                moved |= link.pump.pump()
            self.clock.advance(0)
            for pipe in self.pipes + [p for c in self._dialers() for p in c.backends]:
                moved |= pipe.settle()
            quiet = 0 if moved else quiet + 1
            if quiet >= 2:
                return
        raise AssertionError("the world never went quiet")

    def _dialers(self) -> Iterator[Dialer]:
        seen: set[int] = set()
        for link in self.links:
            dialer = link.connector.backend_streams.dialer
            if id(dialer) not in seen:
                seen.add(id(dialer))
                yield dialer

    def advance(self, seconds: float, step: float | None = None) -> None:
        """Let ``seconds`` pass (in steps of ``step``), moving bytes after each."""
        step = seconds if step is None else step
        left = seconds
        while left > 1e-9:
            now = min(step, left)
            self.clock.advance(now)
            left -= now
            self.run()

    def open(self, service: str = "echo", client: str = "198.51.100.7:4000", timeout: float = 10.0) -> TunnelStream | OpenFailed:
        """Open a tunnel and run until it is answered (or the deadline has passed)."""
        outcome: list[object] = []
        self.opener.open(service, client, (("transport", "tcp"),), timeout).addBoth(outcome.append)
        self.run()
        if not outcome:
            self.advance(timeout)
        assert outcome, "the opening was never answered"
        (result,) = outcome
        if isinstance(result, Failure):
            assert isinstance(result.value, OpenFailed), result
            return result.value
        assert isinstance(result, TunnelStream)
        return result


class RecordingReactor(MemoryReactorClock):
    """A memory reactor that records each port that listens or stops (``events``), and refuses
    to listen on the ports in ``refuse`` as a port already in use would."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.refuse: set[int] = set()

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port in self.refuse:
            raise CannotListenError(interface, port, OSError("Address already in use"))
        listening = super().listenTCP(port, factory, backlog, interface)
        self.events.append(f"listen {port}")
        listening.stopListening = lambda: self.events.append(f"stop {port}")
        return listening


class LogLines:
    """Formatted log lines of shield's loggers (the namespaces given, or all of shield)."""

    def __init__(self, *namespaces: str) -> None:
        self.namespaces = namespaces or ("shield",)
        self.lines: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        namespace = str(event.get("log_namespace", ""))
        if any(namespace.startswith(prefix) for prefix in self.namespaces):
            self.lines.append(formatEvent(event))

    def having(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


def capture_log() -> Iterator[LogLines]:
    """For a fixture: ``yield from capture_log()``."""
    lines = LogLines()
    globalLogPublisher.addObserver(cast(Any, lines))
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(cast(Any, lines))


# --- a public service ----------------------------------------------------------------------------


class Front:
    """One ``[[dmz.service]]`` named echo on a world with one connector (``mode`` of its dials)."""

    def __init__(
        self, limits: ClientLimits = ClientLimits(), gateway: ClientLimits = ClientLimits(), mode: str = "connect",
        linked: bool = True, connectors: tuple[str, ...] = ("internal1",), open_timeout: float = 10.0,
    ) -> None:  # fmt: skip
        self.world = World(dmz_config({name: ("echo",) for name in connectors}, limits=limits, open_timeout=open_timeout))
        self.metrics = Metrics()
        self.gate = ClientGate(gateway, self.metrics, self.world.clock)
        self.front = ServiceFront(self.world.config.services[0], self.world.opener, self.metrics, self.gate, self.world.clock)
        self.connector: Connector = self.world.connector("internal1", mode=mode)
        if linked:
            self.world.link(self.connector)
        self.factory = PublicTcpFactory(self.front, "tcp")
        self.ws_factory = websocket_factory(self.front, "ws://0.0.0.0:9000/echo")
        self._ports = iter(range(50000, 60000))

    def connect(self, host: str = HOST_A, kind: str = "tcp", limit: int | None = None) -> Pipe:
        """A client connects to the service's port: what the listening port would do."""
        address = IPv4Address("TCP", host, next(self._ports))
        self.factory.kind = kind
        pipe = self.world.client(host, address.port, limit)
        pipe.connect(self.factory.buildProtocol(address))
        self.world.run()
        return pipe

    def connect_ws(self, host: str = HOST_A, limit: int | None = None, run: bool = True) -> WsClient:
        """A WebSocket client connects to the service's port (it has sent nothing yet); ``run``:
        let the world move on before returning."""
        address = IPv4Address("TCP", host, next(self._ports))
        pipe = self.world.client(host, address.port, limit)
        pipe.connect(self.ws_factory.buildProtocol(address))
        if run:
            self.world.run()
        return WsClient(pipe)

    @property
    def backends(self) -> list[Pipe]:
        return self.connector.dialer.backends

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def refusals(self, limit: str, service: str = "echo") -> float:
        return self.sample("shield_refusals_total", service=service, limit=limit)


# --- a WebSocket client in memory ----------------------------------------------------------------

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One final WebSocket frame as a client sends it (masked)."""
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 1 << 16:
        length = bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + n.to_bytes(8, "big")
    mask = b"\x5a\x17\xc3\x08"
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def upgrade_request(path: str = "/echo", headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1", "Host: echo.test", "Upgrade: websocket", "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers),
    ]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class WsClient:
    """A WebSocket client on an in-memory socket, reading exactly what the server sent.

    It parses the server's bytes itself (one HTTP response, then unmasked frames), so a test sees
    everything: a second response, bytes after an error response, frames after a close frame.
    What it sends waits while the server does not read its socket (a paused ``Pipe``).
    """

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.status: int | None = None  # of the server's HTTP response
        self.body = b""  # of an error response
        self.messages: list[bytes] = []  # payloads of data frames, in order
        self.close_code: int | None = None  # of the server's close frame
        self.after_end = b""  # bytes that came after the response of a refusal or a close frame
        self.http_responses = 0
        self._buffer = b""
        self._outbox: list[bytes] = []
        self._eof_queued = False

    @property
    def upgraded(self) -> bool:
        return self.status == 101

    @property
    def ended(self) -> bool:
        """The server said its last word: an error response, or a close frame."""
        return (self.status is not None and self.status != 101) or self.close_code is not None

    def send(self, data: bytes) -> None:
        self._outbox.append(data)
        self.flush()

    def send_message(self, payload: bytes) -> None:
        self.send(client_frame(OP_BINARY, payload))

    def send_close(self, code: int = 1000) -> None:
        self.send(client_frame(OP_CLOSE, code.to_bytes(2, "big")))

    def send_eof(self) -> None:
        self._eof_queued = True
        self.flush()

    @property
    def can_send(self) -> bool:
        """The socket is open and its server still reads it (a socket being closed is not read)."""
        return not self.pipe.disconnecting and not self.pipe.lost

    def flush(self) -> None:
        while self._outbox and self.can_send and self.pipe.producerState == "producing":
            self.pipe.feed(self._outbox.pop(0))
        if self._eof_queued and not self._outbox and self.can_send and self.pipe.producerState == "producing":
            self._eof_queued = False
            self.pipe.feed_eof()

    def read(self) -> None:
        """Take what the server sent since the last read."""
        data = self.pipe.read()
        if self.ended:
            self.after_end += data
            return
        self._buffer += data
        if self.status is None:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head, self._buffer = self._buffer[:head_end], self._buffer[head_end + 4 :]
            self.http_responses += 1
            self.status = int(head.split(b" ", 2)[1])
            if self.status != 101:
                length = next(
                    (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                self.body, self.after_end = self._buffer[:length], self._buffer[length:]
                self._buffer = b""
                return
        while not self.ended:
            frame = _server_frame(self._buffer)
            if frame is None:
                return
            opcode, payload, self._buffer = frame
            if opcode == OP_CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.after_end, self._buffer = self._buffer, b""
            elif opcode in (OP_TEXT, OP_BINARY):
                self.messages.append(payload)


def _server_frame(data: bytes) -> tuple[int, bytes, bytes] | None:
    """The first (unmasked, final) frame in ``data`` and what follows, or None if incomplete."""
    if len(data) < 2:
        return None
    opcode, n, at = data[0] & 0x0F, data[1] & 0x7F, 2
    assert data[0] & 0x80 and not data[1] & 0x80, "the server sends final, unmasked frames"
    if n == 126:
        if len(data) < 4:
            return None
        n, at = int.from_bytes(data[2:4], "big"), 4
    elif n == 127:
        if len(data) < 10:
            return None
        n, at = int.from_bytes(data[2:10], "big"), 10
    if len(data) < at + n:
        return None
    return opcode, data[at : at + n], data[at + n :]

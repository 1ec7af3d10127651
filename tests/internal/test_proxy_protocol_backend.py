"""The connector's PROXY protocol header toward its backend (``proxy-protocol``), on real sockets
on 127.0.0.1 and a unix socket: the header is the connection's first bytes (before TLS for a
tls:// backend), it carries the client's two ends from OPEN, an OPEN without them gives v1
UNKNOWN / v2 LOCAL and one log line per service, and health checks send a header of their own."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol

from shield.config.model import InternalService, ProxyProtocolVersion, Uri
from shield.internal.backend import BackendDialer
from shield.internal.dialing import OWN_CONNECTION
from shield.internal.health import BackendMonitor
from shield.link.client_ends import ends_metadata
from shield.link.wire import OpenRequest
from shield.ops.metrics import Metrics
from shield.proxy_protocol.build import V1_UNKNOWN, V2_LOCAL, build_v2
from shield.proxy_protocol.header import Endpoint, ProxyHeader
from tests.dmz.dmz_world_inprocess import LogLines, capture_log
from tests.internal.test_health import wait

HEADER = ProxyHeader(Endpoint.of("203.0.113.9", 5555), Endpoint.of("192.0.2.80", 443))


class Recording(Protocol):
    def __init__(self, received: list[bytes]) -> None:
        self.received = received

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


@pytest.fixture
def log() -> Iterator[LogLines]:
    yield from capture_log()


def listen(received: list[bytes], unix: Path | None = None) -> Any:
    factory = Factory.forProtocol(lambda: Recording(received))
    if unix is not None:
        return reactor.listenUNIX(str(unix), factory)  # type: ignore[attr-defined]
    return reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]


def service(connect: Uri, version: str | None, **more: Any) -> InternalService:
    proxy = None if version is None else ProxyProtocolVersion(version)
    return replace(InternalService("app", connect, connect_timeout=2.0, proxy_protocol=proxy), **more)


@pytest_twisted.inlineCallbacks
def test_the_header_is_the_first_bytes_then_the_payload() -> None:
    received: list[bytes] = []
    port = listen(received)
    try:
        app = service(Uri("tcp", "127.0.0.1", port.getHost().port), "v1")
        dialer = BackendDialer((app,), Metrics(), reactor)  # type: ignore[arg-type]
        request = OpenRequest("app", "203.0.113.9:5555", ends_metadata(HEADER.source, HEADER.destination))
        backend = yield dialer.dial(app, dialer.proxy_header(app, request))
        backend.transport.write(b"GET / HTTP/1.0\r\n\r\n")
        yield wait(lambda: b"".join(received).endswith(b"\r\n\r\n"))
        assert b"".join(received) == b"PROXY TCP4 203.0.113.9 192.0.2.80 5555 443\r\nGET / HTTP/1.0\r\n\r\n"
        backend.transport.loseConnection()
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_v2_over_a_unix_socket(tmp_path: Path) -> None:
    received: list[bytes] = []
    port = listen(received, tmp_path / "app.sock")
    try:
        app = service(Uri("unix", path=str(tmp_path / "app.sock")), "v2")
        dialer = BackendDialer((app,), Metrics(), reactor)  # type: ignore[arg-type]
        backend = yield dialer.dial(app, HEADER)
        backend.transport.write(b"x")
        yield wait(lambda: b"".join(received).endswith(b"x"))
        assert b"".join(received) == build_v2(HEADER) + b"x"
        backend.transport.loseConnection()
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_tls_backend_gets_the_header_in_clear_before_the_handshake() -> None:
    received: list[bytes] = []
    port = listen(received)
    try:
        app = service(Uri("tls", "127.0.0.1", port.getHost().port), "v2")
        dialer = BackendDialer((app,), Metrics(), reactor)  # type: ignore[arg-type]
        dialing = dialer.dial(app, HEADER)
        dialing.addErrback(lambda _: None)  # the recording server never answers the handshake
        header = build_v2(HEADER)
        yield wait(lambda: len(b"".join(received)) > len(header))
        data = b"".join(received)
        assert data.startswith(header)
        assert data[len(header)] == 0x16  # then a TLS record: the ClientHello
        dialing.cancel()
    finally:
        yield port.stopListening()


def test_an_open_without_the_ends_gets_an_empty_header_and_one_line(log: LogLines) -> None:
    app = service(Uri("tcp", "127.0.0.1", 1), "v2")
    plain = service(Uri("tcp", "127.0.0.1", 2), None, name="plain")
    dialer = BackendDialer((app, plain), Metrics(), reactor)  # type: ignore[arg-type]
    old = OpenRequest("app", "203.0.113.9:5555", (("transport", "tcp"),))
    assert dialer.proxy_header(app, old) is OWN_CONNECTION
    assert dialer.proxy_header(app, old) is OWN_CONNECTION
    (line,) = log.having("PROXY v2 header without addresses")
    assert "'app'" in line and "no client-ip" in line
    assert dialer.proxy_header(plain, old) is None


@pytest.mark.parametrize("version, expected", [("v1", V1_UNKNOWN), ("v2", V2_LOCAL)])
@pytest_twisted.inlineCallbacks
def test_a_connect_health_check_sends_a_header_of_its_own(version: str, expected: bytes) -> None:
    received: list[bytes] = []
    port = listen(received)
    try:
        app = service(Uri("tcp", "127.0.0.1", port.getHost().port), version)
        monitor = BackendMonitor(app, reactor, lambda service, transition: None)  # type: ignore[arg-type]
        yield monitor._check()
        yield wait(lambda: b"".join(received) == expected)
        assert monitor.counter.failures == 0
    finally:
        yield port.stopListening()
    yield defer.succeed(None)

"""``ConnectProxyEndpoint`` in process, on a ``MemoryReactorClock``: the test plays the proxy on
the connection the endpoint dials, and checks what the connector sends, what it hands to the
protocol above and the one reason each failure gives. Last, a real mutual-TLS handshake through an
in-memory proxy, and a pool slot backing off after a refusal."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Iterator

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim

from shield.config.model import ProxyAuth, Uri
from shield.handover import Handover
from shield.internal.pool import LinkSlot
from shield.proxy.connect import ProxyError, ProxyRefusedError
from shield.proxy.endpoint import ConnectProxyEndpoint, ProxyRoute
from shield.tls.contexts import backplane_client_options, backplane_server_context
from shield.tls.devcerts import generate_dev_certs
from shield.tls.transport import LinkTLSEndpoint, LinkTLSFactory

PROXY = ProxyRoute(Uri("http", "10.0.0.5", 3128))
SECRET = "pa:ss-w0rd"
WITH_AUTH = ProxyRoute(Uri("http", "10.0.0.5", 3128), ProxyAuth(Path("/run/secrets/proxy"), "connector", SECRET))
REQUEST = b"CONNECT dmz.example:5941 HTTP/1.1\r\nHost: dmz.example:5941\r\n\r\n"


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


class Dial:
    """One dial through the endpoint; the test is the proxy at the other end of ``transport``."""

    def __init__(self, route: ProxyRoute = PROXY) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoint = ConnectProxyEndpoint(self.reactor, lambda: route, "dmz.example", 5941)
        self.result: Deferred[IProtocol] = self.endpoint.connect(Factory.forProtocol(Recorder))
        self.outcome: list[Any] = []
        self.result.addBoth(self.outcome.append)

    def accept(self) -> None:
        """The proxy accepts the TCP connection."""
        host, port, factory, timeout, _ = self.reactor.tcpClients[-1]
        assert (host, port, timeout) == ("10.0.0.5", 3128, 10.0)
        self.proxy_side = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.transport = StringTransport()
        self.proxy_side.makeConnection(self.transport)

    def answer(self, data: bytes) -> None:
        self.proxy_side.dataReceived(data)

    def failure(self) -> str:
        assert len(self.outcome) == 1 and isinstance(self.outcome[0], Failure), self.outcome
        error = self.outcome[0]
        assert isinstance(error.value, ProxyError), error
        return str(error.value)


def test_the_tunnel_is_handed_over_with_the_bytes_that_followed_the_answer() -> None:
    dial = Dial()
    dial.accept()
    assert dial.transport.value() == REQUEST  # the target, nothing else; no credentials configured
    assert dial.outcome == []
    dial.answer(b"HTTP/1.1 200 Connection established\r\nVia: 1.1 proxy\r\n\r\n\x16\x03")
    [protocol] = dial.outcome
    assert isinstance(protocol, Recorder) and protocol.made
    assert protocol.transport is dial.transport  # the very connection: TLS runs on it end to end
    assert protocol.received == [b"\x16\x03"]
    dial.answer(b"more")
    assert protocol.received == [b"\x16\x03", b"more"]
    assert dial.reactor.getDelayedCalls() == []  # the deadline is gone
    assert not dial.transport.disconnecting


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\n\r\n",
         "407 Proxy Authentication Required (no proxy-auth-file is configured)"),
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", "403 Forbidden"),
        (b"HTTP/1.0 401 Unauthorized\r\n\r\n", "401 Unauthorized (no proxy-auth-file is configured)"),  # tinyproxy
        (b"HTTP/1.0 502 Bad Gateway\r\n\r\n<html>cannot connect</html>", "502 Bad Gateway"),
        (b"HTTP/1.1 503\r\n\r\n", "503"),
    ],
)  # fmt: skip
def test_a_refusal_names_the_proxy_the_target_and_the_status(answer: bytes, reason: str) -> None:
    dial = Dial()
    dial.accept()
    dial.answer(answer)
    assert dial.failure() == f"proxy 10.0.0.5:3128 refused CONNECT dmz.example:5941: {reason}"
    assert isinstance(dial.outcome[0].value, ProxyRefusedError)
    assert dial.transport.disconnecting and not dial.transport.disconnected  # a polite close
    assert dial.reactor.getDelayedCalls() == []


def test_a_proxy_that_never_answers_fails_at_the_deadline() -> None:
    dial = Dial()
    dial.accept()
    dial.answer(b"HTTP/1.1 200 Conn")  # a start, and then nothing
    dial.reactor.advance(9.9)
    assert dial.outcome == []
    dial.reactor.advance(0.1)
    assert dial.failure() == "proxy 10.0.0.5:3128 did not answer CONNECT dmz.example:5941 within 10 s"
    assert dial.transport.disconnected  # aborted


def test_garbage_is_no_http() -> None:
    dial = Dial()
    dial.accept()
    dial.answer(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert dial.failure() == "proxy 10.0.0.5:3128 answered no HTTP: expected an HTTP status line, got b'SSH-2.0-OpenSSH_9.2'"
    assert dial.transport.disconnected
    dial.answer(b"more garbage")  # what was still in flight is ignored
    assert len(dial.outcome) == 1


def test_a_head_over_the_limit_is_no_http() -> None:
    dial = Dial()
    dial.accept()
    dial.answer(b"HTTP/1.1 200 OK\r\n")
    for _ in range(20):
        dial.answer(b"X-Padding: " + b"a" * 1000 + b"\r\n")
        if dial.outcome:
            break
    assert dial.failure() == "proxy 10.0.0.5:3128 answered no HTTP: no end of the answer's head within 16384 bytes"


def test_credentials_go_as_basic_and_never_into_a_message() -> None:
    dial = Dial(WITH_AUTH)
    dial.accept()
    token = base64.b64encode(f"connector:{SECRET}".encode()).decode()
    assert dial.transport.value() == REQUEST[:-2] + f"Proxy-Authorization: Basic {token}\r\n\r\n".encode()
    dial.answer(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    message = dial.failure()
    assert message == (
        "proxy 10.0.0.5:3128 refused CONNECT dmz.example:5941: 407 Proxy Authentication Required"
        " (the credentials of proxy-auth-file were refused)"
    )
    assert SECRET not in message and token not in message and "connector" not in message
    assert SECRET not in repr(WITH_AUTH)


def test_an_unreachable_proxy() -> None:
    dial = Dial()
    _, _, factory, _, _ = dial.reactor.tcpClients[-1]
    factory.clientConnectionFailed(None, Failure(error.ConnectionRefusedError("111: Connection refused")))
    assert dial.failure() == "proxy 10.0.0.5:3128 unreachable: Connection was refused by other side: 111: Connection refused."


def test_a_proxy_that_hangs_up_without_answering() -> None:
    dial = Dial()
    dial.accept()
    dial.proxy_side.connectionLost(Failure(error.ConnectionDone()))
    assert dial.failure() == "proxy 10.0.0.5:3128 closed the connection before answering CONNECT dmz.example:5941"
    assert dial.reactor.getDelayedCalls() == []


def test_cancelling_a_dial_waiting_for_the_answer_hangs_up_quietly() -> None:
    dial = Dial()
    dial.accept()
    dial.result.cancel()
    assert isinstance(dial.outcome[0], Failure) and dial.outcome[0].check(CancelledError)
    assert dial.transport.disconnected and dial.reactor.getDelayedCalls() == []
    dial.proxy_side.connectionLost(Failure(error.ConnectionAborted()))  # and nothing more happens
    assert len(dial.outcome) == 1
    dial.outcome[0].trap(CancelledError)


def test_the_route_is_read_at_every_dial() -> None:
    routes = [PROXY, ProxyRoute(Uri("http", "10.0.0.6", 8080))]
    reactor = MemoryReactorClock()
    endpoint = ConnectProxyEndpoint(reactor, lambda: routes[-1], "dmz.example", 5941)
    endpoint.connect(Factory.forProtocol(Recorder))
    routes.pop()
    endpoint.connect(Factory.forProtocol(Recorder))
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("10.0.0.6", 8080), ("10.0.0.5", 3128)]


# -- mutual TLS end to end through an in-memory proxy ---------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    generate_dev_certs(root, ["dmz1"], ["internal1"])
    return root


class InMemoryProxy(Handover):
    """Reads the CONNECT head, answers 200, then hands what follows to the DMZ's TLS listener: as a
    real proxy relays, but the relayed bytes are kept to check what the proxy could see."""

    def __init__(self, dmz: Factory) -> None:
        self.dmz = dmz
        self.head = b""
        self.relayed = bytearray()

    def before_handover(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" in self.head:
            head, rest = self.head.split(b"\r\n\r\n", 1)
            self.head = head
            self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.hand_to(self.dmz.buildProtocol(None), rest)

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.relayed += data
        super().dataReceived(data)


def test_mutual_tls_runs_end_to_end_through_the_proxy(pki: Path) -> None:
    reactor = MemoryReactorClock()
    options = backplane_client_options(pki / "internal1.pem", pki / "ca.pem", "dmz1")
    endpoint = LinkTLSEndpoint(options, ConnectProxyEndpoint(reactor, lambda: PROXY, "dmz.example", 5941))
    connected: list[Any] = []
    endpoint.connect(Factory.forProtocol(Recorder)).addBoth(connected.append)
    _, _, factory, _, _ = reactor.tcpClients[-1]
    identities: list[str] = []

    def known(identity: str) -> bool:
        identities.append(identity)
        return True

    dmz = LinkTLSFactory(backplane_server_context(pki / "dmz1.pem", pki / "ca.pem", known), False, Factory.forProtocol(Recorder))
    proxy = InMemoryProxy(dmz)
    here, there = IPv4Address("TCP", "10.0.0.9", 40000), IPv4Address("TCP", "10.0.0.5", 3128)
    client = factory.buildProtocol(there)
    pump = iosim.connect(
        proxy, iosim.FakeTransport(proxy, True, there, here), client, iosim.FakeTransport(client, False, here, there),
        greet=True, clock=reactor,
    )  # fmt: skip
    pump.flush()
    [connector] = connected
    assert isinstance(connector, Recorder)
    assert proxy.head == REQUEST[:-4]
    assert identities == ["internal1"]  # the DMZ authenticated the connector through the proxy
    connector.transport.write(b"plaintext the proxy must not see")
    pump.flush()
    dmz_side = proxy.inner
    assert dmz_side is not None and dmz_side.wrappedProtocol.received == [b"plaintext the proxy must not see"]
    assert b"plaintext" not in proxy.relayed and proxy.relayed[:1] == b"\x16"  # TLS records only
    dmz_side.write(b"and back")
    pump.flush()
    assert connector.received == [b"and back"]


# -- a pool slot --------------------------------------------------------------------------------


@pytest.fixture
def logged() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        if str(event.get("log_namespace", "")).startswith("shield"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


class NoPool:
    """The slot's gateway, never asked anything here: no link ever comes up."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the slot asked its gateway for {name}")


def test_a_slot_backs_off_after_a_refusal_with_one_log_line(pki: Path, logged: list[str]) -> None:
    reactor = MemoryReactorClock()
    options = backplane_client_options(pki / "internal1.pem", pki / "ca.pem", "dmz1")
    dial = LinkTLSEndpoint(options, ConnectProxyEndpoint(reactor, lambda: WITH_AUTH, "dmz.example", 5941))
    slot = LinkSlot(NoPool(), "dmz.example:5941", dial, 0, reactor)  # type: ignore[arg-type]
    slot.backoff.random = lambda: 1.0  # the top of each step: 0.5, 1, 2 s

    def refuse_latest() -> None:
        host, port, factory, _, _ = reactor.tcpClients[-1]
        proxy_side = factory.buildProtocol(IPv4Address("TCP", host, port))
        proxy_side.makeConnection(StringTransport())
        proxy_side.dataReceived(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")

    slot.start()
    refuse_latest()
    refusal = (
        "link to dmz.example:5941: proxy 10.0.0.5:3128 refused CONNECT dmz.example:5941: 407 Proxy "
        "Authentication Required (the credentials of proxy-auth-file were refused); retrying in 0.50 s"
    )
    assert logged == [refusal]
    reactor.advance(0.49)
    assert len(reactor.tcpClients) == 1
    reactor.advance(0.01)
    assert len(reactor.tcpClients) == 2  # redialled through the proxy after the backoff
    refuse_latest()
    reactor.advance(1.0)
    assert len(reactor.tcpClients) == 3
    refuse_latest()
    assert logged == [refusal]  # the same reason is not logged again
    assert all(SECRET not in line for line in logged)
    slot.drain()

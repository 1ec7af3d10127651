"""The connector with ``internal.backplane.proxy`` (issue 14), on a ``MemoryReactorClock``: it
resolves nothing itself (one endpoint per ``connect`` URI, named by its host and port), dials
every link to the proxy with ``CONNECT host:port``, and a reload applies a new proxy address or
new credentials to the next dials while refusing to switch the proxy on or off."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Iterator

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from shield.config.loader import load_internal_config
from shield.config.model import Uri
from shield.internal.gateway import InternalGateway
from shield.tls.devcerts import generate_dev_certs


@pytest.fixture
def logged() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        if str(event.get("log_namespace", "")).startswith("shield.internal"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def write(folder: Path, proxy: str | None = "http://10.0.0.5:3128", auth: str | None = None) -> Path:
    if not (folder / "certs").exists():
        generate_dev_certs(folder / "certs", ["dmz1"], ["internal1"])
    lines = [
        "[internal]", 'name = "internal1"', "[internal.backplane]",
        'connect = ["tls://dmz.example:5941", "tls://dmz-b.example:5941"]', 'server-name = "dmz1"',
        'cert = "certs/internal1.pem"', 'ca = "certs/ca.pem"', "links = 1",
    ]  # fmt: skip
    if proxy is not None:
        lines.append(f'proxy = "{proxy}"')
    if auth is not None:
        (folder / "proxy-auth").write_text(auth + "\n")
        lines.append('proxy-auth-file = "proxy-auth"')
    lines += ["[[internal.service]]", 'name = "echo"', 'connect = "tcp://127.0.0.1:7000"', 'health-check = "off"']
    path = folder / "internal.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def never_resolve(uri: Uri) -> Deferred[list[str]]:
    raise AssertionError(f"the connector looked up {uri.host} itself")


def start(path: Path) -> tuple[InternalGateway, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    gateway = InternalGateway(load_internal_config(path), reactor, resolver=never_resolve)
    gateway._start()
    return gateway, reactor


def accept(reactor: MemoryReactorClock, index: int) -> tuple[bytes, IProtocol]:
    """The proxy accepts dial ``index``: what the connector sent, and the connector's protocol."""
    host, port, factory, _, _ = reactor.tcpClients[index]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return bytes(transport.value()), protocol


def connect_request(reactor: MemoryReactorClock, index: int) -> bytes:
    return accept(reactor, index)[0]


def test_one_endpoint_per_connect_uri_each_dialled_through_the_proxy(tmp_path: Path, logged: list[str]) -> None:
    gateway, reactor = start(write(tmp_path))
    assert list(gateway.endpoints) == ["dmz.example:5941", "dmz-b.example:5941"]
    assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("10.0.0.5", 3128)] * 2
    assert connect_request(reactor, 0).startswith(b"CONNECT dmz.example:5941 HTTP/1.1\r\nHost: dmz.example:5941\r\n")
    assert connect_request(reactor, 1).startswith(b"CONNECT dmz-b.example:5941 HTTP/1.1\r\n")
    sample = gateway.metrics.registry.get_sample_value
    assert sample("shield_links_up", {"endpoint": "dmz.example:5941"}) == 0
    assert gateway.readiness() == (
        False, ["endpoint dmz.example:5941: no live link", "endpoint dmz-b.example:5941: no live link"]
    )  # fmt: skip
    assert all(discovery.next_delay is None for discovery in gateway.discoveries.values())  # no look-ups, ever
    assert logged[-1] == (
        "connector internal1: offering echo over 1 links to each of dmz.example:5941, dmz-b.example:5941"
        " through proxy 10.0.0.5:3128"
    )


def test_a_reload_applies_a_new_proxy_and_new_credentials_to_the_next_dials(tmp_path: Path, logged: list[str]) -> None:
    gateway, reactor = start(write(tmp_path, auth="connector:0ldSecret"))
    request, first = accept(reactor, 0)
    assert b"Basic " + base64.b64encode(b"connector:0ldSecret") in request
    write(tmp_path, proxy="http://10.0.0.6:8080", auth="connector:N3wSecret")
    gateway.reload()
    assert "reloaded" in logged[-1] and "through proxy 10.0.0.6:8080 with the credentials read again, for new dials" in logged[-1]
    assert not any("Secret" in line for line in logged)
    # The dial in flight was made before: the old proxy refuses it, and the slot redials after
    # its backoff through the new proxy, with the new credentials.
    first.dataReceived(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
    assert "link to dmz.example:5941: proxy 10.0.0.5:3128 refused CONNECT dmz.example:5941: 502 Bad Gateway" in logged[-1]
    dialled = len(reactor.tcpClients)
    reactor.advance(0.5)  # the longest first backoff
    assert [(host, port) for host, port, *_ in reactor.tcpClients[dialled:]] == [("10.0.0.6", 8080)]
    request = connect_request(reactor, dialled)
    assert b"Basic " + base64.b64encode(b"connector:N3wSecret") in request and b"CONNECT dmz.example:5941 " in request


@pytest.mark.parametrize(("before", "after", "what"), [("http://10.0.0.5:3128", None, "removed"), (None, "http://10.0.0.5:3128", "set")])
def test_switching_the_proxy_on_or_off_needs_a_restart(
    tmp_path: Path, logged: list[str], before: str | None, after: str | None, what: str
) -> None:
    reactor = MemoryReactorClock()
    gateway = InternalGateway(load_internal_config(write(tmp_path, proxy=before)), reactor, resolver=lambda uri: succeed(["127.0.0.1"]))
    gateway._start()
    running = gateway.config
    write(tmp_path, proxy=after)
    gateway.reload()
    assert gateway.config is running
    assert logged[-1].startswith("reload refused, the running configuration stays: ")
    assert logged[-1].endswith(f"internal.backplane.proxy {what} (restart the connector for that)")

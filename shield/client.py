"""``shield client URL``: joins stdin/stdout to a public shield service, for trying things out.

``ws://``/``wss://``: each chunk read from stdin is sent as a binary message and every message
received is written to stdout. ``tcp://``/``tls://``: raw bytes both ways, with half-close at EOF.
The exit status is 0 after a normal close, 1 when the server refused or the connection failed.
"""

from __future__ import annotations

import sys
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet.protocol import connectionDone
from twisted.internet import error, protocol, reactor, ssl, stdio
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHalfCloseableProtocol, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.config.errors import ConfigError
from shield.config.uris import parse_uri
from shield.transports import IStreamTransport

_status = {"code": 0}


def _stop(code: int) -> None:
    _status["code"] = code
    if reactor.running:
        reactor.stop()


@implementer(IHalfCloseableProtocol)
class _Stdin(protocol.Protocol):
    def __init__(self, send: Any, finish: Any) -> None:
        self.send = send
        self.finish = finish

    def dataReceived(self, data: bytes) -> None:
        self.send(data)

    def readConnectionLost(self) -> None:
        self.finish()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.finish()


class _WebSocket(WebSocketClientProtocol):
    def onOpen(self) -> None:
        stdio.StandardIO(_Stdin(lambda data: self.sendMessage(data, isBinary=True), self._stdin_done))

    def _stdin_done(self) -> None:
        # Wait briefly for the echo of what was sent, then close politely.
        reactor.callLater(1.0, self.sendClose, 1000)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        sys.stdout.buffer.write(payload)
        sys.stdout.buffer.flush()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if code not in (1000, None) or not wasClean:
            sys.stderr.write(f"shield client: closed: {code} {reason or ''}\n")
            _stop(1)
        else:
            _stop(0)


@implementer(IHalfCloseableProtocol)
class _Raw(protocol.Protocol):
    transport: IStreamTransport  # connected before any event reaches the protocol

    def connectionMade(self) -> None:
        stdio.StandardIO(_Stdin(self.transport.write, self._stdin_done))

    def _stdin_done(self) -> None:
        if hasattr(self.transport, "loseWriteConnection"):
            self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        _stop(0 if reason.check(error.ConnectionDone) else 1)


def run_client(url: str) -> int:
    try:
        uri = parse_uri(url, ("ws", "wss", "tcp", "tls"), "url")
    except ConfigError as problem:
        print(f"shield client: {problem.problem}", file=sys.stderr)
        return 2

    def failed(failure: Failure) -> None:
        sys.stderr.write(f"shield client: {failure.getErrorMessage()}\n")
        _stop(1)

    if uri.scheme in ("ws", "wss"):
        factory = WebSocketClientFactory(url)
        factory.protocol = _WebSocket
        context = ssl.optionsForClientTLS(uri.host) if uri.scheme == "wss" else None
        connectWS(factory, context)
        original = factory.clientConnectionFailed

        def connection_failed(conn: Any, reason: Failure) -> None:
            original(conn, reason)
            failed(reason)

        factory.clientConnectionFailed = connection_failed  # type: ignore[method-assign, assignment]  # Autobahn's connectWS makes the connector: the failure is only seen here
    else:
        endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, uri.host, uri.port)
        if uri.scheme == "tls":
            endpoint = wrapClientTLS(ssl.optionsForClientTLS(uri.host), endpoint)
        endpoint.connect(protocol.Factory.forProtocol(_Raw)).addErrback(failed)
    reactor.run()
    return _status["code"]

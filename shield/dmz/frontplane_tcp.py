"""Public raw TCP and TLS clients (``tcp://`` and ``tls://`` accepts): bytes in, bytes out.

The client's socket is not read until the connector has answered, so nothing piles up while a
tunnel opens; a refusal closes the connection with one log line (raw TCP has no status to send).
"""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.dmz.service import ServiceFront
from shield.dmz.tunnel import OpenFailed, TunnelStream
from shield.net import describe_address, set_no_delay
from shield.relay import Relay, TransportSide


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class PublicTcpProtocol(Protocol):
    def __init__(self, front: ServiceFront, kind: str) -> None:
        self.front = front
        self.kind = kind  # "tcp" or "tls"
        self.client = "?"
        self._opening: Deferred[TunnelStream] | None = None
        self._relay: Relay | None = None
        self._side: TransportSide | None = None
        self._gone = False

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        self.client = describe_address(self.transport.getPeer())
        if self.kind == "tcp":
            self._open_tunnel()
        # tls: wait for the handshake, so a client that never completes it costs no tunnel.

    def handshakeCompleted(self) -> None:
        self._open_tunnel()

    def _open_tunnel(self) -> None:
        self.transport.pauseProducing()
        self._opening = self.front.open(self.client, self.kind)
        self._opening.addCallbacks(self._opened, self._refused)

    def _opened(self, tunnel: TunnelStream) -> None:
        self._opening = None
        if self._gone:
            tunnel.transport.abortConnection()
            return
        self._side = TransportSide(self.transport)
        self.transport.resumeProducing()
        self._relay = self.front.relay(tunnel, self._side, self.client, self.kind)

    def _refused(self, failure: Failure) -> None:
        self._opening = None
        if self._gone:
            return
        problem = failure.value if failure.check(OpenFailed) else OpenFailed(502, "internal", failure.getErrorMessage())
        self.front.refused(self.client, self.kind, problem)
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._relay is not None:
            self._relay.received(self._side, data)  # type: ignore[arg-type]

    def readConnectionLost(self) -> None:
        if self._relay is not None:
            self._relay.eof(self._side)  # type: ignore[arg-type]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self._gone = True
        if self._opening is not None:
            opening, self._opening = self._opening, None
            opening.cancel()
        if self._relay is not None:
            clean = reason.check(error.ConnectionDone) is not None
            self._relay.lost(self._side, clean, reason.getErrorMessage())  # type: ignore[arg-type]


class PublicTcpFactory(Factory):
    def __init__(self, front: ServiceFront, kind: str) -> None:
        self.front = front
        self.kind = kind
        self.noisy = False

    def buildProtocol(self, addr: IAddress) -> PublicTcpProtocol:
        protocol = PublicTcpProtocol(self.front, self.kind)
        protocol.factory = self
        return protocol

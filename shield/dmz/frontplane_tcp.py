"""Public raw TCP and TLS clients (``tcp://`` and ``tls://`` accepts): bytes in, bytes out.

The client's socket is not read until the connector has answered, so nothing piles up while a
tunnel opens; a refusal closes the connection with one log line (raw TCP has no status to send).
"""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.dmz.service import ServiceFront
from shield.dmz.tunnel import OpenFailed, TunnelStream
from shield.net import describe_address, set_no_delay
from shield.relay import RelayedProtocol


@implementer(IHandshakeListener)
class PublicTcpProtocol(RelayedProtocol):
    def __init__(self, front: ServiceFront, kind: str, after_handshake: bool | None = None) -> None:
        self.front = front
        self.kind = kind  # "tcp" or "tls"
        # tls: wait for the handshake, so a client that never completes it costs no tunnel. A
        # client handed over by a balancer has done its handshake already.
        self.after_handshake = kind == "tls" if after_handshake is None else after_handshake
        self.client = "?"
        self._opening: Deferred[TunnelStream] | None = None
        self._gone = False

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        self.client = describe_address(self.transport.getPeer())
        if not self.after_handshake:
            self._open_tunnel()

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
        self.transport.resumeProducing()
        self.join(lambda side: self.front.relay(tunnel, side, self.client, self.kind))

    def _refused(self, failure: Failure) -> None:
        self._opening = None
        if self._gone:
            return
        problem = failure.value if failure.check(OpenFailed) else OpenFailed(502, "internal", failure.getErrorMessage())
        self.front.refused(self.client, self.kind, problem)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self._gone = True
        if self._opening is not None:
            opening, self._opening = self._opening, None
            opening.cancel()
        super().connectionLost(reason)


class PublicTcpFactory(Factory):
    def __init__(self, front: ServiceFront, kind: str) -> None:
        self.front = front
        self.kind = kind
        self.noisy = False

    def buildProtocol(self, addr: IAddress) -> PublicTcpProtocol:
        protocol = PublicTcpProtocol(self.front, self.kind)
        protocol.factory = self
        return protocol

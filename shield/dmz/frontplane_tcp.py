"""Public raw TCP and TLS clients (``tcp://`` and ``tls://`` accepts): bytes in, bytes out.

The client's socket is not read until the connector has answered, so nothing piles up while a
tunnel opens; a refusal closes the connection with one log line (raw TCP has no status to send).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHandshakeListener
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.deadline import Deadline
from shield.addresses import describe_address, host_of
from shield.dmz.admission import Refusal, Refused, Ticket
from shield.dmz.auth import check_client_certificate
from shield.dmz.service import ServiceFront
from shield.dmz.tunnel import OpenFailed, TunnelStream
from shield.net import set_no_delay
from shield.relay import RelayedProtocol


@implementer(IHandshakeListener)
class PublicTcpProtocol(RelayedProtocol):
    def __init__(self, front: ServiceFront, kind: str, after_handshake: bool | None = None) -> None:
        self.front = front
        self.kind = kind  # "tcp" or "tls"
        # tls: wait for the handshake, so a client that never completes it costs no tunnel. A
        # client handed over by a balancer has done its handshake already.
        self.after_handshake = kind == "tls" if after_handshake is None else after_handshake
        self._ticket: Ticket | None = None
        self.connection_ticket: Ticket | None = None  # the gateway's count, when accepted here
        self._handshake_deadline = Deadline(front.clock)
        self.client = "?"
        self._opening: Deferred[TunnelStream] | None = None
        self._gone = False

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        peer = self.transport.getPeer()
        self.client = describe_address(peer)
        if self.connection_ticket is not None:
            self.front.gate.hold(self.transport, self.connection_ticket)
            self.connection_ticket = None
        admitted = self.front.admit(getattr(peer, "host", self.client), self.client)
        if isinstance(admitted, Refusal):
            self._gone = True
            self.transport.abortConnection()  # raw TCP has no status to send
            return
        self._ticket = admitted
        if not self.after_handshake:
            self._authenticate_and_open()
        else:
            seconds = self.front.config.limits.handshake_timeout
            self._handshake_deadline.start(seconds, self._handshake_too_slow, seconds)

    def _handshake_too_slow(self, seconds: float) -> None:
        self.front.limit_hit("handshake_timeout", f"tls client {self.client} -> {self.front.name}: no TLS handshake within {seconds:g} s; closed")
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        self._handshake_deadline.cancel()
        if not self._gone:
            self._authenticate_and_open()

    def _authenticate_and_open(self) -> None:
        if self.front.config.auth == "mtls":
            denied = check_client_certificate(self.front.config, self.transport)
            if denied is not None:
                self.front.denied(self.client, self.kind, denied.status, denied.label, denied.reason)
                self.transport.loseConnection()
                return
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

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._gone = True
        self._handshake_deadline.cancel()
        if self._ticket is not None:
            self._ticket.release()
        self.front.gate.release(self.transport)  # counted here at accept, or by a balancer
        if self._opening is not None:
            opening, self._opening = self._opening, None
            opening.cancel()
        super().connectionLost(reason)


class PublicTcpFactory(Factory):
    def __init__(self, front: ServiceFront, kind: str) -> None:
        self.front = front
        self.kind = kind
        self.noisy = False

    def buildProtocol(self, addr: IAddress | None) -> PublicTcpProtocol | Refused:
        # (Refused is not a PublicTcpProtocol: a refused client gets its answer and is closed)
        ticket = self.front.gate.connection(host_of(addr), describe_address(addr))
        if isinstance(ticket, Refusal):
            return Refused(ticket, http=False)
        protocol = PublicTcpProtocol(self.front, self.kind)
        protocol.factory = self
        protocol.connection_ticket = ticket
        return protocol

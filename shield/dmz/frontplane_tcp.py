"""Public raw TCP and TLS clients (``tcp://`` and ``tls://`` accepts): bytes in, bytes out.

The client's socket is not read until the connector has answered, so nothing piles up while a
tunnel opens; a refusal closes the connection with one log line (raw TCP has no status to send).
"""

from __future__ import annotations

from enum import Enum, auto
from typing import ClassVar

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
from shield.lifecycle import Lifecycle, Transitions
from shield.net import set_no_delay
from shield.relay import RelayedProtocol


class TcpClientState(Enum):
    NEW = auto()  # accepted, not yet admitted
    HANDSHAKING = auto()  # tls: admitted; its TLS handshake must complete before the deadline
    SECURED = auto()  # tls: handshake done; its certificate is checked next
    OPENING = auto()  # a tunnel is being opened; the socket is not read meanwhile
    RELAYING = auto()  # spliced to its tunnel
    CLOSING = auto()  # refused, denied or cut: only its end is awaited
    GONE = auto()  # the connection is closed


class TcpClientEvent(Enum):
    DOOR_REFUSED = auto()  # a connection limit of the service refused it
    AWAIT_HANDSHAKE = auto()
    HANDSHAKE_LATE = auto()
    HANDSHAKE_DONE = auto()
    DENIED = auto()  # auth = "mtls" refused its certificate
    OPEN = auto()
    TUNNEL_READY = auto()
    TUNNEL_REFUSED = auto()
    LOST = auto()  # connectionLost


@implementer(IHandshakeListener)
class PublicTcpProtocol(RelayedProtocol):
    """One public raw TCP or TLS client of one service.

    Its lifecycle (``LIFECYCLE``; any other event is a ``StateError``):

    ===========  ===============  ===========  ==============================================
    state        event            next         what happens
    ===========  ===============  ===========  ==============================================
    NEW          DOOR_REFUSED     CLOSING      cut: raw TCP has no status to send
    NEW          AWAIT_HANDSHAKE  HANDSHAKING  tls: the handshake deadline starts
    NEW          DENIED           CLOSING      closed, one line (a TLS client handed over)
    NEW          OPEN             OPENING      the socket is paused and a tunnel opened
    HANDSHAKING  HANDSHAKE_DONE   SECURED
    HANDSHAKING  HANDSHAKE_LATE   CLOSING      cut, counted as handshake_timeout
    HANDSHAKING  LOST             GONE
    SECURED      DENIED           CLOSING      closed, one line
    SECURED      OPEN             OPENING      the socket is paused and a tunnel opened
    OPENING      TUNNEL_READY     RELAYING     the socket is resumed and spliced
    OPENING      TUNNEL_REFUSED   CLOSING      closed, one line with the reason
    OPENING      LOST             GONE         the opening is cancelled
    RELAYING     LOST             GONE         the relay ends the tunnel
    CLOSING      LOST             GONE
    GONE         TUNNEL_READY     GONE         it left while the tunnel opened: tunnel dropped
    GONE         TUNNEL_REFUSED   GONE         it left while the tunnel opened: nothing to say
    ===========  ===============  ===========  ==============================================

    Leaving HANDSHAKING stops the handshake deadline, whichever way it is left.
    """

    LIFECYCLE: ClassVar[Transitions[TcpClientState, TcpClientEvent]] = {
        (TcpClientState.NEW, TcpClientEvent.DOOR_REFUSED): TcpClientState.CLOSING,
        (TcpClientState.NEW, TcpClientEvent.AWAIT_HANDSHAKE): TcpClientState.HANDSHAKING,
        (TcpClientState.NEW, TcpClientEvent.DENIED): TcpClientState.CLOSING,
        (TcpClientState.NEW, TcpClientEvent.OPEN): TcpClientState.OPENING,
        (TcpClientState.HANDSHAKING, TcpClientEvent.HANDSHAKE_DONE): TcpClientState.SECURED,
        (TcpClientState.HANDSHAKING, TcpClientEvent.HANDSHAKE_LATE): TcpClientState.CLOSING,
        (TcpClientState.HANDSHAKING, TcpClientEvent.LOST): TcpClientState.GONE,
        (TcpClientState.SECURED, TcpClientEvent.DENIED): TcpClientState.CLOSING,
        (TcpClientState.SECURED, TcpClientEvent.OPEN): TcpClientState.OPENING,
        (TcpClientState.OPENING, TcpClientEvent.TUNNEL_READY): TcpClientState.RELAYING,
        (TcpClientState.OPENING, TcpClientEvent.TUNNEL_REFUSED): TcpClientState.CLOSING,
        (TcpClientState.OPENING, TcpClientEvent.LOST): TcpClientState.GONE,
        (TcpClientState.RELAYING, TcpClientEvent.LOST): TcpClientState.GONE,
        (TcpClientState.CLOSING, TcpClientEvent.LOST): TcpClientState.GONE,
        (TcpClientState.GONE, TcpClientEvent.TUNNEL_READY): TcpClientState.GONE,
        (TcpClientState.GONE, TcpClientEvent.TUNNEL_REFUSED): TcpClientState.GONE,
    }

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
        # A handshake no longer awaited has no deadline, however it stops being awaited.
        self._life = Lifecycle(
            "PublicTcpProtocol", self.LIFECYCLE, TcpClientState.NEW,
            {TcpClientState.HANDSHAKING: self._handshake_deadline.cancel},
        )  # fmt: skip

    @property
    def state(self) -> TcpClientState:
        return self._life.state

    def _transition(self, event: TcpClientEvent) -> TcpClientState:
        return self._life.fire(event)

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        peer = self.transport.getPeer()
        self.client = describe_address(peer)
        if self.connection_ticket is not None:
            self.front.gate.hold(self.transport, self.connection_ticket)
            self.connection_ticket = None
        admitted = self.front.admit(getattr(peer, "host", self.client), self.client)
        if isinstance(admitted, Refusal):
            self._transition(TcpClientEvent.DOOR_REFUSED)
            self.transport.abortConnection()  # raw TCP has no status to send
            return
        self._ticket = admitted
        if not self.after_handshake:
            self._authenticate_and_open()
        else:
            self._transition(TcpClientEvent.AWAIT_HANDSHAKE)
            seconds = self.front.config.limits.handshake_timeout
            self._handshake_deadline.start(seconds, self._handshake_too_slow, seconds)

    def _handshake_too_slow(self, seconds: float) -> None:
        self._transition(TcpClientEvent.HANDSHAKE_LATE)
        self.front.limit_hit("handshake_timeout", f"tls client {self.client} -> {self.front.name}: no TLS handshake within {seconds:g} s; closed")
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        self._transition(TcpClientEvent.HANDSHAKE_DONE)
        self._authenticate_and_open()

    def _authenticate_and_open(self) -> None:
        if self.front.config.auth == "mtls":
            denied = check_client_certificate(self.front.config, self.transport)
            if denied is not None:
                self._transition(TcpClientEvent.DENIED)
                self.front.denied(self.client, self.kind, denied.status, denied.label, denied.reason)
                self.transport.loseConnection()
                return
        self._open_tunnel()

    def _open_tunnel(self) -> None:
        self._transition(TcpClientEvent.OPEN)
        self.transport.pauseProducing()
        self._opening = self.front.open(self.client, self.kind, peer=self.transport.getPeer(), host=self.transport.getHost())
        self._opening.addCallbacks(self._opened, self._refused)

    def _opened(self, tunnel: TunnelStream) -> None:
        self._opening = None
        if self._transition(TcpClientEvent.TUNNEL_READY) is TcpClientState.GONE:
            tunnel.transport.abortConnection()
            return
        self.transport.resumeProducing()
        self.join(lambda side: self.front.relay(tunnel, side, self.client, self.kind))

    def _refused(self, failure: Failure) -> None:
        self._opening = None
        if self._transition(TcpClientEvent.TUNNEL_REFUSED) is TcpClientState.GONE:
            return
        problem = failure.value if failure.check(OpenFailed) else OpenFailed(502, "internal", failure.getErrorMessage())
        self.front.refused(self.client, self.kind, problem)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._transition(TcpClientEvent.LOST)
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

"""Handing a live connection from the protocol that read its first bytes to the one that serves it.

A balancer reads an HTTP request head to choose a member, then lets the member's own WebSocket
site (or raw TCP front) take the same connection, replaying what was read; a member does the same
with a client that a balancer forwarded on a cluster stream. ``Handover`` keeps receiving events
from the transport and passes each one to the protocol it handed over to.
"""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer
from shield.transports import IStreamTransport


@implementer(IHalfCloseableProtocol)
class Handover(Protocol):
    """Subclasses read what they need, then call ``hand_to``."""

    transport: IStreamTransport  # connected before any event reaches the protocol

    inner: IProtocol | None = None

    def hand_to(self, inner: IProtocol, initial: bytes = b"", transport: IStreamTransport | None = None) -> None:
        """``inner`` takes the connection, on ``transport`` (a view of this one: the socket's
        own, unless given) and sees ``initial`` first."""
        self.inner = inner
        inner.makeConnection(self.transport if transport is None else transport)
        if initial and self.inner is not None:
            inner.dataReceived(initial)

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
        else:
            self.before_handover(data)

    def before_handover(self, data: bytes) -> None:
        raise NotImplementedError

    def readConnectionLost(self) -> None:
        if self.inner is None:
            self.transport.loseConnection()
            return
        half = IHalfCloseableProtocol(self.inner, None)
        if half is not None:
            half.readConnectionLost()
        else:  # a protocol that cannot half-close sees the end of input as the end
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        half = IHalfCloseableProtocol(self.inner, None) if self.inner is not None else None
        if half is not None:
            half.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)
        else:
            self.lost_before_handover(reason)

    def lost_before_handover(self, reason: Failure) -> None:
        pass

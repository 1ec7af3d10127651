"""TLS transports for the backplane links, without Twisted's small-write aggregation.

Twisted's default TLS transport collects small writes and flushes them one reactor turn later,
copying every byte twice on the way. A mux link already writes once per reactor turn, so for
links that aggregation only added two copies of all traffic and a turn of latency per hop.
Public listeners keep Twisted's default: their writers are not coalesced.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer


class LinkTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` whose connections write straight through."""

    protocol = TLSMemoryBIOProtocol
    noisy = False


@implementer(IStreamClientEndpoint)
class LinkTLSEndpoint:
    """Like ``wrapClientTLS``, with ``LinkTLSFactory``."""

    def __init__(self, options: IOpenSSLClientConnectionCreator, wrapped: IStreamClientEndpoint) -> None:
        self._options = options
        self._wrapped = wrapped

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        tls = LinkTLSFactory(self._options, True, factory)
        connecting = self._wrapped.connect(tls)
        return connecting.addCallback(lambda protocol: protocol.wrappedProtocol)

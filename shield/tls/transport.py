"""TLS transports for the backplane links, without Twisted's small-write aggregation.

Twisted's default TLS transport collects small writes and flushes them one reactor turn later,
copying every byte twice on the way. A mux link already writes once per reactor turn, so for
links that aggregation only added two copies of all traffic and a turn of latency per hop.
Public listeners keep Twisted's default: their writers are not coalesced.

On the way in, OpenSSL hands over one TLS record (at most 16 KiB) at a time. A link's TLS
protocol tells the protocol above when a socket read begins and ends (``begin_batch`` /
``end_batch``, when it has them), so the mux parses everything one read decrypted at once instead
of sending every 16 KiB through parser, relay and socket separately.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer


class LinkTLSProtocol(TLSMemoryBIOProtocol):
    """Writes straight through; brackets each socket read for a protocol that batches."""

    def dataReceived(self, data: bytes) -> None:
        batching = getattr(self.wrappedProtocol, "begin_batch", None)
        if batching is None:
            super().dataReceived(data)
            return
        batching()
        try:
            super().dataReceived(data)
        finally:
            self.wrappedProtocol.end_batch()


class LinkTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` for backplane links."""

    protocol = LinkTLSProtocol
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

"""The one way a connector reaches a backend, for clients and health checks alike: the socket
(``tcp://``, ``tls://`` or ``unix:``), then a PROXY protocol header as its first bytes when the
service has ``proxy-protocol``, then TLS for ``tls://`` backends.

The header goes first on the connection, in clear, before the TLS handshake: that is what
HAProxy's ``send-proxy``/``send-proxy-v2`` on an ``ssl`` server line does, and what servers that
accept it on a TLS port (HAProxy's ``accept-proxy``, nginx's ``listen ... ssl proxy_protocol``)
read. ``HeaderFirstEndpoint`` writes it and hands the connection, unchanged, to the protocol it
was asked to connect (``Handover``), so the TLS layer above never sees it.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.config.model import InternalService
from shield.handover import Handover
from shield.net import stream_client_endpoint
from shield.proxy_protocol.build import build
from shield.proxy_protocol.header import ProxyHeader
from shield.tls.contexts import backend_client_options
from shield.transports import IGatewayReactor

#: The header a connection of the connector's own carries (a health check): v1 UNKNOWN, v2 LOCAL.
OWN_CONNECTION = ProxyHeader(None, None)


def backend_endpoint(
    reactor: IGatewayReactor, service: InternalService, timeout: float, header: ProxyHeader | None, tls: bool = True
) -> IStreamClientEndpoint:
    """``service``'s backend: with ``header`` first when it has ``proxy-protocol`` (``header``
    None: its clients' dials pass one, so None means a connection of our own), then TLS for a
    ``tls://`` backend unless ``tls`` is False (a plain connect check)."""
    endpoint = stream_client_endpoint(reactor, service.connect, timeout)
    if service.proxy_protocol is not None:
        encoded = build(OWN_CONNECTION if header is None else header, service.proxy_protocol.value)
        endpoint = HeaderFirstEndpoint(endpoint, encoded)
    if tls and service.connect.scheme == "tls":
        options = backend_client_options(service.server_name or service.connect.host, service.ca)
        endpoint = wrapClientTLS(options, endpoint)
    return endpoint


@implementer(IStreamClientEndpoint)
class HeaderFirstEndpoint:
    """Connects ``wrapped``, writes ``header``, then gives the connection to the protocol of the
    factory it is asked to connect; fires with that protocol."""

    def __init__(self, wrapped: IStreamClientEndpoint, header: bytes) -> None:
        self._wrapped = wrapped
        self._header = header

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting = self._wrapped.connect(_HeaderFirstFactory(factory, self._header))

        def handed(writer: IProtocol) -> IProtocol | Failure:
            assert isinstance(writer, _HeaderFirst)
            if writer.inner is None:
                return Failure(ConnectionError("no protocol for the backend connection"))
            return writer.inner

        return connecting.addCallback(handed)


class _HeaderFirstFactory(Factory):
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, header: bytes) -> None:
        self.wrapped = wrapped
        self.header = header

    def buildProtocol(self, addr: IAddress | None) -> "_HeaderFirst":
        assert addr is not None, "a client connection always has its peer's address"
        return _HeaderFirst(self.wrapped, self.header, addr)


class _HeaderFirst(Handover):
    """Writes the header as the connection's first bytes, then hands the connection over."""

    def __init__(self, wrapped: IProtocolFactory, header: bytes, addr: IAddress) -> None:
        self._wrapped = wrapped
        self._header = header
        self._addr = addr

    def connectionMade(self) -> None:
        self.transport.write(self._header)
        inner = self._wrapped.buildProtocol(self._addr)
        if inner is None:
            self.transport.abortConnection()
            return
        self.hand_to(inner)

    def before_handover(self, data: bytes) -> None:
        pass  # nothing arrives before the hand-over: it happens in connectionMade

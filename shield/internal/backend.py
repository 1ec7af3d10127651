"""The connector's end of a tunnel: read OPEN, dial the backend from OUR config, answer, relay.

The DMZ names a service, never an address: an unknown service is refused and nothing is dialled.
The stream is not read while the backend connection is being made, so the DMZ cannot make the
connector buffer more than one stream window.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IReactorCore
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.config.model import InternalService
from shield.link.wire import MessageReader, OpenReply, OpenRequest, OpenStatus, WireError, encode
from shield.net import set_no_delay, stream_client_endpoint
from shield.ops.metrics import TO_BACKEND, TO_CLIENT, Metrics
from shield.relay import Relay, RelayedProtocol
from shield.tls.contexts import backend_client_options

log = Logger(namespace="shield.internal.backend")


class BackendConnection(RelayedProtocol):
    """The socket to the backend; reports to the relay once the tunnel is joined."""

    def connectionMade(self) -> None:
        set_no_delay(self.transport)

    def describe_loss(self, reason: Failure) -> str:
        return f"backend: {reason.getErrorMessage()}"


PUBLIC_REASONS = {
    OpenStatus.BACKEND_REFUSED: "backend of {service!r} refused the connection",
    OpenStatus.BACKEND_TIMEOUT: "backend of {service!r} did not accept the connection in time",
    OpenStatus.BACKEND_UNREACHABLE: "backend of {service!r} is unreachable",
}


def _classify(failure: Failure) -> OpenStatus:
    if failure.check(error.ConnectionRefusedError):
        return OpenStatus.BACKEND_REFUSED
    if failure.check(error.TimeoutError, error.UserError):
        return OpenStatus.BACKEND_TIMEOUT
    return OpenStatus.BACKEND_UNREACHABLE


class BackendStream(RelayedProtocol):
    """One stream the DMZ opened."""

    def __init__(self, gateway: "BackendDialer", link_peer: str) -> None:
        self.gateway = gateway
        self.link_peer = link_peer
        self._reader = MessageReader((OpenRequest,))
        self._request: OpenRequest | None = None
        self._dialing: Deferred[BackendConnection] | None = None
        self._service: InternalService | None = None
        self._gone = False

    def dataReceived(self, data: bytes) -> None:
        if self._request is not None:
            super().dataReceived(data)
            return
        try:
            request, rest = self._reader.feed(data)
        except WireError as problem:
            log.warn("stream from DMZ {peer}: bad open request: {problem}", peer=self.link_peer, problem=problem)
            self.transport.abortConnection()
            return
        if request is None:
            return
        assert isinstance(request, OpenRequest)
        self._request = request
        if rest:
            super().dataReceived(rest)
        self._start(request)

    def _start(self, request: OpenRequest) -> None:
        service = self.gateway.services.get(request.service)
        if service is None:
            log.warn(
                "stream from DMZ {peer}: refused: no service {service!r} here (client {client}); nothing dialled",
                peer=self.link_peer, service=request.service, client=request.client,
            )
            self._answer(OpenReply(OpenStatus.UNKNOWN_SERVICE, f"connector has no service {request.service!r}"))
            self.transport.loseConnection()
            return
        self._service = service
        self.transport.pauseProducing()  # nothing more from the DMZ until the backend is there
        self._dialing = self.gateway.dial(service)
        self._dialing.addCallbacks(self._connected, self._dial_failed)

    def _answer(self, reply: OpenReply) -> None:
        self.transport.write(encode(reply))

    def _connected(self, backend: BackendConnection) -> None:
        self._dialing = None
        assert self._request is not None and self._service is not None
        if self._gone:
            backend.transport.abortConnection()
            return
        name = self._service.name
        self._answer(OpenReply(OpenStatus.OK, ""))
        metrics = self.gateway.metrics
        active = metrics.streams_active.labels(service=name)
        active.inc()
        metrics.streams_total.labels(service=name).inc()

        def finished(reason: str) -> None:
            active.dec()

        # Both ends join the one relay; whatever either held (a backend's greeting, payload
        # that followed OPEN) goes out first, after the OK above.
        self.join(
            lambda stream_side: backend.join(
                lambda backend_side: Relay(
                    stream_side,
                    backend_side,
                    metrics.byte_counter(name, TO_BACKEND),
                    metrics.byte_counter(name, TO_CLIENT),
                    finished,
                )
            )
        )
        self.transport.resumeProducing()

    def _dial_failed(self, failure: Failure) -> None:
        self._dialing = None
        if self._gone:
            return  # the DMZ dropped the stream while we dialled
        assert self._request is not None and self._service is not None
        status = _classify(failure)
        name = self._service.name
        detail = f"backend {self._service.connect} for {name!r}: {failure.getErrorMessage()}"
        self.gateway.metrics.open_failures.labels(service=name, reason=status.name.lower()).inc()
        log.warn(
            "stream from DMZ {peer} (client {client}): {detail}",
            peer=self.link_peer, client=self._request.client, detail=detail,
        )
        # The DMZ shows this reason to public clients: say what failed, never where the backend is.
        self._answer(OpenReply(status, PUBLIC_REASONS[status].format(service=name)))
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self._gone = True
        if self._dialing is not None:
            dialing, self._dialing = self._dialing, None
            dialing.cancel()
        super().connectionLost(reason)


class BackendDialer:
    """Dials backends for the services in the connector's own configuration."""

    def __init__(self, services: tuple[InternalService, ...], metrics: Metrics, reactor: IReactorCore) -> None:
        self.services = {service.name: service for service in services}
        self.metrics = metrics
        self.reactor = reactor

    def dial(self, service: InternalService) -> Deferred[BackendConnection]:
        endpoint = stream_client_endpoint(self.reactor, service.connect, service.connect_timeout)
        if service.connect.scheme == "tls":
            options = backend_client_options(service.server_name or service.connect.host, service.ca)
            endpoint = wrapClientTLS(options, endpoint)
        factory = Factory.forProtocol(BackendConnection)
        factory.noisy = False
        connecting = endpoint.connect(factory)
        # A hard deadline on top of the endpoint's: TLS handshakes and name lookups count too.
        timer = self.reactor.callLater(service.connect_timeout, connecting.cancel)

        def done(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        def timed_out(failure: Failure) -> Failure:
            if failure.check(CancelledError, error.ConnectingCancelledError):
                return Failure(error.TimeoutError(f"no connection within {service.connect_timeout:g} s"))
            return failure

        connecting.addBoth(done)
        connecting.addErrback(timed_out)
        return connecting


class BackendStreamFactory(Factory):
    """Builds a ``BackendStream`` for every stream the DMZ opens on one link."""

    def __init__(self, dialer: BackendDialer, link_peer: Callable[[], str]) -> None:
        self.dialer = dialer
        self.link_peer = link_peer

    def buildProtocol(self, addr: IAddress) -> BackendStream:
        return BackendStream(self.dialer, self.link_peer())

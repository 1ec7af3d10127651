"""A link's way to the DMZ through an HTTP CONNECT proxy, as a Twisted client endpoint.

``ConnectProxyEndpoint`` connects to the proxy, asks it for a tunnel to the DMZ's host and port
(``CONNECT host:port``, with Basic credentials when configured), and on a 2xx answer hands the
very same connection to the protocol it was asked to connect (the link's TLS, through
``LinkTLSEndpoint``), with any bytes that followed the answer. The TLS handshake and the mutual
authentication then run end to end through the tunnel: the proxy sees the target and the
encrypted bytes, nothing else.

Every way a dial can fail before the tunnel is up is a ``ProxyError`` whose text is the reason
the slot logs: the proxy cannot be reached, refused (with its status and reason phrase), did not
answer within the deadline, answered something that is not HTTP, or hung up without answering.
The proxy's address and credentials are read at every dial (``ProxyRoute``), so a reload applies
to the next dial and links already up keep theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.addresses import host_port
from shield.config.model import ProxyAuth, Uri
from shield.deadline import Deadline
from shield.handover import Handover
from shield.net import stream_client_endpoint
from shield.proxy.connect import AnswerReader, ConnectAnswer, MalformedAnswer, ProxyError, ProxyRefusedError, connect_request
from shield.transports import IGatewayReactor

#: Seconds the proxy has to answer CONNECT (it resolves the target and connects to it first).
ANSWER_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    """The proxy a dial goes through, and the credentials it shows there."""

    address: Uri  # http://host:port
    auth: ProxyAuth | None = None

    @property
    def label(self) -> str:
        return host_port(self.address.host, self.address.port)


@implementer(IStreamClientEndpoint)
class ConnectProxyEndpoint:
    """Connects to ``host:port`` through the proxy ``route()`` names at each dial."""

    def __init__(
        self,
        reactor: IGatewayReactor,
        route: Callable[[], ProxyRoute],
        host: str,
        port: int,
        timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._route = route
        self.target = host_port(host, port)
        self._request = (host, port)
        self._timeout = timeout

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        route = self._route()
        credentials = None if route.auth is None else (route.auth.user, route.auth.password)
        tunnel = _TunnelFactory(
            factory, _Dial(route.label, self.target, route.auth is not None, self._timeout, self._reactor),
            connect_request(*self._request, credentials),
        )  # fmt: skip
        # The proxy's own name, if it has one, is looked up at every dial (HostnameEndpoint).
        connecting = stream_client_endpoint(self._reactor, route.address, self._timeout).connect(tunnel)

        def unreachable(failure: Failure) -> Failure:
            if failure.check(CancelledError):
                return failure
            return Failure(ProxyError(f"proxy {route.label} unreachable: {failure.getErrorMessage()}"))

        def answered(protocol: _ConnectTunnel) -> Deferred[IProtocol]:
            return protocol.answered

        return connecting.addCallbacks(answered, unreachable)


@dataclass(frozen=True, slots=True)
class _Dial:
    """What one dial's tunnel needs to know, for its deadline and its messages."""

    proxy: str  # host:port of the proxy
    target: str  # host:port asked for
    with_credentials: bool
    timeout: float
    clock: IReactorTime


class _TunnelFactory(Factory):
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, dial: _Dial, request: bytes) -> None:
        self.wrapped = wrapped
        self.dial = dial
        self.request = request

    def buildProtocol(self, addr: IAddress | None) -> _ConnectTunnel:
        assert addr is not None, "a client connection always has its peer's address"
        return _ConnectTunnel(self.wrapped, self.dial, self.request, addr)


class _ConnectTunnel(Handover):
    """Sends CONNECT, reads the answer within the deadline, then hands the connection over."""

    def __init__(self, wrapped: IProtocolFactory, dial: _Dial, request: bytes, addr: IAddress) -> None:
        self._wrapped = wrapped
        self._dial = dial
        self._request = request
        self._addr = addr
        self._reader = AnswerReader()
        self._deadline = Deadline(dial.clock)
        #: Fires with the handed-over protocol once the tunnel is up; cancelling it hangs up.
        self.answered: Deferred[IProtocol] = Deferred(self._cancel)

    def connectionMade(self) -> None:
        self.transport.write(self._request)
        self._deadline.start(self._dial.timeout, self._too_slow)

    def before_handover(self, data: bytes) -> None:
        if self.answered.called:
            return  # failed already; the connection is closing
        try:
            answer = self._reader.feed(data)
        except MalformedAnswer as exc:
            self._fail(ProxyError(f"proxy {self._dial.proxy} answered no HTTP: {exc}"), abort=True)
            return
        if answer is None:
            return
        self._deadline.cancel()
        if not answer.established:
            self._fail(self._refusal(answer), abort=False)
            return
        inner = self._wrapped.buildProtocol(self._addr)
        if inner is None:
            self._fail(ProxyError(f"no protocol for the tunnel to {self._dial.target}"), abort=True)
            return
        self.hand_to(inner, answer.leftover)
        self.answered.callback(inner)

    def _refusal(self, answer: ConnectAnswer) -> ProxyRefusedError:
        dial = self._dial
        status = f"{answer.status} {answer.reason}".rstrip()
        hint = ""
        if answer.status in (401, 407):  # 407 is the standard; some proxies (tinyproxy) answer 401
            hint = " (the credentials of proxy-auth-file were refused)" if dial.with_credentials else " (no proxy-auth-file is configured)"
        return ProxyRefusedError(f"proxy {dial.proxy} refused CONNECT {dial.target}: {status}{hint}", answer.status)

    def _too_slow(self) -> None:
        dial = self._dial
        self._fail(ProxyError(f"proxy {dial.proxy} did not answer CONNECT {dial.target} within {dial.timeout:g} s"), abort=True)

    def _fail(self, error: ProxyError, abort: bool) -> None:
        self._deadline.cancel()
        if not self.answered.called:
            self.answered.errback(Failure(error))
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def _cancel(self, _: Deferred[IProtocol]) -> None:
        """The slot gave up on this dial (a drain, a stop): hang up; ``Deferred`` reports it."""
        self._deadline.cancel()
        self.transport.abortConnection()

    def lost_before_handover(self, reason: Failure) -> None:
        self._deadline.cancel()
        if not self.answered.called:
            dial = self._dial
            self.answered.errback(
                Failure(ProxyError(f"proxy {dial.proxy} closed the connection before answering CONNECT {dial.target}"))
            )

"""The DMZ's public ports: which listeners a configuration needs, and the sockets that serve them.

``plan`` turns the services (tunnel fronts and balancers) into one listener per host:port:
WebSocket services on one port share a site (routed by path, a balancer's paths included), tcp://
and tls:// accepts get their own factory, wss:// and tls:// are wrapped in TLS. ``PublicPorts``,
a part of the gateway's ``MultiService``, keeps one listening socket per host:port for the life of
the process: a reload hands each port the factory of the new plan (``PortFactory.swap``), opens
the ports that are new and closes the ones no service uses any more; open connections keep the
protocol they have.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred
from twisted.internet.interfaces import IAddress, IListeningPort, IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from shield.config.model import DmzService, Uri
from shield.dmz.admission import ClientGate
from shield.dmz.balancer import BalancedHttpFactory, BalancedTcpFactory, BalancerFront
from shield.dmz.frontplane_tcp import PublicTcpFactory
from shield.dmz.frontplane_ws import websocket_site
from shield.dmz.proxy_door import ProxyHeaderFactory
from shield.dmz.service import ServiceFront
from shield.net import tcp_server_endpoint
from shield.ops.once import Once
from shield.ops.port import at_once
from shield.tls.contexts import ServerTLSContext
from shield.transports import IGatewayReactor

log = Logger(namespace="shield.dmz")

Key = tuple[str, str, int]  # (scheme, host, port)


class Listener(NamedTuple):
    uri: Uri
    factory: IProtocolFactory
    what: str  # for the log: "service echo (tcp)", "balancer front (ws, proxy)"

    @property
    def key(self) -> Key:
        return (self.uri.scheme, self.uri.host, self.uri.port)


def plan(
    services: Sequence[DmzService],
    fronts: Mapping[str, ServiceFront],
    balancers: Mapping[str, BalancerFront],
    public_tls: Mapping[str, ServerTLSContext],
    gate: ClientGate,
) -> list[Listener]:
    """Group accepts by listener: WebSocket services on one host:port share a site."""
    websocket_routes: dict[Key, list[tuple[str, ServiceFront, str]]] = defaultdict(list)
    balancer_routes: dict[Key, dict[str, tuple[BalancerFront, Uri]]] = defaultdict(dict)
    tls_certs: dict[Key, ServerTLSContext] = {}
    listeners: list[Listener] = []
    for service in services:
        if service.is_balancer:
            listeners += _balancer_listeners(balancers[service.name], balancer_routes, tls_certs, public_tls)
            continue
        front = fronts[service.name]
        for uri in service.accept:
            key = (uri.scheme, uri.host, uri.port)
            if uri.scheme in ("ws", "wss"):
                websocket_routes[key].append((uri.path or "/", front, str(uri)))
                if uri.scheme == "wss":
                    tls_certs[key] = public_tls[service.name]
            elif uri.scheme == "tcp":
                listeners.append(Listener(uri, PublicTcpFactory(front, "tcp"), f"service {service.name} (tcp)"))
            else:
                tls = TLSMemoryBIOFactory(public_tls[service.name], False, PublicTcpFactory(front, "tls"))
                listeners.append(Listener(uri, tls, f"service {service.name} (tls)"))
    for key in sorted(set(websocket_routes) | set(balancer_routes)):
        scheme, host, port = key
        routes = websocket_routes.get(key, [])
        plain = websocket_site(routes, gate) if routes else None
        names = sorted({front.name for _, front, _ in routes})
        site: IProtocolFactory | None = plain
        if key in balancer_routes:
            names += sorted({front.name for front, _ in balancer_routes[key].values()})
            site = BalancedHttpFactory(balancer_routes[key], plain, gate)
        assert site is not None
        factory: IProtocolFactory = site
        if scheme == "wss":
            factory = TLSMemoryBIOFactory(tls_certs[key], False, site)
        listeners.append(Listener(Uri(scheme, host, port), factory, f"service {', '.join(names)} ({scheme})"))
    return [_with_proxy_protocol(listener, services, gate) for listener in listeners]


def _with_proxy_protocol(listener: Listener, services: Sequence[DmzService], gate: ClientGate) -> Listener:
    """A port whose services take PROXY headers (``proxy-protocol-from``; services sharing a
    port have the same list, the loader checks) reads them first, before TLS or HTTP."""
    sharing = [
        service for service in services
        if any((uri.scheme, uri.host, uri.port) == listener.key for uri in service.accept)
    ]  # fmt: skip
    networks = sharing[0].proxy_protocol_from if sharing else ()
    if not networks:
        return listener
    timeout = min(service.limits.handshake_timeout for service in sharing)
    label = sharing[0].name if len(sharing) == 1 else ""
    factory = ProxyHeaderFactory(listener.factory, networks, timeout, gate, label, str(listener.uri))
    return listener._replace(factory=factory, what=f"{listener.what}, PROXY protocol from {', '.join(map(str, networks))}")


def _balancer_listeners(
    front: BalancerFront,
    routes: dict[Key, dict[str, tuple[BalancerFront, Uri]]],
    tls_certs: dict[Key, ServerTLSContext],
    public_tls: Mapping[str, ServerTLSContext],
) -> list[Listener]:
    listeners: list[Listener] = []
    for uri in front.config.accept:
        key = (uri.scheme, uri.host, uri.port)
        if uri.scheme in ("ws", "wss"):
            routes[key][uri.path or "/"] = (front, uri)
            if uri.scheme == "wss":
                tls_certs[key] = public_tls[front.name]
            continue
        factory: IProtocolFactory = BalancedTcpFactory(front, uri)
        if uri.scheme == "tls":
            factory = TLSMemoryBIOFactory(public_tls[front.name], False, factory)
        listeners.append(Listener(uri, factory, f"balancer {front.name} ({uri.scheme}, {front.config.mode})"))
    return listeners


class PortFactory(Factory):
    """What a public port listens with, for the life of its socket: a reload gives it the new
    configuration's factory (``swap``), so the port keeps its socket and no client is refused
    while the configuration changes hands; connections made before keep their protocols."""

    noisy = False

    def __init__(self, current: IProtocolFactory) -> None:
        self.current = current

    def swap(self, new: IProtocolFactory) -> None:
        new.doStart()
        old, self.current = self.current, new
        old.doStop()

    def buildProtocol(self, addr: IAddress | None) -> IProtocol | None:  # type: ignore[override]  # whatever the delegate makes
        assert addr is not None, "a listening port names the peer"
        return self.current.buildProtocol(addr)

    def startFactory(self) -> None:
        self.current.doStart()

    def stopFactory(self) -> None:
        self.current.doStop()


class PublicPorts(Service):
    """One listening socket per public host:port, each with its ``PortFactory``.

    It opens the ports of ``plan()`` once ``after`` fires (the backplane is up and the cluster
    peers are known); a reload before that only changes what will be opened (``replan``).
    """

    def __init__(
        self,
        reactor: IGatewayReactor,
        gateway_name: str,
        plan: Callable[[], list[Listener]] = list,
        after: Callable[[], Deferred[None]] = at_once,
    ) -> None:
        self.reactor = reactor
        self.gateway_name = gateway_name
        self.plan = plan
        self.after = after
        self.ports: dict[Key, IListeningPort] = {}
        self.factories: dict[Key, PortFactory] = {}
        self.started = Once()
        self._closed = False

    def startService(self) -> None:
        super().startService()
        opening = self.after()
        opening.addCallback(lambda _: None if self._closed else self.open_all(self.plan()))  # no door opens in a drain
        opening.addCallbacks(self.started.succeed, self.started.fail)

    def when_started(self) -> Deferred[None]:
        """Fires once every public port of the plan listens (fails if one cannot)."""
        return self.started.wait()

    def replan(self) -> None:
        """A reload: the ports follow the new plan (before they are open, nothing to do: they
        open with the plan of that moment)."""
        if self.started.happened and not self._closed:
            self.apply(self.plan())

    def close(self) -> Deferred[Any]:
        """The drain: stop accepting on every public port, for good."""
        self._closed = True
        return self.close_all()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return self.close()

    @inlineCallbacks
    def open_all(self, listeners: list[Listener]):
        """At start: each listener in turn; a port that cannot listen fails the start."""
        for listener in listeners:
            delegate = self.factories[listener.key] = PortFactory(listener.factory)
            self.ports[listener.key] = yield tcp_server_endpoint(self.reactor, listener.uri).listen(delegate)
            self._say(listener, "listening on")

    def apply(self, listeners: list[Listener]) -> None:
        """A reload: close the ports no listener needs, swap the factory of those that stay,
        open the new ones (one that cannot listen is logged; the others are served)."""
        wanted = {listener.key: listener for listener in listeners}
        for key in list(self.ports):
            if key not in wanted:
                port = self.ports.pop(key)
                self.factories.pop(key, None)
                port.stopListening()
                log.info("dmz {name}: stopped listening on {scheme}://{host}:{port}",
                         name=self.gateway_name, scheme=key[0], host=key[1], port=key[2])  # fmt: skip
        for key, listener in wanted.items():
            kept = self.factories.get(key)
            if kept is not None:
                kept.swap(listener.factory)
            else:
                self._open(listener)

    def _open(self, listener: Listener) -> None:
        key = listener.key

        def listening(port: IListeningPort) -> None:
            self.ports[key] = port
            self._say(listener, "listening on")

        def failed(failure: object) -> None:
            self.factories.pop(key, None)
            log.error("dmz {name}: cannot listen on {uri}: {why}", name=self.gateway_name, uri=str(listener.uri),
                      why=getattr(failure, "getErrorMessage", str)())  # fmt: skip

        delegate = self.factories[key] = PortFactory(listener.factory)
        tcp_server_endpoint(self.reactor, listener.uri).listen(delegate).addCallbacks(listening, failed)

    def close_all(self) -> Deferred[Any]:
        """Stop accepting on every public port (the drain); open connections stay."""
        ports, self.ports = list(self.ports.values()), {}
        return DeferredList([maybeDeferred(port.stopListening) for port in ports], consumeErrors=True)

    def _say(self, listener: Listener, what: str) -> None:
        log.info("dmz {name}: {what} {doing} {uri}", name=self.gateway_name, what=listener.what, doing=what,
                 uri=str(listener.uri))  # fmt: skip

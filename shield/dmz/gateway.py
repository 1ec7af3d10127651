"""The DMZ gateway as a twistd service: backplane, frontplane listeners, admin, graceful drain."""

from __future__ import annotations

from collections import defaultdict

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.interfaces import IListeningPort, IReactorCore
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from shield.config.model import DmzConfig, Uri
from shield.dmz.backplane import BackplaneFactory, known_identity_check
from shield.dmz.frontplane_tcp import PublicTcpFactory
from shield.dmz.frontplane_ws import nvx_in_use, websocket_site
from shield.dmz.links import LinkRegistry
from shield.dmz.service import ServiceFront
from shield.dmz.tunnel import TunnelOpener
from shield.net import tcp_server_endpoint
from shield.ops.admin import admin_site
from shield.ops.drain import raise_file_limit, drain_links, exit_cleanly_after_drain, fatal
from shield.ops.metrics import Metrics
from shield.tap.common import tls_material
from shield.tls.transport import LinkTLSFactory
from shield.tls.contexts import backplane_server_context, public_server_context

log = Logger(namespace="shield.dmz")


class DmzGateway(Service):
    """Everything one ``shield-dmz`` process runs."""

    def __init__(self, config: DmzConfig, reactor: IReactorCore) -> None:
        self.config = config
        self.reactor = reactor
        self.metrics = Metrics()
        self.registry = LinkRegistry()
        self.opener = TunnelOpener(self.registry, reactor)
        self.fronts = {service.name: ServiceFront(service, self.opener, self.metrics) for service in config.services}
        self.backplane = BackplaneFactory(config, self.registry, reactor)
        self.ports: list[IListeningPort] = []
        self.admin_port: IListeningPort | None = None
        self.registry.on_change(self._update_link_metrics)
        self._started: Deferred[None] | None = None
        # Built now, so an unusable certificate stops the process (exit 2) before it listens.
        backplane = config.backplane
        self.backplane_tls = tls_material(
            {"dmz.backplane.cert": backplane.cert, "dmz.backplane.ca": backplane.ca},
            lambda: backplane_server_context(backplane.cert, backplane.ca, known_identity_check(config)),
        )
        self.public_tls = {}
        for index, service in enumerate(config.services):
            if service.cert is not None:
                cert = service.cert
                self.public_tls[service.name] = tls_material(
                    {f"dmz.service[{index}].cert": cert}, lambda cert=cert: public_server_context(cert)
                )

    # -- lifecycle -------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        limit = raise_file_limit(log)
        log.info("open-files limit: {limit}", limit=limit)
        self._started = self._listen_all()
        self._started.addErrback(fatal, self.reactor, "shield-dmz could not start")

    @inlineCallbacks
    def _listen_all(self):  # type: ignore[no-untyped-def]
        config = self.config
        listeners: list[tuple[Uri, Factory, str]] = [
            (config.backplane.accept, LinkTLSFactory(self.backplane_tls, False, self.backplane), "backplane")
        ]
        listeners += self._frontplane_listeners()
        for uri, factory, what in listeners:
            port = yield tcp_server_endpoint(self.reactor, uri).listen(factory)
            self.ports.append(port)
            log.info("dmz {name}: {what} listening on {uri}", name=config.name, what=what, uri=str(uri))
        if config.admin is not None:
            self.admin_port = yield tcp_server_endpoint(self.reactor, config.admin).listen(
                admin_site(self.readiness, self.metrics.registry)
            )
            log.info("dmz {name}: admin on {uri}", name=config.name, uri=str(config.admin))
        log.info(
            "dmz {name}: ready for connectors ({n} services; WebSocket NVX acceleration {nvx})",
            name=config.name, n=len(self.fronts), nvx="on" if nvx_in_use() else "OFF",
        )

    def _frontplane_listeners(self) -> list[tuple[Uri, Factory, str]]:
        """Group accepts by listener: WebSocket services on one host:port share a site."""
        websocket_routes: dict[tuple[str, str, int], list] = defaultdict(list)
        tls_certs: dict[tuple[str, str, int], object] = {}
        listeners: list[tuple[Uri, Factory, str]] = []
        for service in self.config.services:
            front = self.fronts[service.name]
            for uri in service.accept:
                key = (uri.scheme, uri.host, uri.port)
                if uri.scheme in ("ws", "wss"):
                    websocket_routes[key].append((uri.path or "/", front, str(uri)))
                    if uri.scheme == "wss":
                        tls_certs[key] = self.public_tls[service.name]
                elif uri.scheme == "tcp":
                    listeners.append((uri, PublicTcpFactory(front, "tcp"), f"service {service.name} (tcp)"))
                else:
                    factory = PublicTcpFactory(front, "tls")
                    tls = TLSMemoryBIOFactory(self.public_tls[service.name], False, factory)
                    listeners.append((uri, tls, f"service {service.name} (tls)"))
        for (scheme, host, port), routes in websocket_routes.items():
            site = websocket_site(routes)
            factory: Factory = site
            if scheme == "wss":
                factory = TLSMemoryBIOFactory(tls_certs[(scheme, host, port)], False, site)
            names = ", ".join(sorted({front.name for _, front, _ in routes}))
            listeners.append((Uri(scheme, host, port), factory, f"service {names} ({scheme})"))
        return listeners

    def stopService(self) -> Deferred[None]:
        """SIGTERM: stop accepting, GoAway on every link, let open tunnels finish (grace period)."""
        super().stopService()
        return self._drain()

    @inlineCallbacks
    def _drain(self):  # type: ignore[no-untyped-def]
        log.info("dmz {name}: draining: no new clients, {n} tunnels open", name=self.config.name, n=self.open_tunnels())
        yield DeferredList([port.stopListening() for port in self.ports], consumeErrors=True)
        self.ports.clear()
        yield drain_links(
            list(self.backplane.protocols), self.config.grace_period, self.reactor, self.open_tunnels, log
        )
        if self.admin_port is not None:
            yield self.admin_port.stopListening()
        exit_cleanly_after_drain(self.reactor)

    # -- state for ops --------------------------------------------------------------------------

    def open_tunnels(self) -> int:
        return sum(link.tunnels for link in self.registry.links)

    def readiness(self) -> tuple[bool, list[str]]:
        live = self.registry.services_live()
        missing = [f"service {name!r}: no live connector link" for name in self.fronts if name not in live]
        if self._started is None or not self._started.called:
            missing.insert(0, "listeners not up yet")
        return not missing, missing

    def _update_link_metrics(self) -> None:
        gauge = self.metrics.links_up
        counts = self.registry.links_per_connector()
        for connector in self.config.backplane.connectors:
            gauge.labels(endpoint=connector).set(counts.get(connector, 0))


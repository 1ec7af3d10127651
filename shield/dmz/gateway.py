"""The DMZ gateway as a twistd service: backplane, frontplane listeners, admin, graceful drain."""

from __future__ import annotations

import signal
from functools import partial
from pathlib import Path
from collections import defaultdict
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.server import Site

from twisted.internet.interfaces import IAddress, IProtocol

from shield.cluster.messages import ForwardReply, ForwardRequest, ServiceState
from shield.cluster.node import ClusterNode
from shield.config.model import DmzConfig, Uri
from shield.config.mux import mux_config_for
from shield.config.errors import ConfigError
from shield.config.loader import load_dmz_config
from shield.dmz.backplane import BackplaneFactory, allowed_services, known_identity_check
from shield.dmz.admission import ClientGate
from shield.dmz.auth import client_certificate_verifier
from shield.dmz.balancer import BalancedHttpFactory, BalancedTcpFactory, BalancerFront
from shield.dmz.frontplane_tcp import PublicTcpFactory, PublicTcpProtocol
from shield.dmz.frontplane_ws import balanced_site, nvx_in_use, websocket_site
from shield.dmz.links import LinkRegistry
from shield.dmz.service import ServiceFront
from shield.dmz.tunnel import TunnelOpener
from shield.reactor import describe as describe_reactor
from shield.mux.budget import BufferBudget
from shield.net import tcp_server_endpoint
from shield.ops.admin import admin_site
from shield.ops.drain import raise_file_limit, drain_links, exit_cleanly_after_drain, fatal
from shield.ops.metrics import Metrics
from shield.tap.common import tls_material
from shield.tls.transport import LinkTLSFactory
from shield.transports import IGatewayReactor
from shield.tls.contexts import (
    MemberConnectionCreator,
    ServerTLSContext,
    ReloadableClientTLS,
    ReloadableServerTLS,
    backplane_server_context,
    cluster_client_options,
    cluster_server_context,
    public_server_context,
)

log = Logger(namespace="shield.dmz")

#: Seconds a member has to close the clients it serves for this balancer once the grace is over.
CLOSE_LINGER = 2.0


class DmzGateway(Service):
    """Everything one ``shield-dmz`` process runs."""

    def __init__(self, config: DmzConfig, reactor: IGatewayReactor) -> None:
        self.config = config
        self.reactor = reactor
        self.metrics = Metrics()
        self.budget = BufferBudget(config.buffer_budget)
        self.metrics.watch_budget(self.budget)
        self.registry = LinkRegistry()
        self.opener = TunnelOpener(
            self.registry, reactor, self.budget,
            lambda service: [c for c, offered in self.config.backplane.connectors.items() if service in offered],
        )  # fmt: skip
        self.gate = ClientGate(config.limits, self.metrics, reactor)
        self.fronts = {
            service.name: ServiceFront(service, self.opener, self.metrics, self.gate, reactor)
            for service in config.services
            if not service.is_balancer
        }
        self.backplane = BackplaneFactory(config, self.registry, reactor, self.budget)
        self.draining = False
        self.node: ClusterNode | None = None
        self.balancers: dict[str, BalancerFront] = {}
        self._balanced_sites: dict[str, Site] = {}
        self.ports: list[IListeningPort] = []
        self.admin_port: IListeningPort | None = None
        self._link_series: set[str] = set()  # connectors with a shield_links_up series
        self.registry.on_change(self._update_link_metrics)
        self._update_link_metrics()  # every configured connector shows, at 0 until it links
        self._started: Deferred[None] | None = None
        # Built now, so an unusable certificate stops the process (exit 2) before it listens.
        material = self._tls_material(config)
        self.backplane_tls = ReloadableServerTLS(material.backplane)
        self.public_tls = material.public
        self.cluster_tls = (ReloadableServerTLS(material.cluster[0]), ReloadableClientTLS(material.cluster[1])) if material.cluster else None
        self.frontplane_ports: dict[tuple[str, str, int], IListeningPort] = {}
        #: The factory each public port listens with: a reload swaps what it delegates to.
        self.port_factories: dict[tuple[str, str, int], PortFactory] = {}
        if config.cluster is not None:
            self.node = self._cluster_node(config)
            node = self.node
            self.metrics.cluster_members.set_function(lambda: len(node.alive_members()))
            self.balancers = {
                service.name: BalancerFront(service, self.node, self.metrics, self._serve_here, self.gate)
                for service in config.services
                if service.is_balancer
            }

    def _tls_material(self, config: DmzConfig) -> "_TLSMaterial":
        """Every certificate and key the configuration names, loaded and checked (TLSConfigError /
        exit 2 at start; at a reload, the reload is refused)."""
        backplane = config.backplane
        files = {"dmz.backplane.cert": backplane.cert, "dmz.backplane.ca": backplane.ca}
        server = tls_material(
            files, lambda: backplane_server_context(backplane.cert, backplane.ca, known_identity_check(self.backplane))
        )
        public: dict[str, ServerTLSContext] = {}
        for index, service in enumerate(config.services):
            if service.cert is not None:
                names = {f"dmz.service[{index}].cert": service.cert}
                if service.client_ca is not None:
                    names[f"dmz.service[{index}].client-ca"] = service.client_ca
                public[service.name] = tls_material(
                    names,
                    partial(_public_context, service.cert, service.client_ca),
                )
        cluster = None
        if config.cluster is not None:
            def is_member(identity: str) -> bool:
                return self.node is not None and self.node.admits(identity, lambda: set(self.config.backplane.connectors))

            cluster = (
                tls_material(files, lambda: cluster_server_context(backplane.cert, backplane.ca, is_member)),
                tls_material(files, lambda: cluster_client_options(backplane.cert, backplane.ca, is_member)),
            )
        return _TLSMaterial(server, public, cluster)

    def _cluster_node(self, config: DmzConfig) -> ClusterNode:
        assert config.cluster is not None and self.cluster_tls is not None
        server_tls, client_tls = self.cluster_tls
        return ClusterNode(
            config.name, config.cluster, self, self.reactor, server_tls, client_tls, mux_config_for(config.backplane),
            self.budget,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
        limit = raise_file_limit(log)
        log.info("open-files limit: {limit}; reactor: {reactor}", limit=limit, reactor=describe_reactor(self.reactor))
        self._started = self._listen_all()
        self._started.addErrback(fatal, self.reactor, "shield-dmz could not start")

    @inlineCallbacks
    def _listen_all(self):
        config = self.config
        if self.node is not None:
            yield self.node.start()
        backplane = LinkTLSFactory(self.backplane_tls, False, self.backplane)
        yield self._listen([(config.backplane.accept, backplane, "backplane")])
        if self.node is not None:
            yield self.node.settled()  # connectors link meanwhile: the backplane is up
        for uri, factory, what in self._frontplane_listeners():
            key = (uri.scheme, uri.host, uri.port)
            delegate = self.port_factories[key] = PortFactory(factory)
            port = yield tcp_server_endpoint(self.reactor, uri).listen(delegate)
            self.ports.append(port)
            self.frontplane_ports[key] = port
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

    @inlineCallbacks
    def _listen(self, listeners: list[tuple[Uri, IProtocolFactory, str]]):
        for uri, factory, what in listeners:
            port = yield tcp_server_endpoint(self.reactor, uri).listen(factory)
            self.ports.append(port)
            log.info("dmz {name}: {what} listening on {uri}", name=self.config.name, what=what, uri=str(uri))

    def _frontplane_listeners(self) -> list[tuple[Uri, IProtocolFactory, str]]:
        """Group accepts by listener: WebSocket services on one host:port share a site."""
        websocket_routes: dict[tuple[str, str, int], list] = defaultdict(list)
        balancer_routes: dict[tuple[str, str, int], dict[str, tuple[BalancerFront, Uri]]] = defaultdict(dict)
        tls_certs: dict[tuple[str, str, int], ServerTLSContext] = {}
        listeners: list[tuple[Uri, IProtocolFactory, str]] = []
        for service in self.config.services:
            if service.is_balancer:
                listeners += self._balancer_listeners(service.name, balancer_routes, tls_certs)
                continue
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
                    tls = TLSMemoryBIOFactory(self.public_tls[service.name], False, PublicTcpFactory(front, "tls"))
                    listeners.append((uri, tls, f"service {service.name} (tls)"))
        for key in sorted(set(websocket_routes) | set(balancer_routes)):
            scheme, host, port = key
            routes = websocket_routes.get(key, [])
            plain = websocket_site(routes, self.gate) if routes else None
            names = sorted({front.name for _, front, _ in routes})
            site: IProtocolFactory | None = plain
            if key in balancer_routes:
                names += sorted({front.name for front, _ in balancer_routes[key].values()})
                site = BalancedHttpFactory(balancer_routes[key], plain, self.gate)
            assert site is not None
            factory: IProtocolFactory = site
            if scheme == "wss":
                factory = TLSMemoryBIOFactory(tls_certs[key], False, site)
            listeners.append((Uri(scheme, host, port), factory, f"service {', '.join(names)} ({scheme})"))
        return listeners

    def _balancer_listeners(self, name: str, routes: dict, tls_certs: dict) -> list[tuple[Uri, IProtocolFactory, str]]:
        front = self.balancers[name]
        listeners: list[tuple[Uri, IProtocolFactory, str]] = []
        for uri in front.config.accept:
            key = (uri.scheme, uri.host, uri.port)
            if uri.scheme in ("ws", "wss"):
                routes[key][uri.path or "/"] = (front, uri)
                if uri.scheme == "wss":
                    tls_certs[key] = self.public_tls[name]
                continue
            factory: IProtocolFactory = BalancedTcpFactory(front, uri)
            if uri.scheme == "tls":
                factory = TLSMemoryBIOFactory(self.public_tls[name], False, factory)
            listeners.append((uri, factory, f"balancer {name} ({uri.scheme}, {front.config.mode})"))
        return listeners

    # -- cluster member (shield.cluster.node.LocalMember) -------------------------------------------

    def cluster_services(self) -> list[ServiceState]:
        live = self.registry.services_live()
        return [
            ServiceState(
                name=front.name,
                live=front.name in live,
                clients=len(front.relays),
                accept=tuple(str(uri) for uri in front.config.accept),
                balance=tuple(str(uri) for uri in front.config.balance),
            )
            for front in self.fronts.values()
        ]

    def cluster_clients(self) -> int:
        return self.open_tunnels()

    def serve_forward(self, request: ForwardRequest, balancer: str) -> tuple[ForwardReply, IProtocol | None]:
        """A peer's balancer hands us a client: take it only if we can serve it right now."""
        if self.draining:
            return ForwardReply(503, f"member {self.config.name!r} is draining"), None
        front = self.fronts.get(request.service)
        if front is None:
            return ForwardReply(404, f"no service {request.service!r} on member {self.config.name!r}"), None
        if request.service not in self.registry.services_live():
            return ForwardReply(503, f"no live link for service {request.service!r} on member {self.config.name!r}"), None
        inner = self._serve_here(request.service, request.kind, None)
        if inner is None:
            return ForwardReply(404, f"service {request.service!r} has no {request.kind} accept on member {self.config.name!r}"), None
        return ForwardReply(0), inner

    def _serve_here(self, service: str, kind: str, peer: IAddress | None) -> IProtocol | None:
        """A protocol serving a balanced client of ``service`` here (it arrives by hand-over)."""
        front = self.fronts.get(service)
        if front is None or self.draining:
            return None
        if kind == "tcp":
            return PublicTcpProtocol(front, "tcp", after_handshake=False)
        site = self._balanced_sites.get(service)
        if site is None:
            ws = [uri for uri in front.config.accept if uri.scheme in ("ws", "wss")]
            if not ws:
                return None
            site = self._balanced_sites[service] = balanced_site(front, str(ws[0]))
        return site.buildProtocol(peer)

    def stopService(self) -> Deferred[None]:
        """SIGTERM: stop accepting, GoAway on every link, let open tunnels finish (grace period)."""
        super().stopService()
        return self._drain()

    @inlineCallbacks
    def _drain(self):
        self.draining = True
        if self.node is not None:
            # Peers must stop sending clients here before the doors close.
            log.info("dmz {name}: draining: telling cluster peers", name=self.config.name)
            yield self.node.announce_draining()
        log.info("dmz {name}: draining: no new clients, {n} tunnels open", name=self.config.name, n=self.open_tunnels())
        yield DeferredList([port.stopListening() for port in self.ports], consumeErrors=True)
        self.ports.clear()
        started = self.reactor.seconds()
        yield drain_links(
            list(self.backplane.protocols), self.config.grace_period, self.reactor, self.open_tunnels, log
        )
        if self.node is not None:
            left = self.config.grace_period - (self.reactor.seconds() - started)
            yield self._balanced_clients_done(left)
            yield self.node.stop()
        if self.admin_port is not None:
            yield self.admin_port.stopListening()
        exit_cleanly_after_drain(self.reactor)

    def _balanced_clients_done(self, grace: float) -> Deferred[None]:
        """Clients this balancer spliced to peers finish, or are cut when the grace period ends."""
        done: Deferred[None] = Deferred()
        deadline = self.reactor.seconds() + max(0.0, grace)

        ending: list[bool] = []

        def check() -> None:
            relays = [relay for front in self.balancers.values() for relay in front.relays]
            if not relays:
                done.callback(None)
            elif self.reactor.seconds() >= deadline + CLOSE_LINGER:
                done.callback(None)  # the member never answered: the link closes under them
            elif self.reactor.seconds() >= deadline and not ending:
                # The client's WebSocket session lives on the member that serves it, so only that
                # member can say goodbye: end the client's input there, and it closes with 1001.
                ending.append(True)
                log.warn("grace period over: closing {n} balanced clients", n=len(relays))
                for relay in relays:
                    relay.eof(relay.sides[0])
                self.reactor.callLater(0.05, check)
            else:
                self.reactor.callLater(0.05, check)

        check()
        return done

    # -- reload (SIGHUP) ------------------------------------------------------------------------

    def reload(self) -> None:
        """Read the configuration file again and apply it without dropping anything.

        The new file must pass every check a start would make (keys, files, certificates), and
        may not change what only a restart can (name, backplane, cluster or admin addresses);
        otherwise it is refused whole and the running configuration stays. Applied: certificates
        and keys for new handshakes, services and connector lists added or removed, limits,
        timeouts, cluster members. Open links and clients are never touched.
        """
        source = self.config.source
        if source is None or self.draining:
            return
        try:
            new = load_dmz_config(source)
            fixed = _restart_only_changes(self.config, new)
            if fixed:
                raise ConfigError("", f"{'; '.join(fixed)} (restart the gateway for that)")
            material = self._tls_material(new)
        except ConfigError as error:
            log.error("reload refused, the running configuration stays: {problem}", problem=error.describe() if error.file else f"{source}: {error}")
            return
        except Exception as error:  # a certificate that does not load, say
            log.error("reload refused, the running configuration stays: {source}: {problem}", source=str(source), problem=str(error))
            return
        old = self.config
        self.config = new
        self.backplane.config = new
        self.backplane_tls.current = material.backplane
        self.public_tls = material.public
        if self.cluster_tls is not None and material.cluster is not None:
            self.cluster_tls[0].current, self.cluster_tls[1].current = material.cluster
        self.gate.gateway = new.limits
        self.budget.limit = new.buffer_budget
        added, removed, changed = self._apply_services(old, new)
        for link in self.registry.links:
            link.services = allowed_services(new, link)
        self.registry.changed()
        if self.node is not None and new.cluster is not None:
            self.node.reconfigure(new.cluster)
        self._apply_listeners()
        log.info(
            "reloaded {source}: services added: {added}; removed: {removed}; changed: {changed}; "
            "{n} connectors listed; certificates and keys reloaded for new handshakes",
            source=str(source), added=", ".join(added) or "none", removed=", ".join(removed) or "none",
            changed=", ".join(changed) or "none", n=len(new.backplane.connectors),
        )  # fmt: skip

    def _apply_services(self, old: DmzConfig, new: DmzConfig) -> tuple[list[str], list[str], list[str]]:
        before = {s.name: s for s in old.services}
        after = {s.name: s for s in new.services}
        added = [name for name in after if name not in before]
        removed = [name for name in before if name not in after]
        changed = [name for name in after if name in before and after[name] != before[name]]
        fronts: dict[str, ServiceFront] = {}
        balancers: dict[str, BalancerFront] = {}
        for service in new.services:
            if service.is_balancer:
                assert self.node is not None
                front = self.balancers.get(service.name)
                if front is None:
                    front = BalancerFront(service, self.node, self.metrics, self._serve_here, self.gate)
                front.config = service
                balancers[service.name] = front
            else:
                tunnel = self.fronts.get(service.name)
                if tunnel is None:
                    tunnel = ServiceFront(service, self.opener, self.metrics, self.gate, self.reactor)
                tunnel.config = service
                fronts[service.name] = tunnel
        self.fronts, self.balancers = fronts, balancers
        self._balanced_sites.clear()
        return added, removed, changed

    def _apply_listeners(self) -> None:
        """Give each public port the factory of the new configuration; open new ports, close
        ports no service uses any more. A port that stays keeps its socket: no client is refused
        while it changes hands, and open connections keep the protocol they have."""
        plan = {(uri.scheme, uri.host, uri.port): (uri, factory, what) for uri, factory, what in self._frontplane_listeners()}
        for key in list(self.frontplane_ports):
            if key not in plan:
                port = self.frontplane_ports.pop(key)
                self.port_factories.pop(key, None)
                self.ports.remove(port)
                port.stopListening()
                log.info("dmz {name}: stopped listening on {scheme}://{host}:{port}", name=self.config.name, scheme=key[0], host=key[1], port=key[2])
        for key, (uri, factory, what) in plan.items():
            kept = self.port_factories.get(key)
            if kept is not None:
                kept.swap(factory)
                continue
            self._open(key, uri, factory, what)

    def _open(self, key: tuple[str, str, int], uri: Uri, factory: IProtocolFactory, what: str) -> None:
        def listening(port: IListeningPort) -> None:
            self.ports.append(port)
            self.frontplane_ports[key] = port
            log.info("dmz {name}: {what} listening on {uri}", name=self.config.name, what=what, uri=str(uri))

        def failed(failure: object) -> None:
            self.port_factories.pop(key, None)
            log.error("dmz {name}: cannot listen on {uri}: {why}", name=self.config.name, uri=str(uri), why=getattr(failure, "getErrorMessage", str)())

        delegate = self.port_factories[key] = PortFactory(factory)
        tcp_server_endpoint(self.reactor, uri).listen(delegate).addCallbacks(listening, failed)

    # -- state for ops --------------------------------------------------------------------------

    def open_tunnels(self) -> int:
        return sum(link.tunnels for link in self.registry.links)

    def readiness(self) -> tuple[bool, list[str]]:
        live = self.registry.services_live()
        linked = self.registry.links_per_connector()
        missing = [
            f"service {name!r}: no connector offers it now"
            + (" (connectors are linked: their backends are down or they do not offer it)" if linked else " (no live connector link)")
            for name in self.fronts
            if name not in live
        ]
        if self._started is None or not self._started.called:
            missing.insert(0, "listeners not up yet")
        if self.draining:  # a load balancer that polls /readyz stops sending before the pod goes
            missing.insert(0, "draining: no new clients")
        return not missing, missing

    def _update_link_metrics(self) -> None:
        gauge = self.metrics.links_up
        counts = self.registry.links_per_connector()
        configured = set(self.config.backplane.connectors)
        for connector in configured | set(counts):
            gauge.labels(endpoint=connector).set(counts.get(connector, 0))
        for connector in self._link_series - configured - set(counts):  # removed by a reload, unlinked
            gauge.remove(connector)
        self._link_series = configured | set(counts)
        offers = self.registry.offers()
        for name in self.fronts:
            self.metrics.service_connectors.labels(service=name).set(len(offers.get(name, ())))



@dataclass(frozen=True)
class _TLSMaterial:
    backplane: ServerTLSContext
    public: dict[str, ServerTLSContext]
    cluster: tuple[ServerTLSContext, MemberConnectionCreator] | None


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


def _public_context(cert: Path, client_ca: Path | None) -> ServerTLSContext:
    return public_server_context(cert, client_ca, client_certificate_verifier() if client_ca else None)


def _restart_only_changes(old: DmzConfig, new: DmzConfig) -> list[str]:
    """What a reload cannot apply: the gateway's identity and its own addresses."""
    problems = []
    if old.name != new.name:
        problems.append(f"dmz.name changed ({old.name!r} -> {new.name!r})")
    if old.backplane.accept != new.backplane.accept:
        problems.append("dmz.backplane.accept changed")
    if old.admin != new.admin:
        problems.append("dmz.admin changed")
    if (old.cluster is None) != (new.cluster is None):
        problems.append("[dmz.cluster] added or removed")
    elif old.cluster is not None and new.cluster is not None:
        if (old.cluster.name, old.cluster.accept) != (new.cluster.name, new.cluster.accept):
            problems.append("dmz.cluster.name or dmz.cluster.accept changed")
    return problems

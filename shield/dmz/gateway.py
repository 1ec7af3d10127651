"""The DMZ gateway as a twistd service: backplane, frontplane listeners, admin, graceful drain."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
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
from shield.dmz.listeners import Listener, PublicPorts, plan
from shield.dmz.balancer import BalancerFront
from shield.dmz.frontplane_tcp import PublicTcpProtocol
from shield.dmz.frontplane_ws import balanced_site, nvx_in_use
from shield.dmz.links import LinkRegistry
from shield.dmz.service import ServiceFront
from shield.dmz.tunnel import TunnelOpener
from shield.mux.budget import BufferBudget
from shield.net import tcp_server_endpoint
from shield.ops.admin import admin_site
from shield.ops.drain import drain_links, exit_cleanly_after_drain
from shield.ops.metrics import Metrics
from shield.tap.common import tls_material
from shield.tls.transport import LinkTLSFactory
from shield.transports import IGatewayReactor
from shield.ops.lifecycle import checked_reload, start_gateway
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
        self.public = PublicPorts(reactor, config.name)
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
        self._started = start_gateway("shield-dmz", self.reactor, log, self.reload, self._listen_all)

    @inlineCallbacks
    def _listen_all(self):
        config = self.config
        if self.node is not None:
            yield self.node.start()
        backplane = LinkTLSFactory(self.backplane_tls, False, self.backplane)
        yield self._listen([(config.backplane.accept, backplane, "backplane")])
        if self.node is not None:
            yield self.node.settled()  # connectors link meanwhile: the backplane is up
        yield self.public.open_all(self._plan())
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

    def _plan(self) -> list[Listener]:
        return plan(self.config.services, self.fronts, self.balancers, self.public_tls, self.gate)

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
        yield DeferredList([port.stopListening() for port in self.ports] + [self.public.close_all()], consumeErrors=True)
        self.ports.clear()
        started = self.reactor.seconds()
        yield drain_links(
            [link.mux for link in self.backplane.links], self.config.grace_period, self.reactor, self.open_tunnels, log
        )
        if self.node is not None:
            left = self.config.grace_period - (self.reactor.seconds() - started)
            yield self._balanced_clients_done(left)
            yield self.node.stop()
        if self.admin_port is not None:
            yield self.admin_port.stopListening()
        exit_cleanly_after_drain(self.reactor)

    def _balanced_clients_done(self, grace: float) -> Deferred[None]:
        """Clients this balancer spliced to peers finish, or are cut when the grace period ends.

        Fired by the balancers when their last client ends (``when_idle``), or by the clock: at
        the end of ``grace`` the clients are told to close, and CLOSE_LINGER later the wait ends
        whatever the members did (their links close under the clients).
        """
        done: Deferred[None] = Deferred()
        idle = DeferredList([front.when_idle() for front in self.balancers.values()], consumeErrors=True)

        def finish(_: object = None) -> None:
            for timer in timers:
                if timer.active():
                    timer.cancel()
            if not done.called:
                done.callback(None)

        def close_them() -> None:
            # The client's WebSocket session lives on the member that serves it, so only that
            # member can say goodbye: end the client's input there, and it closes with 1001.
            relays = [relay for front in self.balancers.values() for relay in front.relays]
            log.warn("grace period over: closing {n} balanced clients", n=len(relays))
            for relay in relays:
                relay.eof(relay.sides[0])

        grace = max(0.0, grace)
        timers = [self.reactor.callLater(grace, close_them), self.reactor.callLater(grace + CLOSE_LINGER, finish)]
        idle.addCallback(finish)
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
        def load() -> tuple[DmzConfig, _TLSMaterial]:
            new = load_dmz_config(source)
            fixed = _restart_only_changes(self.config, new)
            if fixed:
                raise ConfigError("", f"{'; '.join(fixed)} (restart the gateway for that)")
            return new, self._tls_material(new)

        loaded = checked_reload(str(source), log, load)
        if loaded is None:
            return
        new, material = loaded
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
        self.public.apply(self._plan())
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

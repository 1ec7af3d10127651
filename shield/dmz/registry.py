"""What this DMZ gateway serves now: a front for each tunnel service and the connector links that
serve them (``ServiceRegistry``), and a front for each balancer (``BalancerRegistry``).

The backplane registers links in ``ServiceRegistry.links``; the listener plan, the cluster member,
readiness and the drain read the fronts and links from here; a reload hands each registry the new
services, and a front whose service stays keeps its clients and counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IAddress, IProtocol
from twisted.web.server import Site

from shield.config.model import DmzConfig, DmzService
from shield.dmz.admission import ClientGate
from shield.dmz.backplane import allowed_services
from shield.dmz.balancer import BalancerFront
from shield.dmz.frontplane_tcp import PublicTcpProtocol
from shield.dmz.frontplane_ws import balanced_site
from shield.dmz.links import LinkRegistry
from shield.dmz.service import ServiceFront
from shield.dmz.tunnel import TunnelOpener
from shield.mux.budget import BufferBudget
from shield.ops.lifecycle import Phase
from shield.ops.metrics import Metrics
from shield.relay import Relay
from shield.transports import IGatewayReactor

if TYPE_CHECKING:
    from shield.cluster.node import ClusterNode


class ServiceRegistry:
    """The tunnel services (``ServiceFront`` by name) and the connector links that serve them."""

    def __init__(
        self,
        config: DmzConfig,
        reactor: IGatewayReactor,
        metrics: Metrics,
        gate: ClientGate,
        budget: BufferBudget,
        phase: Phase,
    ) -> None:
        self.reactor = reactor
        self.metrics = metrics
        self.gate = gate
        self.phase = phase
        self.services: tuple[DmzService, ...] = ()  # every configured service, balancers included
        self.connectors: Mapping[str, tuple[str, ...]] = {}
        self.links = LinkRegistry()
        self.opener = TunnelOpener(self.links, reactor, budget, self.may_serve)
        self.fronts: dict[str, ServiceFront] = {}
        self._balanced_sites: dict[str, Site] = {}
        self._take(config)

    def may_serve(self, service: str) -> list[str]:
        """The connectors the configuration lets serve ``service`` (to say why none does now)."""
        return [connector for connector, offered in self.connectors.items() if service in offered]

    def apply(self, config: DmzConfig) -> None:
        """A reload: fronts for the new services (those that stay keep their clients), and every
        link judged again against the new connector lists."""
        self._take(config)
        for link in self.links.links:
            link.services = allowed_services(config, link)
        self.links.changed()

    def _take(self, config: DmzConfig) -> None:
        self.services = config.services
        self.connectors = config.backplane.connectors
        fronts: dict[str, ServiceFront] = {}
        for service in config.services:
            if service.is_balancer:
                continue
            front = self.fronts.get(service.name)
            if front is None:
                front = ServiceFront(service, self.opener, self.metrics, self.gate, self.reactor)
            front.config = service
            fronts[service.name] = front
        self.fronts = fronts
        self._balanced_sites.clear()

    def live(self) -> set[str]:
        """The services a usable link serves now."""
        return self.links.services_live()

    def open_tunnels(self) -> int:
        return sum(link.tunnels for link in self.links.links)

    def serve_here(self, service: str, kind: str, peer: IAddress | None) -> IProtocol | None:
        """A protocol serving a balanced client of ``service`` here (it arrives by hand-over), or
        None: no such service, none for this kind of client, or the gateway drains."""
        front = self.fronts.get(service)
        if front is None or self.phase.draining:
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


class BalancerRegistry:
    """The balancer services (``BalancerFront`` by name): only a cluster member has them."""

    def __init__(
        self,
        services: Iterable[DmzService],
        node: "ClusterNode",
        metrics: Metrics,
        gate: ClientGate,
        serve_here: Callable[[str, str, IAddress], IProtocol | None],
    ) -> None:
        self.node = node
        self.metrics = metrics
        self.gate = gate
        self.serve_here = serve_here  # what a balancer does with a client it keeps (ServiceRegistry's)
        self.fronts: dict[str, BalancerFront] = {}
        self.apply(services)

    def apply(self, services: Iterable[DmzService]) -> None:
        """Fronts for the balancers of ``services``; those that stay keep their clients."""
        fronts: dict[str, BalancerFront] = {}
        for service in services:
            if not service.is_balancer:
                continue
            front = self.fronts.get(service.name)
            if front is None:
                front = BalancerFront(service, self.node, self.metrics, self.serve_here, self.gate)
            front.config = service
            fronts[service.name] = front
        self.fronts = fronts

    def relays(self) -> list[Relay]:
        """Every client a balancer here has spliced to a member (this one included)."""
        return [relay for front in self.fronts.values() for relay in front.relays]

    def when_idle(self) -> Deferred[None]:
        """Fires once no balancer here has a client open."""
        idle = DeferredList([front.when_idle() for front in self.fronts.values()], consumeErrors=True)
        return idle.addCallback(lambda _: None)

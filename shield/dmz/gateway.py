"""The DMZ gateway as a twistd service: the parts below, built from the configuration and composed.

A ``MultiService`` whose children are, in order: the admin endpoint, the cluster member (with a
cluster), the backplane port and the public ports. Each listens once the one it follows is up
(the public ports also wait for the cluster's peers), so the admin endpoint answers last at start;
being the first child, it is also the last to stop, and /readyz says 'draining' to the end.
SIGTERM runs the drain (``shield.dmz.drain``), then stops the children in reverse.

The parts never reach each other through this object: each gets, when it is built, the few
others it talks to.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Protocol

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from shield.config.model import DmzConfig
from shield.config.mux import mux_config_for
from shield.dmz.admission import ClientGate
from shield.dmz.backplane import BackplaneFactory, backplane_ports, known_identity_check
from shield.dmz.certificates import GatewayTLS
from shield.dmz.cluster_member import ClusterMember
from shield.dmz.drain import DmzDrain
from shield.dmz.frontplane_ws import nvx_in_use
from shield.dmz.link_metrics import LinkMetrics
from shield.dmz.listeners import Listener, PublicPorts, plan
from shield.dmz.readiness import Readiness
from shield.dmz.registry import BalancerRegistry, ServiceRegistry
from shield.dmz.reload import DmzReload, ReloadParts
from shield.mux.budget import BufferBudget
from shield.ops.lifecycle import Phase, admin_endpoint, start_gateway, stop_gateway, stop_in_reverse
from shield.ops.metrics import Metrics
from shield.ops.port import PortService, at_once
from shield.transports import IGatewayReactor

log = Logger(namespace="shield.dmz")


class Part(Protocol):
    """A child of the gateway: a service whose start takes time (a port to listen on)."""

    def setServiceParent(self, parent: IService) -> None: ...

    def when_started(self) -> Deferred[None]: ...


class DmzGateway(MultiService):
    """Everything one ``shield-dmz`` process runs."""

    def __init__(self, config: DmzConfig, reactor: IGatewayReactor) -> None:
        super().__init__()
        self.reactor = reactor
        self.phase = phase = Phase()
        self.metrics = metrics = Metrics()
        budget = BufferBudget(config.buffer_budget)
        metrics.watch_budget(budget)
        gate = ClientGate(config.limits, metrics, reactor)
        # (not ``self.services``: that is the MultiService's list of children)
        self.registry = registry = ServiceRegistry(config, reactor, metrics, gate, budget, phase)
        self.link_metrics = LinkMetrics(  # every configured connector shows, at 0 until it links
            registry.links, metrics, config.backplane.connectors, registry.fronts
        )
        self.backplane = backplane = BackplaneFactory(config, registry.links, reactor, budget)
        # Built now, so an unusable certificate stops the process (exit 2) before it listens.
        self.tls = tls = GatewayTLS(config, known_identity_check(backplane))
        self.member: ClusterMember | None = None
        self.balancers: BalancerRegistry | None = None
        if config.cluster is not None and tls.cluster is not None:
            self.member = ClusterMember(
                config.name, config.cluster, registry, phase, reactor, tls.cluster,
                mux_config_for(config.backplane), budget, metrics,
            )  # fmt: skip
            self.balancers = BalancerRegistry(config.services, self.member.node, metrics, gate, registry.serve_here)
        balancers = self.balancers

        def public_plan() -> list[Listener]:
            return plan(registry.services, registry.fronts, balancers.fronts if balancers else {}, tls.public, gate)

        member = self.member
        self.backplane_port = PortService(
            reactor, backplane_ports(config.backplane, backplane, tls.backplane),
            lambda: log.info("dmz {name}: {what} listening on {uri}", name=config.name, what="backplane",
                             uri=", ".join(str(uri) for uri in config.backplane.accept)),
            member.when_started if member else at_once,
        )  # fmt: skip
        backplane_port = self.backplane_port

        @inlineCallbacks
        def backplane_up_and_peers_known() -> Generator[Deferred[Any], Any, None]:
            yield backplane_port.when_started()
            if member is not None:
                yield member.settled()  # connectors link meanwhile: the backplane is up

        self.public = PublicPorts(reactor, config.name, public_plan, backplane_up_and_peers_known)
        self.readiness = Readiness(registry, phase)
        self.admin: PortService | None = None
        if config.admin is not None:
            admin = config.admin
            self.admin = admin_endpoint(
                reactor, admin, self.readiness, metrics.registry,
                lambda: log.info("dmz {name}: admin on {uri}", name=config.name, uri=str(admin)),
                self.public.when_started,
            )  # fmt: skip
        self.parts: list[Part] = [
            part for part in (self.admin, self.member, self.backplane_port, self.public) if part is not None
        ]
        for part in self.parts:
            part.setServiceParent(self)

        self.drain = DmzDrain(
            config.name, phase, reactor, config.grace_period,
            doors=(self.public, self.backplane_port),
            links=lambda: [link.mux for link in backplane.links],
            open_tunnels=registry.open_tunnels,
            peers=self.member,
            balanced=self.balancers,
        )  # fmt: skip
        self.reloading = DmzReload(config, phase, ReloadParts(
            backplane=backplane, tls=tls, gate=gate, budget=budget, link_metrics=self.link_metrics,
            services=registry, balancers=self.balancers, member=self.member, drain=self.drain,
            public=self.public,
        ))  # fmt: skip

    @property
    def config(self) -> DmzConfig:
        """The configuration in force (the last one a reload accepted)."""
        return self.reloading.config

    def reload(self) -> None:
        """SIGHUP (see ``shield.dmz.reload``)."""
        self.reloading.reload()

    def startService(self) -> None:
        start_gateway("shield-dmz", self.reactor, log, self.reload, self._start_parts)

    @inlineCallbacks
    def _start_parts(self) -> Generator[Deferred[Any], Any, None]:
        super().startService()  # each child, in order; each listens once the one it follows is up
        for part in self.parts:
            yield part.when_started()
        self.phase.up = True
        log.info(
            "dmz {name}: ready for connectors ({n} services; WebSocket NVX acceleration {nvx})",
            name=self.config.name, n=len(self.registry.fronts), nvx="on" if nvx_in_use() else "OFF",
        )

    def stopService(self) -> Deferred[None]:
        """SIGTERM: the drain, then the children stop in reverse (the admin endpoint last)."""
        Service.stopService(self)  # not MultiService's: it would stop every child at once, now
        return stop_gateway(self.reactor, self.drain.run, lambda: stop_in_reverse(self))

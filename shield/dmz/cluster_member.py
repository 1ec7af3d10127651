"""This DMZ gateway as one member of its cluster.

For the ``ClusterNode`` it is the ``LocalMember``: what the heartbeats say (services, clients,
draining) and whether to take a client a peer's balancer forwards here, answered from the
service registry and the gateway's phase. For the gateway it is the part that starts the node
(the member port), waits for the peers at start and tells them about the drain, and stops it.
"""

from __future__ import annotations

from typing import Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator, IProtocol

from shield.cluster.messages import ForwardReply, ForwardRequest, ServiceState
from shield.cluster.node import ClusterNode
from shield.config.model import DmzCluster
from shield.dmz.service import ServiceFront
from shield.mux.budget import BufferBudget
from shield.mux.config import MuxConfig
from shield.ops.lifecycle import Phase
from shield.ops.metrics import Metrics
from shield.ops.once import Once
from shield.transports import IGatewayReactor


class LocalServices(Protocol):
    """What the member reads of the service registry (``shield.dmz.registry.ServiceRegistry``)."""

    @property
    def fronts(self) -> dict[str, ServiceFront]: ...

    def live(self) -> set[str]: ...

    def open_tunnels(self) -> int: ...

    def serve_here(self, service: str, kind: str, peer: IAddress | None) -> IProtocol | None: ...


class ClusterMember(Service):
    """The cluster node of this gateway, and the ``LocalMember`` it asks."""

    def __init__(
        self,
        name: str,
        cluster: DmzCluster,
        services: LocalServices,
        phase: Phase,
        reactor: IGatewayReactor,
        tls: tuple[IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator],
        mux_config: MuxConfig,
        budget: BufferBudget,
        metrics: Metrics,
    ) -> None:
        self.own_name = name  # (not ``name``: a Service's name is its name in the MultiService)
        self.services = services
        self.phase = phase
        self.node = ClusterNode(name, cluster, self, reactor, tls[0], tls[1], mux_config, budget)
        self.started = Once()
        node = self.node
        metrics.cluster_members.set_function(lambda: len(node.alive_members()))

    # -- LocalMember (shield.cluster.node) ------------------------------------------------------------

    def cluster_services(self) -> list[ServiceState]:
        live = self.services.live()
        return [
            ServiceState(
                name=front.name,
                live=front.name in live,
                clients=len(front.relays),
                accept=tuple(str(uri) for uri in front.config.accept),
                balance=tuple(str(uri) for uri in front.config.balance),
            )
            for front in self.services.fronts.values()
        ]

    def cluster_clients(self) -> int:
        return self.services.open_tunnels()

    @property
    def draining(self) -> bool:
        return self.phase.draining

    def serve_forward(self, request: ForwardRequest, balancer: str) -> tuple[ForwardReply, IProtocol | None]:
        """A peer's balancer hands us a client: take it only if we can serve it right now."""
        if self.phase.draining:
            return ForwardReply(503, f"member {self.own_name!r} is draining"), None
        front = self.services.fronts.get(request.service)
        if front is None:
            return ForwardReply(404, f"no service {request.service!r} on member {self.own_name!r}"), None
        if request.service not in self.services.live():
            return ForwardReply(503, f"no live link for service {request.service!r} on member {self.own_name!r}"), None
        inner = self.services.serve_here(request.service, request.kind, None)
        if inner is None:
            return ForwardReply(404, f"service {request.service!r} has no {request.kind} accept on member {self.own_name!r}"), None
        return ForwardReply(0), inner

    # -- the gateway's part ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.started.follow(self.node.start())

    def when_started(self) -> Deferred[None]:
        """Fires once the member port listens (peers are dialled from then on)."""
        return self.started.wait()

    def settled(self) -> Deferred[None]:
        """Fires once the static peers are heard from (or after three heartbeat intervals)."""
        return self.node.settled()

    def announce_draining(self) -> Deferred[None]:
        """Fires once every live peer knows we drain (or after three heartbeat intervals)."""
        return self.node.announce_draining()

    def reconfigure(self, cluster: DmzCluster) -> None:
        self.node.reconfigure(cluster)

    def stopService(self) -> Deferred[None]:
        """Stop dialling and beating, close the member links (the last of the drain)."""
        super().stopService()
        return self.node.stop()

"""The DMZ's registries and the parts that read them, in memory: ``ServiceRegistry`` (tunnel fronts
and links), ``LinkMetrics``, ``Readiness`` and ``ClusterMember`` (the node's ``LocalMember``)."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from dmz_world_inprocess import World, dmz_config
from shield.cluster.messages import ForwardRequest, ServiceState
from shield.config.model import ClientLimits, DmzCluster, DmzService, ServiceType, Uri
from shield.dmz.admission import ClientGate
from shield.dmz.cluster_member import ClusterMember
from shield.dmz.frontplane_tcp import PublicTcpProtocol
from shield.dmz.link_metrics import LinkMetrics
from shield.dmz.readiness import Readiness
from shield.dmz.registry import BalancerRegistry, ServiceRegistry
from shield.mux.budget import BufferBudget
from shield.mux.config import MuxConfig
from shield.ops.lifecycle import Phase
from shield.ops.metrics import Metrics


class Registry:
    """A ``ServiceRegistry`` whose links are the in-memory ones of a ``World``."""

    def __init__(self, connectors: dict[str, tuple[str, ...]], services: tuple[str, ...] = ("echo",)) -> None:
        self.config = dmz_config(connectors, services)
        self.world = World(self.config)
        self.metrics = Metrics()
        self.phase = Phase()
        gate = ClientGate(ClientLimits(), self.metrics, self.world.clock)
        self.registry = ServiceRegistry(self.config, cast(Any, self.world.clock), self.metrics, gate, BufferBudget(1 << 20), self.phase)
        # The world's backplane registers links where the gateway's would: in the registry.
        self.world.registry = self.world.backplane.registry = self.registry.links
        self.world.opener = self.registry.opener

    def link(self, name: str, offers: tuple[str, ...]) -> None:
        self.world.link(self.world.connector(name, offers))

    def reconfigure(self, connectors: dict[str, tuple[str, ...]], services: tuple[str, ...]) -> None:
        self.config = dmz_config(connectors, services)
        self.world.backplane.config = self.config
        self.registry.apply(self.config)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


# -- ServiceRegistry -----------------------------------------------------------------------------


def test_the_registry_keeps_the_fronts_that_stay_and_judges_the_links_again() -> None:
    r = Registry({"internal1": ("echo", "old")}, ("echo", "old"))
    r.link("internal1", ("echo", "old", "new"))
    (link,) = r.registry.links.links
    echo = r.registry.fronts["echo"]
    assert link.services == {"echo", "old"} and r.registry.live() == {"echo", "old"}
    assert r.registry.may_serve("new") == []

    r.reconfigure({"internal1": ("echo", "new")}, ("echo", "new"))
    assert r.registry.fronts["echo"] is echo, "a service that stays keeps its front (clients, counters)"
    assert set(r.registry.fronts) == {"echo", "new"}
    assert link.services == {"echo", "new"}, "announced, configured and listed"
    assert r.registry.may_serve("new") == ["internal1"]
    assert [s.name for s in r.registry.services] == ["echo", "new"]


def test_the_registry_counts_open_tunnels_and_serves_a_handed_over_client_unless_draining() -> None:
    r = Registry({"internal1": ("echo",)})
    r.link("internal1", ("echo",))
    assert r.registry.open_tunnels() == 0
    r.world.open("echo")
    assert r.registry.open_tunnels() == 1
    assert isinstance(r.registry.serve_here("echo", "tcp", None), PublicTcpProtocol)
    assert r.registry.serve_here("nope", "tcp", None) is None
    assert r.registry.serve_here("echo", "ws", None) is None, "echo has no ws:// accept"
    r.phase.draining = True
    assert r.registry.serve_here("echo", "tcp", None) is None


# -- LinkMetrics ---------------------------------------------------------------------------------


def test_link_metrics_follow_the_links_and_a_removed_connector_keeps_its_series_while_linked() -> None:
    r = Registry({"internal1": ("echo",), "internal2": ("echo",)})
    metrics = LinkMetrics(r.registry.links, r.metrics, ["internal1", "internal2"], ["echo"])
    assert r.sample("shield_links_up", endpoint="internal1") == 0
    assert r.sample("shield_links_up", endpoint="internal2") == 0
    r.link("internal2", ("echo",))
    assert r.sample("shield_links_up", endpoint="internal2") == 1
    assert r.sample("shield_service_connectors", service="echo") == 1

    metrics.reconfigure(["internal1"], ["echo"])
    r.reconfigure({"internal1": ("echo",)}, ("echo",))  # internal2 is no longer listed
    assert r.sample("shield_links_up", endpoint="internal2") == 1, "its link is still up"
    assert r.sample("shield_service_connectors", service="echo") == 0, "but serves echo no more"
    (link,) = r.registry.links.links
    assert link.mux.transport is not None
    link.mux.transport.loseConnection()
    r.world.run()
    assert r.sample("shield_links_up", endpoint="internal2") is None, "gone with its last link"
    assert r.sample("shield_links_up", endpoint="internal1") == 0


# -- Readiness -----------------------------------------------------------------------------------


def test_readiness_answers_from_the_phase_and_the_registry() -> None:
    r = Registry({"internal1": ("echo", "web")}, ("echo", "web"))
    ready = Readiness(r.registry, r.phase)
    assert ready() == (False, [
        "listeners not up yet",
        "service 'echo': no connector offers it now (no live connector link)",
        "service 'web': no connector offers it now (no live connector link)",
    ])  # fmt: skip
    r.phase.up = True
    r.link("internal1", ("echo",))
    assert ready() == (False, [
        "service 'web': no connector offers it now (connectors are linked: their backends are down or they do not offer it)",
    ])  # fmt: skip
    r.link("internal1", ("web",))
    assert ready() == (True, [])
    r.phase.draining = True
    assert ready() == (False, ["draining: no new clients"])


# -- ClusterMember -------------------------------------------------------------------------------


def member(r: Registry) -> ClusterMember:
    cluster = DmzCluster(name="c1", accept=Uri("tls", "192.0.2.1", 7000))
    return ClusterMember(
        "dmz1", cluster, r.registry, r.phase, cast(Any, r.world.clock), (cast(Any, None), cast(Any, None)),
        MuxConfig(keepalive_interval=0), BufferBudget(1 << 20), r.metrics,
    )  # fmt: skip


def test_the_member_tells_the_node_what_the_registry_serves() -> None:
    r = Registry({"internal1": ("echo", "web")}, ("echo", "web"))
    config = dataclasses.replace(r.config.services[0], balance=(Uri("tcp", "lb.example", 8000),))
    r.registry.apply(dataclasses.replace(r.config, services=(config, r.config.services[1])))
    m = member(r)
    assert m.node.local is m
    r.link("internal1", ("echo",))
    r.world.open("echo")
    assert m.cluster_services() == [
        ServiceState("echo", True, 0, ("tcp://0.0.0.0:9000",), ("tcp://lb.example:8000",)),
        ServiceState("web", False, 0, ("tcp://0.0.0.0:9001",), ()),
    ]
    assert m.cluster_clients() == 1 and not m.draining
    r.phase.draining = True
    assert m.draining and m.node.own_heartbeat().draining


def test_the_member_takes_a_forwarded_client_only_when_it_can_serve_it() -> None:
    r = Registry({"internal1": ("echo", "web")}, ("echo", "web"))
    m = member(r)
    r.link("internal1", ("echo",))

    def answer(service: str, kind: str = "tcp") -> tuple[int, str, bool]:
        reply, inner = m.serve_forward(ForwardRequest(service, kind, "198.51.100.7", 4000), "lb")
        return reply.status, reply.reason, inner is not None

    assert answer("echo") == (0, "", True)
    assert answer("nope") == (404, "no service 'nope' on member 'dmz1'", False)
    assert answer("web") == (503, "no live link for service 'web' on member 'dmz1'", False)
    assert answer("echo", "ws") == (404, "service 'echo' has no ws accept on member 'dmz1'", False)
    r.phase.draining = True
    assert answer("echo") == (503, "member 'dmz1' is draining", False)


# -- BalancerRegistry ----------------------------------------------------------------------------


def test_the_balancer_registry_keeps_the_balancers_that_stay() -> None:
    r = Registry({"internal1": ("echo",)})
    node = member(r).node

    def balancer(name: str, port: int) -> DmzService:
        return DmzService(name=name, accept=(Uri("tcp", "0.0.0.0", port),), type=ServiceType.BALANCER)

    balancers = BalancerRegistry((r.config.services[0], balancer("lb", 8000), balancer("old", 8001)), node, r.metrics,
                                 ClientGate(ClientLimits(), r.metrics, r.world.clock), r.registry.serve_here)  # fmt: skip
    assert set(balancers.fronts) == {"lb", "old"}, "tunnel services are the other registry's"
    lb = balancers.fronts["lb"]
    assert lb.local == r.registry.serve_here and lb.node is node
    balancers.apply((balancer("lb", 8002), balancer("new", 8003)))
    assert balancers.fronts["lb"] is lb and lb.config.accept[0].port == 8002
    assert set(balancers.fronts) == {"lb", "new"}
    assert balancers.relays() == []
    idle: list[None] = []
    balancers.when_idle().addCallback(idle.append)
    assert idle == [None], "no balanced client open: idle at once"

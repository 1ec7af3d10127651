"""Prometheus metrics of one gateway, in a registry of its own (no global state across tests)."""

from __future__ import annotations

from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from shield.mux.budget import BufferBudget
from shield.relay import ByteTally

#: Direction labels for byte counters: toward the backend, or back toward the public client.
TO_BACKEND = "to_backend"
TO_CLIENT = "to_client"


class Metrics:
    """The counters both gateways keep; label values are service names, endpoints, reasons."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.links_up = Gauge(
            "shield_links_up",
            "Backplane links that are up and announced, per endpoint (connector) or connector (DMZ)",
            ["endpoint"],
            registry=self.registry,
        )
        self.streams_active = Gauge(
            "shield_streams_active", "Tunnels open now, per service", ["service"], registry=self.registry
        )
        self.streams_total = Counter(
            "shield_streams", "Tunnels opened since start, per service", ["service"], registry=self.registry
        )
        self.backend_up = Gauge(
            "shield_backend_up",
            "Connector: 1 while a service's backend passes its health checks (the service is offered), 0 while it is down",
            ["service"],
            registry=self.registry,
        )
        self.backend_transitions = Counter(
            "shield_backend_transitions",
            "Connector: backend health changes, per service and the state it changed to (up, down)",
            ["service", "to"],
            registry=self.registry,
        )
        self.service_connectors = Gauge(
            "shield_service_connectors",
            "DMZ: connectors that offer a service now (announced, allowed, link usable)",
            ["service"],
            registry=self.registry,
        )
        self._byte_tallies: dict[tuple[str, str], ByteTally] = {}
        self.registry.register(_BytesCollector(self._byte_tallies))
        self.open_failures = Counter(
            "shield_open_failures",
            "Tunnels that could not be opened, per service and reason",
            ["service", "reason"],
            registry=self.registry,
        )

        self.cluster_members = Gauge(
            "shield_cluster_members_alive",
            "Cluster peers alive now (heartbeats fresh and a link up), this member not counted",
            registry=self.registry,
        )
        self.balanced = Counter(
            "shield_balanced_clients",
            "Clients a balancer sent on, per balancer service, member and mode (proxy or redirect)",
            ["service", "member", "mode"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "shield_refusals",
            "Clients or streams refused by a limit, per service and limit",
            ["service", "limit"],
            registry=self.registry,
        )

    def watch_budget(self, budget: BufferBudget) -> None:
        """Report the gateway's buffer budget: its limit, what streams hold, what they borrowed."""
        Gauge(
            "shield_buffer_budget_bytes", "Tunnel data the gateway may hold in stream buffers at once (buffer-budget)",
            registry=self.registry,
        ).set_function(lambda: budget.limit)
        Gauge(
            "shield_buffered_bytes",
            "Tunnel data held now in stream buffers: waiting for a paused reader, or kept by its consumer",
            registry=self.registry,
        ).set_function(lambda: budget.held)
        Gauge(
            "shield_buffer_lent_bytes",
            "Window growth granted now to streams whose readers keep up, lent by the buffer budget",
            registry=self.registry,
        ).set_function(lambda: budget.lent)

    # -- HealthMetrics (shield.internal.health) --------------------------------------------------

    def set_up(self, service: str, up: bool) -> None:
        self.backend_up.labels(service=service).set(1 if up else 0)

    def transition(self, service: str, up: bool) -> None:
        self.set_up(service, up)
        self.backend_transitions.labels(service=service, to="up" if up else "down").inc()

    def forget(self, service: str) -> None:
        """A service left the configuration: its series go too."""
        for metric, labels in ((self.backend_up, (service,)), (self.backend_transitions, (service, "up")),
                               (self.backend_transitions, (service, "down"))):  # fmt: skip
            try:
                metric.remove(*labels)
            except KeyError:
                pass

    def byte_tally(self, service: str, direction: str) -> ByteTally:
        """The running total of one ``shield_bytes_total`` series, which relays add to directly."""
        key = (service, direction)
        tally = self._byte_tallies.get(key)
        if tally is None:
            tally = self._byte_tallies[key] = ByteTally()
        return tally

    def bytes_total(self, service: str, direction: str) -> int:
        tally = self._byte_tallies.get((service, direction))
        return tally.total if tally is not None else 0


class _BytesCollector(Collector):
    """``shield_bytes_total``, read from the relays' running totals when scraped."""

    NAME = "shield_bytes"
    HELP = "Payload bytes carried, per service and direction (to_backend, to_client)"

    def __init__(self, tallies: dict[tuple[str, str], ByteTally]) -> None:
        self._tallies = tallies

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.NAME, self.HELP, labels=["service", "direction"])
        for (service, direction), tally in sorted(self._tallies.items()):
            family.add_metric([service, direction], tally.total)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.NAME, self.HELP, labels=["service", "direction"])

"""Prometheus metrics of one gateway, in a registry of its own (no global state across tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

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
        self.bytes = Counter(
            "shield_bytes",
            "Payload bytes carried, per service and direction (to_backend, to_client)",
            ["service", "direction"],
            registry=self.registry,
        )
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

    def byte_counter(self, service: str, direction: str):  # type: ignore[no-untyped-def]
        """A fast callable adding to one bytes series (labels resolved once, not per chunk)."""
        return self.bytes.labels(service=service, direction=direction).inc

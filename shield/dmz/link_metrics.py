"""``shield_links_up`` by connector and ``shield_service_connectors`` by service, kept in step with
the DMZ's connector links: recounted whenever a link comes, goes or changes what it serves."""

from __future__ import annotations

from collections.abc import Iterable

from shield.dmz.links import LinkRegistry
from shield.ops.metrics import Metrics


class LinkMetrics:
    """Every configured connector has a ``shield_links_up`` series, at 0 until it links; one a
    reload removed keeps its series while it still has links, and loses it with the last one."""

    def __init__(self, links: LinkRegistry, metrics: Metrics, connectors: Iterable[str], services: Iterable[str]) -> None:
        self.links = links
        self.metrics = metrics
        self.connectors = set(connectors)
        self.services = list(services)  # the tunnel services, whose connectors are counted
        self._series: set[str] = set()  # connectors with a shield_links_up series
        links.on_change(self.update)
        self.update()

    def reconfigure(self, connectors: Iterable[str], services: Iterable[str]) -> None:
        """A reload: counted from the next change of the links (the reload makes one)."""
        self.connectors = set(connectors)
        self.services = list(services)

    def update(self) -> None:
        gauge = self.metrics.links_up
        counts = self.links.links_per_connector()
        for connector in self.connectors | set(counts):
            gauge.labels(endpoint=connector).set(counts.get(connector, 0))
        for connector in self._series - self.connectors - set(counts):  # removed by a reload, unlinked
            gauge.remove(connector)
        self._series = self.connectors | set(counts)
        offers = self.links.offers()
        for name in self.services:
            self.metrics.service_connectors.labels(service=name).set(len(offers.get(name, ())))

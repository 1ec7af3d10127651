"""The DMZ's view of connector links, and the choice of a link for each public client.

A link serves a service only after its connector announced it and the DMZ accepted it. The router
prefers the highest priority among connectors offering the service (lower priorities are warm
standbys) and, among those, the link with the fewest open tunnels.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterable

from shield.mux.protocol import MuxProtocol

_sequence = itertools.count()


@dataclass(eq=False)
class ConnectorLink:
    """One announced link from a connector."""

    mux: MuxProtocol
    connector: str  # identity from its certificate
    peer: str  # address the link came from
    priority: int
    services: frozenset[str]  # what this DMZ lets it serve now
    tunnels: int = 0  # open tunnel streams
    announced: frozenset[str] = frozenset()  # what the connector offered (a reload re-judges it)
    withdrawn: frozenset[str] = frozenset()  # offered earlier on this link and not now (backend down)
    order: int = field(default_factory=lambda: next(_sequence))

    @property
    def usable(self) -> bool:
        return self.mux.transport is not None and not self.mux.going_away and self.mux.session.terminated is None


class LinkRegistry:
    """All announced links of this DMZ gateway."""

    def __init__(self) -> None:
        self._links: list[ConnectorLink] = []
        self._listeners: list[Callable[[], None]] = []

    def add(self, link: ConnectorLink) -> None:
        self._links.append(link)
        self._changed()

    def remove(self, link: ConnectorLink) -> None:
        if link in self._links:
            self._links.remove(link)
            self._changed()

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    @property
    def links(self) -> list[ConnectorLink]:
        return list(self._links)

    def candidates(self, service: str, exclude: Iterable[ConnectorLink] = ()) -> list[ConnectorLink]:
        """Usable links for ``service`` in the order they should be tried."""
        excluded = set(map(id, exclude))
        usable = [
            link
            for link in self._links
            if service in link.services and link.usable and id(link) not in excluded
        ]
        if not usable:
            return []
        top = max(link.priority for link in usable)
        best = [link for link in usable if link.priority == top]
        return sorted(best, key=lambda link: (link.tunnels, link.order))

    def pick(self, service: str, exclude: Iterable[ConnectorLink] = ()) -> ConnectorLink | None:
        found = self.candidates(service, exclude)
        return found[0] if found else None

    def services_live(self) -> set[str]:
        return {service for link in self._links if link.usable for service in link.services}

    def offers(self) -> dict[str, set[str]]:
        """Service -> the connectors that offer it now over a usable link."""
        found: dict[str, set[str]] = {}
        for link in self._links:
            if link.usable:
                for service in link.services:
                    found.setdefault(service, set()).add(link.connector)
        return found

    def links_per_connector(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for link in self._links:
            if link.usable:
                counts[link.connector] = counts.get(link.connector, 0) + 1
        return counts

    def changed(self) -> None:
        """A link's usability changed without it coming or going (GoAway): recount."""
        self._changed()

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

"""``/readyz`` at the DMZ: ready when the listeners are up, the gateway is not draining, and every
tunnel service has a live connector link; otherwise one line for each thing that is missing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from shield.ops.lifecycle import Phase


class ServedServices(Protocol):
    """What readiness reads of the service registry (``shield.dmz.registry.ServiceRegistry``)."""

    @property
    def fronts(self) -> Iterable[str]: ...  # the tunnel services, by name

    def live(self) -> set[str]: ...

    @property
    def links(self) -> "LinkCounts": ...


class LinkCounts(Protocol):
    def links_per_connector(self) -> dict[str, int]: ...


class Readiness:
    """The admin endpoint's readiness check (``shield.ops.admin.ReadinessCheck``)."""

    def __init__(self, services: ServedServices, phase: Phase) -> None:
        self.services = services
        self.phase = phase

    def __call__(self) -> tuple[bool, list[str]]:
        live = self.services.live()
        linked = self.services.links.links_per_connector()
        missing = [
            f"service {name!r}: no connector offers it now"
            + (" (connectors are linked: their backends are down or they do not offer it)" if linked else " (no live connector link)")
            for name in self.services.fronts
            if name not in live
        ]
        if not self.phase.up:
            missing.insert(0, "listeners not up yet")
        if self.phase.draining:  # a load balancer that polls /readyz stops sending before the pod goes
            missing.insert(0, "draining: no new clients")
        return not missing, missing

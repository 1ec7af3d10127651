"""The router: highest priority first, then the link with the fewest open tunnels."""

from __future__ import annotations

from dataclasses import dataclass, field

from shield.dmz.links import ConnectorLink, LinkRegistry


@dataclass
class FakeSession:
    terminated: object = None


@dataclass
class FakeMux:
    """What the router reads of a MuxProtocol."""

    going_away: bool = False
    transport: object = "connected"
    session: FakeSession = field(default_factory=FakeSession)


def link(connector: str, priority: int, services: set[str], tunnels: int = 0) -> ConnectorLink:
    return ConnectorLink(
        mux=FakeMux(), connector=connector, peer="127.0.0.1:1", priority=priority,  # type: ignore[arg-type]
        services=frozenset(services), tunnels=tunnels,
    )


def test_highest_priority_wins_and_lower_is_standby() -> None:
    registry = LinkRegistry()
    standby = link("backup", 50, {"app"})
    active = link("main", 100, {"app"}, tunnels=40)
    registry.add(standby)
    registry.add(active)
    assert registry.pick("app") is active  # busy, but preferred
    registry.remove(active)
    assert registry.pick("app") is standby


def test_equal_priority_goes_to_fewest_tunnels() -> None:
    registry = LinkRegistry()
    busy, idle = link("a", 100, {"app"}, tunnels=3), link("b", 100, {"app"}, tunnels=1)
    registry.add(busy)
    registry.add(idle)
    assert registry.pick("app") is idle
    idle.tunnels = 5
    assert registry.pick("app") is busy


def test_only_links_offering_the_service_and_usable() -> None:
    registry = LinkRegistry()
    other = link("a", 100, {"other"})
    draining = link("b", 100, {"app"})
    draining.mux.going_away = True  # type: ignore[attr-defined]
    registry.add(other)
    registry.add(draining)
    assert registry.pick("app") is None
    assert registry.services_live() == {"other"}
    fresh = link("c", 10, {"app"})
    registry.add(fresh)
    assert registry.pick("app") is fresh
    assert registry.pick("app", exclude=[fresh]) is None

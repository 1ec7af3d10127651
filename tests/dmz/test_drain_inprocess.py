"""The DMZ's drain (shield/dmz/drain.py) on a fake clock: each step fires on the event it waits for
(peers told, doors closed, links gone, balanced clients finished), and the grace period bounds
the waits for links and clients."""

from __future__ import annotations

from typing import Any, Iterator, cast

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from dmz_world_inprocess import LogLines, capture_log
from shield.dmz.drain import CLOSE_LINGER, DmzDrain
from shield.ops.lifecycle import Phase

GRACE = 5.0


@pytest.fixture
def log() -> Iterator[LogLines]:
    yield from capture_log()


class Door:
    def __init__(self, name: str, events: list[str]) -> None:
        self.name, self.events = name, events

    def close(self) -> Deferred[None]:
        self.events.append(f"close {self.name}")
        return succeed(None)


class Link:
    """What the drain uses of a backplane link (a ``MuxProtocol``)."""

    def __init__(self, name: str, events: list[str]) -> None:
        self.name, self.events = name, events
        self.transport: object | None = object()
        self.is_open = True
        self.tunnels = 1
        self.closed: Deferred[str] = Deferred()

    def go_away(self) -> Deferred[str]:
        self.events.append(f"goaway {self.name}")
        return self.closed

    def close_now(self, reason: str = "closed") -> None:
        self.is_open = False
        self.tunnels = 0
        self.closed.callback(reason)

    def abort(self, reason: str) -> None:
        self.events.append(f"abort {self.name}: {reason}")
        self.close_now(reason)


class Peers:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.acknowledged: Deferred[None] = Deferred()

    def announce_draining(self) -> Deferred[None]:
        self.events.append("tell peers")
        return self.acknowledged


class Relay:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.sides = ("client", "member")

    def eof(self, side: str) -> None:
        self.events.append(f"eof {side}")


class Balancers:
    def __init__(self, events: list[str], clients: int) -> None:
        self.open = [Relay(events) for _ in range(clients)]
        self.idle: Deferred[None] = Deferred()

    def relays(self) -> list[Relay]:
        return list(self.open)

    def when_idle(self) -> Deferred[None]:
        return self.idle


class Drain:
    def __init__(self, links: int = 1, peers: bool = False, balanced: int | None = None) -> None:
        self.events: list[str] = []
        self.clock = Clock()
        self.phase = Phase()
        self.links = [Link(f"l{n}", self.events) for n in range(links)]
        self.peers = Peers(self.events) if peers else None
        self.balancers = Balancers(self.events, balanced) if balanced is not None else None
        self.drain = DmzDrain(
            "dmz1", self.phase, self.clock, GRACE, (Door("public", self.events), Door("backplane", self.events)),
            lambda: cast(Any, self.links), lambda: sum(link.tunnels for link in self.links),
            peers=self.peers, balanced=cast(Any, self.balancers),
        )  # fmt: skip

    def run(self) -> list[object]:
        done: list[object] = []
        self.drain.run().addBoth(done.append)
        return done


def test_peers_first_then_doors_then_links_and_it_fires_when_the_last_link_goes(log: LogLines) -> None:
    d = Drain(links=2, peers=True)
    done = d.run()
    assert d.phase.draining, "no new clients from the first moment"
    assert d.events == ["tell peers"], "the doors stay open until the peers stop choosing us"
    d.peers.acknowledged.callback(None)  # type: ignore[union-attr]
    assert d.events == ["tell peers", "close public", "close backplane", "goaway l0", "goaway l1"]
    assert log.having("dmz dmz1: draining: no new clients, 2 tunnels open")
    d.links[0].close_now()
    assert done == []
    d.clock.advance(1.0)
    d.links[1].close_now()
    assert done == [None], "fired by the last link, not by a timer"
    assert d.clock.getDelayedCalls() == []


def test_links_still_open_at_the_end_of_the_grace_period_are_cut(log: LogLines) -> None:
    d = Drain(links=2)
    done = d.run()
    d.links[0].close_now()
    d.clock.advance(GRACE - 0.1)
    assert done == []
    d.clock.advance(0.1)
    assert "abort l1: shutting down: grace period over" in d.events and "abort l0: shutting down: grace period over" not in d.events
    assert log.having("grace period of 5 s over: closing 1 tunnels still open")
    assert done == [None]


def test_balanced_clients_get_what_is_left_of_the_grace_period(log: LogLines) -> None:
    d = Drain(links=1, balanced=2)
    done = d.run()
    d.clock.advance(2.0)
    d.links[0].close_now()
    d.clock.advance(GRACE - 2.0 - 0.1)
    assert done == [] and "eof client" not in d.events
    d.clock.advance(0.1)
    assert d.events.count("eof client") == 2, "told to close at the end of the grace period"
    assert log.having("grace period over: closing 2 balanced clients")
    d.clock.advance(CLOSE_LINGER - 0.1)
    assert done == []
    d.clock.advance(0.1)
    assert done == [None], "the wait ends whatever the members did"


def test_balanced_clients_that_finish_end_the_drain_at_once() -> None:
    d = Drain(links=0, balanced=1)
    done = d.run()
    assert done == []
    d.clock.advance(1.0)
    d.balancers.idle.callback(None)  # type: ignore[union-attr]
    assert done == [None] and d.clock.getDelayedCalls() == []


def test_nothing_open_drains_at_once() -> None:
    d = Drain(links=0)
    assert d.run() == [None]
    assert d.events == ["close public", "close backplane"]

"""The connector's pool slot in process: Twisted's ``ClientService`` keeping one link to the real
DMZ backplane up, with shield's backoff as its retry policy.

The slot dials through an endpoint that joins the connector's link to the DMZ world's backplane
with iosim (as ``LinkTLSEndpoint`` would over TLS), or fails the way a refused dial does. What is
checked is what an operator sees: when the slot redials, what it logs, and that a drain lets open
tunnels finish and never dials again.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.test import iosim
from zope.interface import implementer

from dmz_world_inprocess import (
    DMZ_ADDRESS,
    CertifiedTransport,
    Connector,
    Link,
    LogLines,
    TcpTransport,
    World,
    capture_log,
    dmz_config,
)
from shield.dmz.tunnel import TunnelStream
from shield.internal.backend import BackendStreamFactory
from shield.internal.link import ConnectorLinkEnd
from shield.internal.pool import LinkSlot
from shield.link.wire import Announce
from shield.mux.budget import BufferBudget, unlimited
from shield.mux.config import MuxConfig

ENDPOINT = f"{DMZ_ADDRESS.host}:{DMZ_ADDRESS.port}"


@pytest.fixture
def log() -> Iterator[LogLines]:
    yield from capture_log()


class Pool:
    """The connector gateway as its slots see it (``PoolHost``)."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.mux_config = MuxConfig(keepalive_interval=0)
        self.budget: BufferBudget = unlimited()
        self.changes = 0

    def announcement(self) -> Announce:
        return self.connector.announcement()

    def backend_streams(self, endpoint: str) -> BackendStreamFactory:
        return BackendStreamFactory(self.connector.dialer, lambda: endpoint, clock=self.connector.clock)

    def link_changed(self) -> None:
        self.changes += 1


@implementer(IStreamClientEndpoint)
class WorldDial:
    """Dials the world's DMZ: a link joined by iosim, TLS's part played by the test (the
    certificate names the connector, ``handshakeCompleted`` on both ends); or a refused dial."""

    def __init__(self, world: World, connector: Connector) -> None:
        self.world = world
        self.connector = connector
        self.refusing = False
        self.attempts = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempts += 1
        if self.refusing:
            return fail(error.ConnectionRefusedError("nothing listens"))
        w = self.world
        w._port += 1
        peer = IPv4Address("TCP", "198.18.0.2", w._port)
        ours = factory.buildProtocol(DMZ_ADDRESS)  # ClientService's proxy around the link's mux
        assert ours is not None
        dmz_mux = w.backplane.buildProtocol(peer)
        pump = iosim.connect(
            dmz_mux, CertifiedTransport(dmz_mux, True, self.connector.name, DMZ_ADDRESS, peer),
            ours, TcpTransport(ours, False, peer, DMZ_ADDRESS),
            greet=False, clock=w.clock,
        )  # fmt: skip
        connector_end = ours.owner  # type: ignore[attr-defined]  # (the proxy passes attributes on)
        assert isinstance(connector_end, ConnectorLinkEnd)
        w.links.append(Link(dmz_mux.owner, connector_end, pump))  # type: ignore[arg-type]
        dmz_mux.handshakeCompleted()
        ours.handshakeCompleted()  # type: ignore[attr-defined]
        return succeed(ours)


def slot_in_world(refusing: bool = False) -> tuple[World, WorldDial, Pool, LinkSlot]:
    w = World(dmz_config({"internal1": ("echo",)}))
    connector = w.connector("internal1")
    dial = WorldDial(w, connector)
    dial.refusing = refusing
    pool = Pool(connector)
    slot = LinkSlot(pool, ENDPOINT, dial, 0, w.clock)
    slot.backoff.random = lambda: 1.0  # the top of each backoff step: 0.5, 1, 2, 4 ... s
    slot.start()
    w.run()
    return w, dial, pool, slot


def cut(w: World) -> None:
    """The link's TCP connection drops (the DMZ went away, a middlebox cut it)."""
    w.links[-1].connector.mux.transport.loseConnection()
    w.run()


def test_a_slot_links_announces_and_counts_the_link_up(log: LogLines) -> None:
    w, dial, pool, slot = slot_in_world()
    assert dial.attempts == 1
    assert slot.link is not None and slot.link.accepted
    assert len(w.registry.links) == 1 and pool.changes == 1
    assert log.having(f"link to {ENDPOINT}: up; DMZ 'dmz1' accepted echo")


def test_a_refused_dial_is_logged_once_with_why_and_redialled_after_the_backoff(log: LogLines) -> None:
    w, dial, pool, slot = slot_in_world(refusing=True)
    assert dial.attempts == 1 and slot.link is None
    assert len(log.having(f"link to {ENDPOINT}: ConnectionRefusedError: Connection was refused by other side")) == 1
    assert log.having("retrying in 0.50 s")
    w.advance(0.49)
    assert dial.attempts == 1
    w.advance(0.02)
    assert dial.attempts == 2  # then 1 s, 2 s ...; the same reason is not logged again
    assert len(log.having("Connection was refused by other side")) == 1
    dial.refusing = False
    w.advance(1.0)
    assert dial.attempts == 3 and slot.link is not None and len(w.registry.links) == 1
    assert not log.having("Scheduling retry")  # (ClientService's own line per retry stays quiet)


def test_a_link_lost_soon_after_it_came_up_still_backs_off_and_one_that_lasted_starts_over(log: LogLines) -> None:
    w, dial, pool, slot = slot_in_world()
    delays = []
    for _ in range(3):  # up for 1 s each time: the backoff keeps growing (ClientService alone would start over)
        w.advance(1.0)
        cut(w)
        assert slot.link is None and pool.changes % 2 == 0
        before = dial.attempts
        start = w.clock.seconds()
        while dial.attempts == before:
            w.advance(0.05)
        delays.append(round(w.clock.seconds() - start, 1))
    assert delays == [0.5, 1.0, 2.0]
    assert len(log.having(f"link to {ENDPOINT}: lost after 1.0 s")) == 3
    w.advance(10.0)  # this one lasts: the next redial comes soon again
    cut(w)
    start, before = w.clock.seconds(), dial.attempts
    while dial.attempts == before:
        w.advance(0.05)
    assert round(w.clock.seconds() - start, 1) == 0.5


def test_a_drain_lets_the_open_tunnel_finish_then_closes_and_never_redials(log: LogLines) -> None:
    w, dial, pool, slot = slot_in_world()
    tunnel = w.open()
    assert isinstance(tunnel, TunnelStream)
    drained = slot.drain()
    w.run()
    registered = w.links[-1].registered
    assert registered is not None and not registered.usable  # GoAway: no new client lands here
    assert not drained.called and slot.tunnels == 1

    tunnel.transport.abortConnection()  # the last client's tunnel ends
    w.advance(1.0)
    assert drained.called and slot.link is None and w.registry.links == []
    w.advance(120.0)
    assert dial.attempts == 1
    assert not log.having("retrying")


def test_a_drain_while_waiting_to_redial_is_done_at_once() -> None:
    w, dial, pool, slot = slot_in_world(refusing=True)
    drained = slot.drain()
    assert drained.called
    w.advance(120.0)
    assert dial.attempts == 1

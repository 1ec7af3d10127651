"""SIGTERM at the DMZ: a chain of Deferreds, each fired by the event it waits for.

No new clients from the first moment (``Phase.draining``: /readyz, forwarded clients); then the
cluster peers know we drain (so their balancers stop choosing us) → the doors are closed (public
ports and the backplane) → the links have gone away (GoAway: each closes once its last tunnel
ends) → the clients our balancers spliced to members have finished. The grace period bounds the
last two: what is still open then is cut.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from shield.mux.protocol import MuxProtocol
from shield.ops.drain import drain_links
from shield.ops.lifecycle import Phase
from shield.relay import Relay

log = Logger(namespace="shield.dmz")

#: Seconds a member has to close the clients it serves for this balancer once the grace is over.
CLOSE_LINGER = 2.0


class Door(Protocol):
    """A listener the drain closes (``shield.ops.port.PortService``, ``shield.dmz.listeners.PublicPorts``)."""

    def close(self) -> Deferred[Any]: ...


class DrainingPeers(Protocol):
    """The cluster member (``shield.dmz.cluster_member.ClusterMember``)."""

    def announce_draining(self) -> Deferred[None]: ...


class BalancedClients(Protocol):
    """The balancers (``shield.dmz.registry.BalancerRegistry``)."""

    def relays(self) -> list[Relay]: ...

    def when_idle(self) -> Deferred[None]: ...


class DmzDrain:
    """The drain of one DMZ gateway; ``run`` fires once it is over."""

    def __init__(
        self,
        name: str,
        phase: Phase,
        clock: IReactorTime,
        grace_period: float,
        doors: Sequence[Door],
        links: Callable[[], Sequence[MuxProtocol]],
        open_tunnels: Callable[[], int],
        peers: DrainingPeers | None = None,
        balanced: BalancedClients | None = None,
    ) -> None:
        self.name = name
        self.phase = phase
        self.clock = clock
        self.grace_period = grace_period  # a reload may change it
        self.doors = doors
        self.links = links
        self.open_tunnels = open_tunnels
        self.peers = peers
        self.balanced = balanced

    @inlineCallbacks
    def run(self) -> Generator[Deferred[Any], Any, None]:
        self.phase.draining = True
        if self.peers is not None:
            # Peers must stop sending clients here before the doors close.
            log.info("dmz {name}: draining: telling cluster peers", name=self.name)
            yield self.peers.announce_draining()
        log.info("dmz {name}: draining: no new clients, {n} tunnels open", name=self.name, n=self.open_tunnels())
        yield DeferredList([door.close() for door in self.doors], consumeErrors=True)
        started = self.clock.seconds()
        yield drain_links(list(self.links()), self.grace_period, self.clock, self.open_tunnels, log)
        if self.balanced is not None:
            left = self.grace_period - (self.clock.seconds() - started)
            yield balanced_clients_done(self.balanced, left, self.clock)


def balanced_clients_done(balanced: BalancedClients, grace: float, clock: IReactorTime) -> Deferred[None]:
    """Clients this balancer spliced to peers finish, or are cut when the grace period ends.

    Fired by the balancers when their last client ends (``when_idle``), or by the clock: at the
    end of ``grace`` the clients are told to close, and CLOSE_LINGER later the wait ends whatever
    the members did (their links close under the clients).
    """
    done: Deferred[None] = Deferred()

    def finish(_: object = None) -> None:
        for timer in timers:
            if timer.active():
                timer.cancel()
        if not done.called:
            done.callback(None)

    def close_them() -> None:
        # The client's WebSocket session lives on the member that serves it, so only that
        # member can say goodbye: end the client's input there, and it closes with 1001.
        relays = balanced.relays()
        log.warn("grace period over: closing {n} balanced clients", n=len(relays))
        for relay in relays:
            relay.eof(relay.sides[0])

    grace = max(0.0, grace)
    timers = [clock.callLater(grace, close_them), clock.callLater(grace + CLOSE_LINGER, finish)]
    balanced.when_idle().addCallback(finish)
    return done

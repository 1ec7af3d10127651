"""Who is in the cluster right now, and which member should take a balancer's next client.

No I/O here: the node reports links and heartbeats with the time, and asks. A member is alive
while it has at least one link to us and its last heartbeat is at most three of its own intervals
old; losing its last link (a reset, a TLS error, a missed keepalive) makes it dead at once.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet

import functools
import math
from dataclasses import dataclass
from typing import Callable

from shield.cluster.messages import Heartbeat
from shield.config.errors import ConfigError
from shield.config.model import DmzCluster, Uri
from shield.config.uris import parse_uri

#: Heartbeats a member may miss before it counts as dead.
MISSED_HEARTBEATS = 3


@dataclass
class MemberView:
    name: str
    links: int = 0
    heartbeat: Heartbeat | None = None
    heard_at: float = 0.0
    dead_reported: bool = True  # nothing to report until it has been alive

    def alive(self, now: float) -> bool:
        hb = self.heartbeat
        return self.links > 0 and hb is not None and now - self.heard_at <= MISSED_HEARTBEATS * hb.interval


@dataclass(frozen=True)
class Candidate:
    """A member (``None`` = this one) that can serve a balancer's client for ``service``."""

    member: str | None
    service: str
    clients: int
    accept: tuple[str, ...]


class Membership:
    def __init__(self, own_name: str) -> None:
        self.own_name = own_name
        self.members: dict[str, MemberView] = {}

    def _view(self, name: str) -> MemberView:
        view = self.members.get(name)
        if view is None:
            view = self.members[name] = MemberView(name)
        return view

    def link_up(self, name: str) -> None:
        self._view(name).links += 1

    def link_down(self, name: str) -> bool:
        """A link to ``name`` closed; True if that was its last one (it is dead now)."""
        view = self._view(name)
        view.links = max(0, view.links - 1)
        if view.links == 0 and not view.dead_reported:
            view.dead_reported = True
            return True
        return False

    def heard(self, heartbeat: Heartbeat, now: float) -> tuple[bool, bool]:
        """Record a heartbeat; returns (joined now, draining flag changed)."""
        view = self._view(heartbeat.name)
        before = view.heartbeat
        joined = view.dead_reported
        view.heartbeat = heartbeat
        view.heard_at = now
        view.dead_reported = False
        changed = before is None or before.draining != heartbeat.draining
        return joined, changed

    def expire(self, now: float) -> list[str]:
        """Members that fell silent since the last call (each named once)."""
        gone = []
        for view in self.members.values():
            if not view.dead_reported and not view.alive(now):
                view.dead_reported = True
                gone.append(view.name)
        return gone

    def gone_at(self, name: str) -> float | None:
        """The first moment ``name`` counts as gone if nothing more is heard from it (None: not
        heard from yet). A wait on the membership looks again then: silence is an event too."""
        view = self.members.get(name)
        if view is None or view.heartbeat is None:
            return None
        return math.nextafter(view.heard_at + MISSED_HEARTBEATS * view.heartbeat.interval, math.inf)

    def alive(self, now: float) -> list[MemberView]:
        return [view for view in self.members.values() if view.alive(now)]

    def draining_seen(self, now: float) -> tuple[str, ...]:
        return tuple(sorted(v.name for v in self.alive(now) if v.heartbeat and v.heartbeat.draining))

    def peers_seeing_drain(self, now: float) -> tuple[list[str], list[str]]:
        """(alive peers that know we drain, alive peers that do not know yet)."""
        seen: list[str] = []
        unseen: list[str] = []
        for view in self.alive(now):
            assert view.heartbeat is not None
            (seen if self.own_name in view.heartbeat.seen_draining else unseen).append(view.name)
        return seen, unseen

    def candidates(
        self,
        balancer: Uri,
        own: Heartbeat,
        now: float,
        exclude: AbstractSet[str | None] = frozenset(),
        recent: dict[str, int] | None = None,
    ) -> list[Candidate]:
        """Members that can serve clients of ``balancer`` now, fewest active clients first.

        A member qualifies when it is alive, not draining, and has a service that lists this
        balancer in ``balance`` and has a live connector link. This member itself counts too.
        ``recent`` adds clients sent to a peer since its last heartbeat to its count.
        """
        recent = recent or {}
        found: list[tuple[int, int, Candidate]] = []
        heartbeats: list[tuple[str | None, Heartbeat]] = [(None, own)]
        heartbeats += [(v.name, v.heartbeat) for v in self.alive(now) if v.heartbeat is not None]
        for order, (member, hb) in enumerate(heartbeats):
            if member in exclude or hb.draining:
                continue
            for service in hb.services:
                if service.live and any(balances(text, balancer) for text in service.balance):
                    clients = hb.clients + (recent.get(member, 0) if member is not None else 0)
                    found.append((clients, order, Candidate(member, service.name, clients, service.accept)))
                    break
        found.sort(key=lambda item: (item[0], item[1]))
        return [candidate for _, _, candidate in found]


def may_be_member(identity: str, own_name: str, cluster: DmzCluster, connectors: Callable[[], set[str]]) -> bool:
    """May a certificate with this identity be a member? One of ``member-names`` (or this member
    itself) when the cluster lists them; otherwise any gateway certificate that is not a connector."""
    if cluster.member_names:
        return identity in cluster.member_names or identity == own_name
    return identity not in connectors()


def balances(text: str, balancer: Uri) -> bool:
    """Does a member's ``balance`` URI name this balancer accept? Scheme, port and path must agree.

    The host is not compared: a balance URI carries the name clients use (often a DNS name for
    every member's balancer address), while each member's balancer listens on its own address.
    """
    uri = _parse_balance(text)
    return uri is not None and (uri.scheme, uri.port, uri.path) == (balancer.scheme, balancer.port, balancer.path)


@functools.lru_cache(maxsize=1024)
def _parse_balance(text: str) -> Uri | None:
    try:
        return parse_uri(text, ("ws", "wss", "tcp", "tls"), "balance")
    except ConfigError:
        return None

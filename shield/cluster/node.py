"""A DMZ gateway's membership in its cluster: links to peers, heartbeats, drain, forwarding.

The gateway gives the node two things (``LocalMember``): its current state for heartbeats, and a
way to serve a client a peer's balancer forwards here. In return the node answers "which member
should take this balancer's client" and opens forward streams to peers.
"""

from __future__ import annotations

from typing import Callable, Protocol, TYPE_CHECKING

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IAddress,
    IProtocol,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from shield.addresses import describe_address, host_of
from shield.cluster.link import ForwardFailed, ForwardStream, MemberLink
from shield.cluster.membership import Candidate, Membership
from shield.cluster.messages import ForwardReply, ForwardRequest, Heartbeat, ServiceState
from shield.config.model import DmzCluster, Uri
from shield.dns import Change, Discovery, resolve
from shield.mux.budget import BufferBudget
from shield.mux.config import MuxConfig
from shield.link.roles import QuietClientService
from shield.mux.errors import MuxError
from shield.mux.protocol import MuxProtocol
from shield.net import is_ipv4, is_ipv6, stream_client_endpoint, tcp_server_endpoint
from shield.ops.ratelog import RateLimitedLog
from shield.tls.transport import LinkTLSEndpoint, LinkTLSFactory
from shield.transports import IGatewayReactor

if TYPE_CHECKING:
    from shield.cluster.discovery import MulticastDiscovery

log = Logger(namespace="shield.cluster")

#: How long a draining member waits at most for its peers to acknowledge, in heartbeat intervals.
DRAIN_ACK_INTERVALS = 3
#: Connect timeout for member links.
CONNECT_TIMEOUT = 5.0


class LocalMember(Protocol):
    """What the node needs from its gateway."""

    def cluster_services(self) -> list[ServiceState]: ...

    def cluster_clients(self) -> int: ...

    @property
    def draining(self) -> bool: ...

    def serve_forward(self, request: ForwardRequest, balancer: str) -> tuple[ForwardReply, IProtocol | None]: ...


class _AcceptedMembers(Factory):
    """The member links that arrive: each protocol is told the peer's address."""

    noisy = False

    def __init__(self, node: "ClusterNode") -> None:
        self.node = node

    def buildProtocol(self, addr: IAddress | None) -> MuxProtocol:
        return self.node.accepted(addr).mux


class MembershipWaits:
    """Deferreds waiting for the membership to reach a state: every peer heard from at start,
    every peer aware that we drain. Each is checked when it is asked for, again at every event
    that can change the answer (a heartbeat heard, a link up or lost, our own tick, the moment a
    silent peer counts as gone), and once more when its time is up; nothing polls."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._checks: list[Callable[[], bool]] = []

    def until(
        self,
        reached: Callable[[bool], bool],
        seconds: float,
        changes_at: Callable[[], float | None] = lambda: None,
    ) -> Deferred[None]:
        """Fires once ``reached(expired)`` is true; it is called with ``expired`` True once
        ``seconds`` have passed (and must then return True). ``changes_at`` says when the answer
        may change with no event but the clock (None: only events change it)."""
        done: Deferred[None] = Deferred()
        again: list[IDelayedCall] = []  # the look at ``changes_at``, if one is due

        def check(expired: bool = False) -> bool:
            if done.called:
                return True
            for call in again:
                if call.active():
                    call.cancel()
            again.clear()
            if not reached(expired):
                when = changes_at()
                if when is not None and when < deadline:
                    again.append(self.clock.callLater(max(0.0, when - self.clock.seconds()), check))
                return False
            if timer.active():
                timer.cancel()
            done.callback(None)
            return True

        deadline = self.clock.seconds() + seconds
        timer = self.clock.callLater(seconds, check, True)
        if not check():
            self._checks.append(check)
        return done

    def changed(self) -> None:
        """Something that can change an answer happened: check every wait again."""
        if self._checks:
            pending, self._checks = self._checks, []
            self._checks += [check for check in pending if not check()]


class ClusterNode:
    def __init__(
        self,
        own_name: str,
        config: DmzCluster,
        local: LocalMember,
        reactor: IGatewayReactor,
        server_tls: IOpenSSLServerConnectionCreator,
        client_tls: IOpenSSLClientConnectionCreator,
        mux_config: MuxConfig,
        budget: BufferBudget | None = None,
    ) -> None:
        self.own_name = own_name
        self.budget = budget
        self.config = config
        self.cluster_name = config.name
        self.local = local
        self.clock = reactor
        self.reactor = reactor
        self.mux_config = mux_config
        self.membership = Membership(own_name)
        self.links: set[MemberLink] = set()
        self._server_tls = server_tls
        self._client_tls = client_tls
        self._dialers: dict[str, ClientService] = {}
        #: Member host names followed by DNS (a headless Service), by the ``members`` URI.
        self._followed: dict[Uri, Discovery] = {}
        #: Resolved addresses a name no longer lists: dialled no more once their link drops.
        self._retired: set[str] = set()
        self._seq = 0
        self._beat: LoopingCall | None = None
        self.port: IListeningPort | None = None
        self._stopping = False
        self._self_endpoints: set[str] = set()
        self.discovery: MulticastDiscovery | None = None
        #: Clients forwarded to each peer since its last heartbeat: heartbeats are a second
        #: apart, and a burst must not all go to the member that was least busy a second ago.
        self._forwarded_since: dict[str, int] = {}
        self._link_failures: dict[str, str] = {}  # endpoint dialled -> last reason logged
        self._bad_peers = RateLimitedLog(log, reactor)
        #: Who waits for the membership to reach a state (``settled``, ``announce_draining``).
        self._waits = MembershipWaits(reactor)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Deferred[IListeningPort]:
        factory = _AcceptedMembers(self)
        listening = tcp_server_endpoint(self.reactor, self.config.accept).listen(
            LinkTLSFactory(self._server_tls, False, factory)
        )

        def listening_now(port: IListeningPort) -> IListeningPort:
            self.port = port
            log.info("cluster {cluster}: member {name} listening on {uri}", cluster=self.cluster_name, name=self.own_name, uri=str(self.config.accept))
            for uri in self.config.members:
                self._add_member(uri)
            self._beat = LoopingCall(self.tick)
            self._beat.clock = self.clock
            self._beat.start(self.config.heartbeat_interval, now=False)
            if self.config.connect is not None:
                from shield.cluster.discovery import MulticastDiscovery

                self.discovery = MulticastDiscovery(self, self.config.connect, self.config.accept, self.reactor)
                self.discovery.start()
            return port

        return listening.addCallback(listening_now)

    def settled(self) -> Deferred[None]:
        """Fires once every static peer is heard from, or after 3 heartbeat intervals.

        A balancer that started before it knew its peers would send every client to itself, or
        refuse them while this member has no connector links yet.
        """

        def all_heard(expired: bool) -> bool:
            alive = self.alive_members()
            expected = len(self._dialers) + len(self._self_endpoints)
            if (expected and len(alive) >= expected - len(self._self_endpoints)) or expired:
                log.info("cluster {cluster}: {n} peers alive at start: {names}", cluster=self.cluster_name, n=len(alive), names=", ".join(alive) or "none")
                return True
            return False

        return self._waits.until(all_heard, DRAIN_ACK_INTERVALS * self.config.heartbeat_interval)

    def reconfigure(self, config: DmzCluster) -> None:
        """A reload: dial members added to ``members``, stop dialling removed ones (their links,
        if up, stay until they drop), and take a new heartbeat interval or member list."""
        old, self.config = self.config, config
        for uri in config.members:
            if uri not in old.members:
                self._add_member(uri)
        for uri in old.members:
            if uri not in config.members:
                discovery = self._followed.pop(uri, None)
                if discovery is not None:
                    discovery.stop()
                    for address in discovery.addresses:
                        self._stop_dialling(str(self._address_uri(uri, address)))
                else:
                    self._stop_dialling(str(uri))
        for discovery in self._followed.values():
            discovery.interval = config.resolve_interval
        if config.heartbeat_interval != old.heartbeat_interval and self._beat is not None and self._beat.running:
            self._beat.stop()
            self._beat = LoopingCall(self.tick)
            self._beat.clock = self.clock
            self._beat.start(config.heartbeat_interval, now=False)

    def _add_member(self, uri: Uri) -> None:
        """Dial a ``members`` URI; a host name is followed: every address it resolves to is dialled."""
        if uri == self.config.accept:
            return
        if is_ipv4(uri.host) or is_ipv6(uri.host):
            self.dial(uri)
            return
        if uri in self._followed or self._stopping:
            return
        discovery = Discovery(
            uri.host,
            lambda: resolve(uri),
            self.clock,
            self.config.resolve_interval,
            lambda change: self._member_addresses(uri, change),
            where=f"cluster {self.cluster_name}: members {uri}",
        )
        self._followed[uri] = discovery
        discovery.start()

    @staticmethod
    def _address_uri(uri: Uri, address: str) -> Uri:
        return Uri(uri.scheme, address, uri.port)

    def _member_addresses(self, uri: Uri, change: Change) -> None:
        """A members host name resolved: dial the new addresses, let the removed ones go."""
        for address in change.added:
            member = self._address_uri(uri, address)
            self._retired.discard(str(member))
            if member != self.config.accept:
                self.dial(member)
        for address in change.removed:
            self._stop_dialling(str(self._address_uri(uri, address)))
        if change.added or change.removed:
            log.info(
                "cluster {cluster}: members {uri} now resolves to {addresses}",
                cluster=self.cluster_name, uri=str(uri), addresses=", ".join(change.addresses),
            )  # fmt: skip

    def _stop_dialling(self, key: str) -> None:
        """Dial ``key`` no more. A link that is up stays until it drops: a member that leaves
        drains, and the clients forwarded to it over that link finish first."""
        if any(link.dialled and link.endpoint == key for link in self.links):
            self._retired.add(key)
            return
        self._retired.discard(key)
        service = self._dialers.pop(key, None)
        if service is not None:
            service.stopService()
            self._waits.changed()

    def dial(self, uri: Uri) -> None:
        key = str(uri)
        if key in self._dialers or key in self._self_endpoints or self._stopping:
            return
        endpoint = LinkTLSEndpoint(self._client_tls, stream_client_endpoint(self.reactor, uri, CONNECT_TIMEOUT))
        factory = Factory.forProtocol(lambda: self._member_link(True, key).mux)
        factory.noisy = False
        service = QuietClientService(endpoint, factory, retryPolicy=backoffPolicy(initialDelay=0.2, maxDelay=5.0), clock=self.clock)
        self._dialers[key] = service
        service.startService()

    def stop(self) -> Deferred[None]:
        """Stop dialling and heartbeats, close member links (the process is going away)."""
        self._stopping = True
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        if self.discovery is not None:
            self.discovery.stop()
        for discovery in self._followed.values():
            discovery.stop()
        stopping: list[Deferred[None]] = [service.stopService() for service in self._dialers.values()]
        for link in list(self.links):
            link.mux.close("member shutting down")  # the last close frames of forwarded clients go out
        if self.port is not None:
            stopped = self.port.stopListening()
            if stopped is not None:
                stopping.append(stopped)
        from twisted.internet.defer import DeferredList

        return DeferredList(stopping, consumeErrors=True).addCallback(lambda _: None)

    # -- links -----------------------------------------------------------------------------------

    def accepted(self, addr: IAddress | None) -> MemberLink:
        return self._member_link(False, describe_address(addr), host_of(addr))

    def _member_link(self, dialled: bool, endpoint: str, peer_host: str = "") -> MemberLink:
        return MemberLink(self, dialled, endpoint, self.mux_config, self.clock, self.budget, peer_host)

    def link_ready(self, link: MemberLink, name: str) -> bool:
        if name == self.own_name:
            if link.dialled:
                log.info("cluster: {endpoint} is this member itself; not dialling it", endpoint=link.endpoint)
                self._self_endpoints.add(link.endpoint)
                service = self._dialers.pop(link.endpoint, None)
                if service is not None:
                    service.stopService()
                self._waits.changed()
            return False
        self.links.add(link)
        self.membership.link_up(name)
        self._link_failures.pop(link.endpoint, None)
        return True

    def link_lost(self, link: MemberLink, reason: str) -> None:
        if link not in self.links:
            # A link that never became a member link: refused in TLS (by us or by the peer), or
            # cut during the handshake. Dialled: once per endpoint until it works or the reason
            # changes. Accepted: first line at once, then one a second with a count per host.
            if not self._stopping and link.endpoint not in self._self_endpoints:
                if link.dialled:
                    if self._link_failures.get(link.endpoint) != reason:
                        self._link_failures[link.endpoint] = reason
                        log.warn("cluster {cluster}: no member link to {endpoint}: {reason}",
                                 cluster=self.cluster_name, endpoint=link.endpoint, reason=reason)  # fmt: skip
                else:
                    host = link.peer_host
                    self._bad_peers.warn(host, f"cluster {self.cluster_name}: no member link from {link.endpoint}: {reason}")
            return
        self.links.discard(link)
        if link.dialled and link.endpoint in self._retired:
            self._stop_dialling(link.endpoint)
        name = link.peer_name or "?"
        if self.membership.link_down(name) and not self._stopping:
            log.warn("cluster {cluster}: member {name} is gone: link lost ({reason})", cluster=self.cluster_name, name=name, reason=reason)
        self._waits.changed()

    def serve_forward(self, request: ForwardRequest, balancer: str) -> tuple[ForwardReply, IProtocol | None]:
        """MemberHost: a peer's balancer forwards a client to this member's gateway."""
        return self.local.serve_forward(request, balancer)

    def heard(self, link: MemberLink, heartbeat: Heartbeat) -> None:
        if heartbeat.name != link.peer_name:
            from shield.cluster.messages import ClusterWireError

            raise ClusterWireError(f"heartbeat names {heartbeat.name[:64]!r} but the certificate says {link.peer_name!r}")
        if heartbeat.cluster != self.cluster_name:
            from shield.cluster.messages import ClusterWireError

            raise ClusterWireError(f"heartbeat is for cluster {heartbeat.cluster[:64]!r}")
        joined, changed = self.membership.heard(heartbeat, self.clock.seconds())
        self._forwarded_since.pop(heartbeat.name, None)
        if joined:
            log.info(
                "cluster {cluster}: member {name} is alive ({n} services live, {c} clients{d})",
                cluster=self.cluster_name, name=heartbeat.name, n=sum(s.live for s in heartbeat.services),
                c=heartbeat.clients, d=", draining" if heartbeat.draining else "",
            )  # fmt: skip
        elif changed and heartbeat.draining:
            log.info("cluster {cluster}: member {name} is draining", cluster=self.cluster_name, name=heartbeat.name)
        if changed and heartbeat.draining:
            self.tick()  # tell it at once that we have seen it
        self._waits.changed()

    # -- heartbeats --------------------------------------------------------------------------------

    def own_heartbeat(self) -> Heartbeat:
        now = self.clock.seconds()
        return Heartbeat(
            cluster=self.cluster_name,
            name=self.own_name,
            seq=self._seq,
            interval=self.config.heartbeat_interval,
            draining=self.local.draining,
            clients=self.local.cluster_clients(),
            services=tuple(self.local.cluster_services()),
            seen_draining=self.membership.draining_seen(now),
        )

    def tick(self) -> None:
        """Send our heartbeat on every link and note who fell silent (never raises: it is a loop)."""
        try:
            self._tick()
        except Exception:
            log.failure("cluster {cluster}: heartbeat failed", cluster=self.cluster_name)

    def _tick(self) -> None:
        self._seq += 1
        heartbeat = self.own_heartbeat()
        for link in list(self.links):
            link.send_heartbeat(heartbeat)
        for name in self.membership.expire(self.clock.seconds()):
            log.warn(
                "cluster {cluster}: member {name} is gone: no heartbeat for {n} intervals",
                cluster=self.cluster_name, name=name, n=3,
            )  # fmt: skip
        self._waits.changed()  # a silent member counts as gone from this tick on

    def announce_draining(self) -> Deferred[None]:
        """Send the draining flag now; fire once every live peer has seen it (or after 3 intervals)."""
        self.tick()

        def all_know(expired: bool) -> bool:
            seen, unseen = self.membership.peers_seeing_drain(self.clock.seconds())
            if not unseen:
                log.info("cluster {cluster}: peers know we drain: {peers}", cluster=self.cluster_name, peers=", ".join(seen) or "(none alive)")
                return True
            if expired:
                log.warn("cluster {cluster}: draining without acknowledgement from {peers}", cluster=self.cluster_name, peers=", ".join(unseen))
                return True
            return False

        def first_silence() -> float | None:
            _, unseen = self.membership.peers_seeing_drain(self.clock.seconds())
            return min((at for at in map(self.membership.gone_at, unseen) if at is not None), default=None)

        return self._waits.until(all_know, DRAIN_ACK_INTERVALS * self.config.heartbeat_interval, first_silence)

    # -- balancing ---------------------------------------------------------------------------------

    def candidates(self, balancer: Uri, exclude: set[str | None]) -> list[Candidate]:
        return self.membership.candidates(
            balancer, self.own_heartbeat(), self.clock.seconds(), exclude, self._forwarded_since
        )

    def forwarded_to(self, member: str) -> None:
        self._forwarded_since[member] = self._forwarded_since.get(member, 0) + 1

    def alive_members(self) -> list[str]:
        return sorted(view.name for view in self.membership.alive(self.clock.seconds()))

    def forward(self, member: str, request: ForwardRequest, timeout: float) -> Deferred[ForwardStream]:
        """Open a forward stream to ``member``; fires once it accepted the client."""
        for link in sorted(self.links, key=lambda l: len(l.mux.streams)):
            if link.peer_name != member or not link.usable:
                continue
            stream = ForwardStream(request, member, timeout, self.clock)
            try:
                link.mux.open_stream(stream)
            except MuxError:
                continue
            return stream.answered
        from twisted.internet.defer import fail

        return fail(ForwardFailed(503, f"no usable link to member {member!r}", retry=True))

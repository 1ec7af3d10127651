"""The DMZ backplane: mutual-TLS links dialled in by connectors, and their announcements.

A link is usable only after its connector announced itself on the control stream (its first
stream) and the DMZ accepted: the announced name must be the identity in its certificate, and
only the services ``dmz.backplane.connectors`` lists for that identity are accepted. Everything
refused is said in the reply (so the connector logs it too) and in one log line here.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IAddress, IOpenSSLServerConnectionCreator, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from shield.deadline import Deadline
from shield.addresses import describe_address, host_of
from shield.config.model import DmzBackplane, DmzConfig, Uri
from shield.config.mux import mux_config_for
from shield.dmz.links import ConnectorLink, LinkRegistry
from shield.link.wire import Announce, AnnounceReply, MessageReader, WireError, encode
from shield.mux.budget import BufferBudget
from shield.mux.protocol import MuxProtocol
from shield.link.roles import link_mux, tune_link_socket, why_link_ended
from shield.link.websocket import LinkWebSocketServerFactory
from shield.ops.ratelog import RateLimitedLog
from shield.tls.contexts import refusal_logged
from shield.tls.identity import negotiated_suite, peer_identity
from shield.tls.transport import LinkTLSFactory
from shield.transports import IStreamTransport

#: How long a connector has, once TLS is up, to announce itself.
ANNOUNCE_TIMEOUT = 10.0

log = Logger(namespace="shield.dmz.backplane")


class DmzLinkEnd:
    """One connector link at the DMZ (yamux server side); its ``mux`` is the protocol."""

    def __init__(self, backplane: "BackplaneFactory", peer: str, peer_host: str = "") -> None:
        self.backplane = backplane
        self.mux = link_mux(
            self, client=False, config=mux_config_for(backplane.config.backplane),
            stream_factory=_ControlStreamFactory(self), clock=backplane.clock, budget=backplane.budget,
        )  # fmt: skip
        self.peer = peer
        self.peer_host = peer_host or peer  # the key of its rate-limited log lines
        self.identity: str | None = None
        self.link: ConnectorLink | None = None
        self._control_taken = False
        self._announce_deadline = Deadline(backplane.clock)
        self.control: ControlStream | None = None
        self._said_why = False

    # -- MuxOwner ------------------------------------------------------------------------------

    def mux_connected(self) -> None:
        tune_link_socket(self.mux)
        self._announce_deadline.start(ANNOUNCE_TIMEOUT, self._no_announcement)

    def mux_secured(self) -> None:
        transport = self.mux.transport
        self.identity = peer_identity(transport)
        log.info(
            "link from {peer}: TLS up ({suite}), connector identity {identity!r}",
            peer=self.peer, suite=negotiated_suite(transport), identity=self.identity,
        )  # fmt: skip

    def mux_going_away(self) -> None:
        """Drain: close the control stream too, so the link closes when the last tunnel ends."""
        if self.control is not None and self.control.transport is not None:
            self.control.transport.loseConnection()

    def stream_rejected(self, stream_id: int, reason: str) -> bool:
        return False

    def mux_lost(self, reason: Failure) -> None:
        self._announce_deadline.cancel()
        if self.link is not None:
            self.backplane.registry.remove(self.link)
            log.info(
                "link from {peer}: connector {identity!r} link down: {reason}",
                peer=self.peer, identity=self.identity, reason=why_link_ended(self.mux, reason),
            )  # fmt: skip
        elif self.identity is None and not self._said_why and not refusal_logged(self.mux.transport):
            # (a certificate the TLS layer refused has had its one line, naming why)
            self.backplane.bad_peers.warn(
                ("before TLS", self.peer_host),
                f"link from {self.peer}: closed before TLS completed: {why_link_ended(self.mux, reason)}",
            )

    # -- the announcement ----------------------------------------------------------------------

    def take_control_stream(self) -> bool:
        """Only the connector's first stream is the control stream; it may open no other."""
        if self._control_taken:
            return False
        self._control_taken = True
        return True

    def announced(self, announce: Announce) -> AnnounceReply:
        """Judge an announcement; register the link when anything was accepted."""
        self._announce_deadline.cancel()
        dmz = self.backplane.config
        identity = self.identity
        if identity is None:
            return self._refuse(announce, "no client certificate identity")
        if announce.name != identity:
            return self._refuse(
                announce, f"announced name {announce.name!r} is not the certificate identity {identity!r}"
            )
        allowed = dmz.backplane.connectors.get(identity)
        if allowed is None:
            return self._refuse(announce, f"connector {identity!r} is not in dmz.backplane.connectors")
        configured = {service.name for service in dmz.services}
        accepted: list[str] = []
        refused: list[tuple[str, str]] = []
        for service in announce.services:
            if service not in configured:
                refused.append((service, f"DMZ {dmz.name!r} has no service {service!r}"))
            elif service not in allowed:
                refused.append(
                    (service, f"not listed for connector {identity!r} in dmz.backplane.connectors")
                )
            else:
                accepted.append(service)
        for service, reason in refused:
            log.warn(
                "link from {peer}: connector {identity!r} may not serve {service!r}: {reason}",
                peer=self.peer, identity=identity, service=service, reason=reason,
            )
        self.link = ConnectorLink(
            mux=self.mux,
            connector=identity,
            peer=self.peer,
            priority=announce.priority,
            services=frozenset(accepted),
            announced=frozenset(announce.services),
        )
        self.backplane.registry.add(self.link)
        # A connector's GoAway makes the link unusable long before it closes: count it out now.
        self.mux.when_peer_goes_away().addCallback(lambda _: self.backplane.registry.changed())
        log.info(
            "link from {peer}: connector {identity!r} (priority {priority}, version {version}) serves {services}",
            peer=self.peer, identity=identity, priority=announce.priority, version=announce.version,
            services=", ".join(accepted) or "nothing",
        )
        return AnnounceReply(
            accepted=True, dmz_name=dmz.name, services=tuple(accepted), refused=tuple(refused), message=""
        )

    def announced_again(self, announce: Announce) -> AnnounceReply:
        """A repeated ANNOUNCE: same connector, possibly other services or priority."""
        link = self.link
        dmz = self.backplane.config
        if link is None or announce.name != link.connector:
            return self._refuse(announce, f"announced name {announce.name!r} is not this link's connector")
        before = link.services
        now = frozenset(announce.services)
        link.withdrawn = (link.withdrawn | (link.announced - now)) - now
        link.announced = now
        link.priority = announce.priority
        link.services = allowed_services(dmz, link)
        added, withdrawn = sorted(link.services - before), sorted(before - link.services)
        refused = tuple(
            (service, f"not offered by DMZ {dmz.name!r} to connector {link.connector!r}")
            for service in announce.services
            if service not in link.services
        )
        self.backplane.registry.changed()
        log.info(
            "link from {peer}: connector {identity!r} announced again (priority {priority}): serves {services}"
            "{change}",
            peer=self.peer, identity=link.connector, priority=link.priority,
            services=", ".join(sorted(link.services)) or "nothing",
            change=(f" (withdrew {', '.join(withdrawn)})" if withdrawn else "") + (f" (offers again {', '.join(added)})" if added else ""),
        )  # fmt: skip
        return AnnounceReply(
            accepted=True, dmz_name=dmz.name, services=tuple(sorted(link.services)), refused=refused, message=""
        )

    def _refuse(self, announce: Announce, reason: str) -> AnnounceReply:
        log.warn("link from {peer}: refused connector announcement: {reason}", peer=self.peer, reason=reason)
        return AnnounceReply(
            accepted=False,
            dmz_name=self.backplane.config.name,
            services=(),
            refused=tuple((service, reason) for service in announce.services),
            message=reason,
        )

    def _no_announcement(self) -> None:
        self._said_why = True
        what = "TLS handshake" if self.identity is None else "announcement"
        self.backplane.bad_peers.warn(
            ("no announcement", self.peer_host),
            f"link from {self.peer}: no {what} within {ANNOUNCE_TIMEOUT:g} s; closed",
        )
        if self.mux.transport is not None:
            self.mux.transport.abortConnection()


class ControlStream(Protocol):
    """The DMZ end of a link's control stream: reads ANNOUNCE, answers ANNOUNCE_REPLY.

    A connector may announce again on the same stream (after a reload of its configuration):
    the link then serves the newly announced services at the new priority, without a new link.
    """

    transport: IStreamTransport  # connected before any event reaches the protocol

    def __init__(self, link: DmzLinkEnd) -> None:
        self.link = link
        self._reader = MessageReader((Announce,))
        self._first = True

    def dataReceived(self, data: bytes) -> None:
        while data:
            try:
                announce, data = self._reader.feed(data)
            except WireError as problem:
                log.warn("link from {peer}: bad announcement: {problem}", peer=self.link.peer, problem=problem)
                self.link.mux.close("bad announcement")  # (not loseConnection: TLS would wait for the mux)
                return
            if announce is None:
                return
            self._reader = MessageReader((Announce,))
            assert isinstance(announce, Announce)
            first, self._first = self._first, False
            reply = self.link.announced(announce) if first else self.link.announced_again(announce)
            self.transport.write(encode(reply))
            if not reply.accepted:
                self.link.mux.close("announcement refused")  # the reply goes out first
                return


class _ControlStreamFactory(Factory):
    def __init__(self, link: DmzLinkEnd) -> None:
        self.link = link

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        if not self.link.take_control_stream():
            log.warn("link from {peer}: connector opened an extra stream; refused", peer=self.link.peer)
            return None
        control = ControlStream(self.link)
        self.link.control = control
        return control


class BackplaneFactory(Factory):
    """Builds a ``DmzLinkEnd`` per accepted backplane connection and returns its mux (wrap it in TLS)."""

    def __init__(self, config: DmzConfig, registry: LinkRegistry, clock: IReactorTime, budget: BufferBudget | None = None) -> None:
        self.config = config
        self.registry = registry
        self.clock = clock
        self.budget = budget
        self.links: set[DmzLinkEnd] = set()
        self.bad_peers = RateLimitedLog(log, clock)
        self.noisy = False

    def upgrade_refused(self, addr: IAddress, reason: str) -> None:
        """A ``wss://`` link's upgrade was refused (wrong path, not a shield link): one line."""
        self.bad_peers.warn(
            ("upgrade refused", host_of(addr)),
            f"link from {describe_address(addr)}: WebSocket upgrade refused: {reason}",
        )

    def buildProtocol(self, addr: IAddress | None) -> MuxProtocol:
        link = DmzLinkEnd(self, describe_address(addr), host_of(addr))
        link.mux.factory = self
        self.links.add(link)
        link.mux.when_closed().addBoth(lambda _: self.links.discard(link))
        return link.mux


def backplane_ports(
    config: DmzBackplane, links: "BackplaneFactory", tls: IOpenSSLServerConnectionCreator
) -> list[tuple[Uri, IProtocolFactory]]:
    """A port per ``accept`` URI: mutual TLS, then the mux straight (``tls://``) or a WebSocket
    carrying it (``wss://``, on the URI's path)."""
    ports: list[tuple[Uri, IProtocolFactory]] = []
    for uri in config.accept:
        above_tls: IProtocolFactory = links
        if uri.scheme == "wss":
            above_tls = LinkWebSocketServerFactory(links, uri, config.keepalive, links.upgrade_refused)
        ports.append((uri, LinkTLSFactory(tls, False, above_tls)))
    return ports


def known_identity_check(backplane: "BackplaneFactory") -> Callable[[str], bool]:
    """For the TLS verify callback: is this certificate identity a configured connector?

    It reads the configuration in force at each handshake, so a reload applies to new links.
    """
    return lambda identity: identity in backplane.config.backplane.connectors


def allowed_services(config: DmzConfig, link: ConnectorLink) -> frozenset[str]:
    """What ``link`` may serve under ``config``: announced, configured, listed for its connector."""
    listed = set(config.backplane.connectors.get(link.connector, ()))
    tunnels = {service.name for service in config.services if not service.is_balancer}
    return frozenset(link.announced & listed & tunnels)

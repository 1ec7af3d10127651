"""The connector's pool: for every DMZ endpoint, ``links`` slots that each keep one link up.

A slot is Twisted's ``ClientService`` (the reconnecting client the cluster uses too), with
shield's ``Backoff`` as its retry policy: after a failure or a lost link it waits a random delay
between 0 and 0.5 s doubling up to 30 s before dialling again, and the backoff starts over only
once a link has stayed up for 10 s, so a DMZ that accepts and then drops links at once is not
hammered (``ClientService``'s own count starts over at every connection), while a healthy one is
rejoined fast.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.addresses import host_port
from shield.internal.backend import BackendStreamFactory
from shield.internal.link import ConnectorLinkEnd
from shield.config.model import KeepaliveSettings, Uri
from shield.link.roles import QuietClientService
from shield.link.websocket import LinkWebSocketEndpoint
from shield.link.wire import Announce
from shield.mux import MuxConfig
from shield.mux.budget import BufferBudget
from shield.mux.protocol import MuxProtocol
from shield.net import is_ipv6
from shield.proxy.endpoint import ConnectProxyEndpoint, ProxyRoute
from shield.tls.contexts import describe_tls_failure
from shield.tls.transport import LinkTLSEndpoint
from shield.transports import IGatewayReactor

log = Logger(namespace="shield.internal.pool")

CONNECT_TIMEOUT = 10.0


@dataclass
class Backoff:
    """Exponential backoff with full jitter; ``reset_after`` seconds of uptime start it over."""

    initial: float = 0.5
    cap: float = 30.0
    reset_after: float = 10.0
    random: Callable[[], float] = field(default=random.random)
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return self.random() * ceiling

    def link_lasted(self, seconds: float) -> None:
        if seconds >= self.reset_after:
            self.attempt = 0


class PoolHost(TypingProtocol):
    """What the slots need from the connector gateway (shield/internal/gateway.py)."""

    @property
    def mux_config(self) -> MuxConfig: ...

    @property
    def budget(self) -> BufferBudget: ...

    def announcement(self) -> Announce:
        """What a link announces now."""

    def backend_streams(self, endpoint: str) -> BackendStreamFactory:
        """A fresh factory for the streams one link to ``endpoint`` carries to the backends."""

    def link_changed(self) -> None:
        """A slot's link came up or went down."""


class LinkSlot:
    """Keeps one link to one endpoint up until drained; the ``LinkHost`` of its links."""

    def __init__(
        self, host: PoolHost, endpoint: str, dial: IStreamClientEndpoint, index: int, clock: IReactorTime
    ) -> None:
        self.host = host
        self.clock = clock
        self.endpoint = endpoint
        self.index = index
        self.backoff = Backoff()
        self.link: ConnectorLinkEnd | None = None  # announced and accepted
        self._current: ConnectorLinkEnd | None = None  # connected, announced or not
        self._last_failure = ""
        self._reason = ""
        self._quiet_retry = False
        self._draining = False
        self._service = QuietClientService(
            _ObservedDial(dial, self._dial_failed),
            _LinkFactory(self),
            retryPolicy=self._next_delay,
            clock=clock,
        )

    def start(self) -> None:
        self._service.startService()

    # -- LinkHost ------------------------------------------------------------------------------

    def announcement(self) -> Announce:
        return self.host.announcement()

    def link_up(self, link: ConnectorLinkEnd) -> None:
        self.link = link
        self._last_failure = ""
        self.host.link_changed()

    def link_lost(self, link: ConnectorLinkEnd, uptime: float, reason: str) -> None:
        was_up = self.link is link
        if was_up:
            self.link = None
            self.host.link_changed()
        if self._current is link:
            self._current = None
        self.backoff.link_lasted(uptime)
        if self._draining:
            return
        if was_up:
            log.warn("link to {endpoint}: lost after {uptime:.1f} s: {reason}", endpoint=self.endpoint, uptime=uptime, reason=reason)
        self._failed(reason, quiet=was_up)

    # -- the reconnecting client ---------------------------------------------------------------

    def new_link(self) -> ConnectorLinkEnd:
        host = self.host
        link = ConnectorLinkEnd(self, host.mux_config, host.backend_streams(self.endpoint), self.clock, host.budget)
        self._current = link
        return link

    def _dial_failed(self, failure: Failure) -> None:
        if not self._draining:
            self._failed(describe_tls_failure(failure))

    def _failed(self, reason: str, quiet: bool = False) -> None:
        """Remembered for the retry policy, which ``ClientService`` calls next."""
        self._quiet_retry = quiet
        self._reason = reason

    def _next_delay(self, failed_attempts: int) -> float:
        """The retry policy: shield's backoff (``failed_attempts``, ClientService's own count,
        starts over at every connection, accepted or not, so it is not used)."""
        delay = self.backoff.next_delay()
        reason = self._reason
        if not self._quiet_retry and (reason != self._last_failure or self.backoff.attempt <= 1):
            log.warn(
                "link to {endpoint}: {reason}; retrying in {delay:.2f} s",
                endpoint=self.endpoint, reason=reason, delay=delay,
            )  # fmt: skip
        self._last_failure = reason
        return delay

    def drain(self) -> Deferred[None]:
        """Stop redialling; GoAway on the link; fires once it is closed."""
        self._draining = True
        link = self._current
        if link is None or not link.mux.is_open:
            return self._service.stopService()
        closed: Deferred[None] = Deferred()

        def stop(_: object) -> None:
            self._service.stopService().chainDeferred(closed)

        link.mux.go_away().addBoth(stop)
        return closed

    def abort(self, reason: str) -> None:
        link = self._current
        if link is not None and link.mux.is_open:
            link.mux.abort(reason)

    @property
    def tunnels(self) -> int:
        link = self._current
        return 0 if link is None else link.tunnels


class _LinkFactory(Factory):
    """A slot's links: each connection is a new ``ConnectorLinkEnd``, whose mux is the protocol."""

    noisy = False

    def __init__(self, slot: LinkSlot) -> None:
        self.slot = slot

    def buildProtocol(self, addr: IAddress | None) -> MuxProtocol:
        return self.slot.new_link().mux


@implementer(IStreamClientEndpoint)
class _ObservedDial:
    """The slot's endpoint, telling the slot why a dial failed before ``ClientService`` retries."""

    def __init__(self, dial: IStreamClientEndpoint, failed: Callable[[Failure], None]) -> None:
        self._dial = dial
        self._failed = failed

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        attempt: Deferred[IProtocol] = self._dial.connect(factory)

        def observe(failure: Failure) -> Failure:
            self._failed(failure)
            return failure

        return attempt.addErrback(observe)


@dataclass(eq=False)
class Endpoint:
    """One DMZ address and port the connector keeps ``links`` slots to.

    ``owners`` are the ``connect`` URIs whose host currently resolves to it: two URIs (or two
    names) that lead to one address share its slots, and the endpoint goes once no URI leads there.
    """

    label: str
    address: str  # the address the label names (the label is never parsed back)
    slots: list[LinkSlot]
    owners: set[object] = field(default_factory=set)

    @property
    def links_up(self) -> int:
        return sum(1 for slot in self.slots if slot.link is not None)


def endpoint_for(
    reactor: IGatewayReactor,
    address: str,
    uri: Uri,
    tls_options: IOpenSSLClientConnectionCreator,
    keepalive: KeepaliveSettings,
    proxy: Callable[[], ProxyRoute] | None = None,
) -> IStreamClientEndpoint:
    """TLS to ``address`` at ``uri``'s port, straight or, with ``proxy``, through a CONNECT tunnel
    (``address`` is then the configured host name, which the proxy resolves at every dial); for a
    ``wss://`` URI a WebSocket on its path over that TLS."""
    if proxy is not None:
        plain: IStreamClientEndpoint = ConnectProxyEndpoint(reactor, proxy, address, uri.port, timeout=CONNECT_TIMEOUT)
    else:
        plain_class = TCP6ClientEndpoint if is_ipv6(address) else TCP4ClientEndpoint
        plain = plain_class(reactor, address, uri.port, timeout=CONNECT_TIMEOUT)
    tls = LinkTLSEndpoint(tls_options, plain)
    if uri.scheme == "wss":
        return LinkWebSocketEndpoint(tls, uri, keepalive)
    return tls


def endpoint_label(address: str, uri: Uri) -> str:
    """An endpoint's name in logs and in shield_links_up{endpoint}: ``host:port`` for a TLS link,
    the whole URI (with the address) for a WebSocket link. Never parsed back."""
    where = host_port(address, uri.port)
    return where if uri.scheme == "tls" else f"{uri.scheme}://{where}{uri.path}"

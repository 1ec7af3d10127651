"""The connector's pool: for every DMZ endpoint, ``links`` slots that each keep one link up.

Each slot dials, and after a failure or a lost link waits a backoff with full jitter (a random
delay between 0 and 0.5 s doubling up to 30 s) before dialling again; the backoff starts over once
a link has stayed up for 10 s, so a flapping DMZ is not hammered but a healthy one is rejoined fast.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IDelayedCall, IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from shield.addresses import host_port
from shield.net import is_ipv6
from shield.tls.transport import LinkTLSEndpoint
from shield.transports import IGatewayReactor

if TYPE_CHECKING:
    from shield.internal.gateway import InternalGateway
    from shield.internal.link import ConnectorLinkProtocol

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


class LinkSlot:
    """Keeps one link to one endpoint up until stopped."""

    def __init__(self, gateway: "InternalGateway", endpoint: str, dial: IStreamClientEndpoint, index: int) -> None:
        self.gateway = gateway
        self.clock = gateway.reactor
        self.endpoint = endpoint
        self.index = index
        self.backoff = Backoff()
        self.link: ConnectorLinkProtocol | None = None  # announced and accepted
        self._dial = dial
        self._protocol: ConnectorLinkProtocol | None = None
        self._attempt: Deferred | None = None
        self._timer: IDelayedCall | None = None
        self._stopped = True
        self._last_failure = ""

    def start(self) -> None:
        self._stopped = False
        self._connect()

    def _connect(self) -> None:
        self._timer = None
        if self._stopped:
            return
        from shield.internal.link import ConnectorLinkProtocol

        factory = Factory.forProtocol(lambda: ConnectorLinkProtocol(self, self.gateway.mux_config))
        factory.noisy = False
        self._attempt = self._dial.connect(factory)
        self._attempt.addCallbacks(self._connected, self._failed)

    def _connected(self, protocol: "ConnectorLinkProtocol") -> None:
        self._attempt = None
        self._protocol = protocol

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        if self._stopped:
            return
        from shield.tls.contexts import describe_tls_failure

        self._retry(describe_tls_failure(failure))

    def link_up(self, protocol: "ConnectorLinkProtocol") -> None:
        self.link = protocol
        self._last_failure = ""
        self.gateway.link_changed()

    def link_lost(self, protocol: "ConnectorLinkProtocol", uptime: float, reason: str) -> None:
        was_up = self.link is protocol
        if was_up:
            self.link = None
            self.gateway.link_changed()
        if self._protocol is protocol:
            self._protocol = None
        self.backoff.link_lasted(uptime)
        if self._stopped:
            return
        if was_up:
            log.warn("link to {endpoint}: lost after {uptime:.1f} s: {reason}", endpoint=self.endpoint, uptime=uptime, reason=reason)
        self._retry(reason, quiet=was_up)

    def _retry(self, reason: str, quiet: bool = False) -> None:
        delay = self.backoff.next_delay()
        if not quiet and (reason != self._last_failure or self.backoff.attempt <= 1):
            log.warn(
                "link to {endpoint}: {reason}; retrying in {delay:.2f} s",
                endpoint=self.endpoint, reason=reason, delay=delay,
            )
        self._last_failure = reason
        self._timer = self.clock.callLater(delay, self._connect)

    def drain(self) -> Deferred:
        """Stop redialling; GoAway on the link; fires once it is closed."""
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._attempt is not None:
            attempt, self._attempt = self._attempt, None
            attempt.cancel()
        protocol = self._protocol
        if protocol is None or protocol.transport is None:
            return succeed(None)
        return protocol.go_away()

    def abort(self, reason: str) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.is_open:
            protocol.abort(reason)

    @property
    def tunnels(self) -> int:
        protocol = self._protocol
        return 0 if protocol is None else max(0, len(protocol.streams) - 1)


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
    reactor: IGatewayReactor, address: str, port: int, tls_options: IOpenSSLClientConnectionCreator
) -> IStreamClientEndpoint:
    plain_class = TCP6ClientEndpoint if is_ipv6(address) else TCP4ClientEndpoint
    plain = plain_class(reactor, address, port, timeout=CONNECT_TIMEOUT)
    return LinkTLSEndpoint(tls_options, plain)


endpoint_label = host_port  # an endpoint's name in logs and in shield_links_up{endpoint}

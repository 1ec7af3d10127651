"""Admission of public clients: how many a service, the gateway and one source address may have.

A client is counted from the moment its connection is accepted (before any handshake), so a flood
of connections that never finish a handshake fills its own quota and nobody else's. A refused
client costs one log line (at most one per second per service and limit, with a count), one
metric sample and a clear answer: HTTP 503 for WebSocket clients, a close for raw TCP and TLS.
"""

from __future__ import annotations

from collections.abc import Hashable

import weakref
from collections import Counter
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from shield.refusal import Refusal
from shield.config.model import ClientLimits
from shield.ops.metrics import Metrics
from shield.tls.transport import handshake_pending
from shield.transports import IStreamTransport
from shield.ops.ratelog import RateLimitedLog
from shield.ops.http import http_response

log = Logger(namespace="shield.dmz.admission")

#: Seconds between two log lines about the same refused limit of the same service.
LOG_EVERY = 1.0




class Ticket:
    """One admitted client; ``release`` when it is gone (twice is harmless)."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class ClientGate:
    """Counts open clients per gateway, per service and per source address."""

    def __init__(self, gateway: ClientLimits, metrics: Metrics, clock: IReactorTime) -> None:
        self.gateway = gateway
        self.metrics = metrics
        self.clock = clock
        self.total = 0
        self.per_service: Counter[str] = Counter()
        self.per_source: Counter[tuple[str, str]] = Counter()  # (service, host)
        self._refusals = RateLimitedLog(log, clock, LOG_EVERY, summary=_refusals_summary)
        #: Connection tickets by transport, for connections whose protocol changes on the way
        #: (an HTTP channel handing its socket to a WebSocket protocol).
        self._by_transport: "weakref.WeakKeyDictionary[object, list[Ticket]]" = weakref.WeakKeyDictionary()

    def connection(self, host: str, client: str = "") -> Ticket | Refusal:
        """A new connection on any public port, before anything is read: the gateway's limits."""
        limits = self.gateway
        refusal = None
        if limits.max_connections and self.total >= limits.max_connections:
            refusal = Refusal(503, "max_connections", f"too many connections: the gateway has {limits.max_connections} open")
        elif limits.max_connections_per_source and self.per_source[("", host)] >= limits.max_connections_per_source:
            refusal = Refusal(
                503, "max_connections_per_source",
                f"too many connections from {host}: {limits.max_connections_per_source} open to this gateway",
            )  # fmt: skip
        if refusal is not None:
            self._refused("", refusal, client or host)
            return refusal
        return self._count("", host, total=True)

    def hold(self, transport: object, ticket: Ticket) -> None:
        """Tie ``ticket`` to the socket: released when it closes, whichever protocol sees that."""
        self._by_transport.setdefault(transport, []).append(ticket)

    def release(self, transport: object) -> None:
        """The connection on ``transport`` is gone: release every ticket held for it."""
        tickets = self._by_transport.pop(transport, None) if transport is not None else None
        for ticket in tickets or ():
            ticket.release()

    def admit(self, service: str, limits: ClientLimits, host: str, client: str = "") -> Ticket | Refusal:
        """A client of ``service`` (once the service is known): that service's limits."""
        refusal = None
        if limits.max_connections and self.per_service[service] >= limits.max_connections:
            refusal = Refusal(503, "max_connections", f"too many connections: service {service!r} has {limits.max_connections} open")
        elif limits.max_connections_per_source and self.per_source[(service, host)] >= limits.max_connections_per_source:
            refusal = Refusal(
                503, "max_connections_per_source",
                f"too many connections from {host}: {limits.max_connections_per_source} open to {service!r}",
            )  # fmt: skip
        if refusal is not None:
            self._refused(service, refusal, client or host)
            return refusal
        return self._count(service, host, total=False)

    def _count(self, service: str, host: str, total: bool) -> Ticket:
        if total:
            self.total += 1
        else:
            self.per_service[service] += 1
        self.per_source[(service, host)] += 1

        def release() -> None:
            if total:
                self.total -= 1
            else:
                self.per_service[service] -= 1
            self.per_source[(service, host)] -= 1
            if self.per_source[(service, host)] <= 0:
                del self.per_source[(service, host)]

        return Ticket(release)

    def _refused(self, service: str, refusal: Refusal, host: str) -> None:
        self.metrics.refusals.labels(service=service, limit=refusal.label).inc()
        where = f" -> {service}" if service else ""
        self.note(service, refusal.label, f"client {host}{where}: refused ({refusal.status}): {refusal.reason}")

    def note(self, service: str, limit: str, line: str) -> None:
        """Log a refusal: the first at once; under a flood, one line a second with the count."""
        self._refusals.warn((service, limit), line)


def _refusals_summary(key: Hashable, more: int, last: str, every: float) -> str:
    assert isinstance(key, tuple)  # (service, limit), as note() makes them
    return f"{more} more refused by {key[1]} for {key[0]!r} in the last second (last: {last})"


class Refused(Protocol):
    """What a connection refused at accept gets: an HTTP 503 with the reason (``http``), or a close."""

    transport: IStreamTransport  # connected before any event reaches the protocol

    def __init__(self, refusal: Refusal, http: bool) -> None:
        self.refusal = refusal
        self.http = http

    def connectionMade(self) -> None:
        if self.http:
            self.transport.write(http_response(self.refusal.status, self.refusal.reason))
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()




def finish(transport: IStreamTransport) -> None:
    """Close after what was written; cut at once if TLS never got going (a TLS transport holds
    writes until its handshake is done, and would then wait for ever)."""
    if handshake_pending(transport):
        transport.abortConnection()
    else:
        transport.loseConnection()

"""Admission of public clients: how many a service, the gateway and one source address may have.

A client is counted from the moment its connection is accepted (before any handshake), so a flood
of connections that never finish a handshake fills its own quota and nobody else's. A refused
client costs one log line (at most one per second per service and limit, with a count), one
metric sample and a clear answer: HTTP 503 for WebSocket clients, a close for raw TCP and TLS.
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from shield.config.model import ClientLimits
from shield.ops.metrics import Metrics
from shield.transports import IStreamTransport

log = Logger(namespace="shield.dmz.admission")

#: Seconds between two log lines about the same refused limit of the same service.
LOG_EVERY = 1.0


@dataclass(frozen=True)
class Refusal:
    status: int  # HTTP status for a WebSocket client
    limit: str  # metric label
    reason: str  # one line, for the client and the log


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
        self._quiet_until: dict[tuple[str, str], float] = {}
        #: Connection tickets by transport, for connections whose protocol changes on the way
        #: (an HTTP channel handing its socket to a WebSocket protocol).
        self._by_transport: "weakref.WeakKeyDictionary[object, list[Ticket]]" = weakref.WeakKeyDictionary()
        self._unlogged: Counter[tuple[str, str]] = Counter()

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
        self.metrics.refusals.labels(service=service, limit=refusal.limit).inc()
        where = f" -> {service}" if service else ""
        self.note(service, refusal.limit, f"client {host}{where}: refused ({refusal.status}): {refusal.reason}")

    def note(self, service: str, limit: str, line: str) -> None:
        """Log a refusal: the first at once; under a flood, one line a second with the count."""
        key = (service, limit)
        now = self.clock.seconds()
        if now < self._quiet_until.get(key, 0.0):
            if not self._unlogged[key]:
                self.clock.callLater(self._quiet_until[key] - now, self._summarise, key, line)
            self._unlogged[key] += 1
            return
        log.warn("{line}", line=line)
        self._quiet_until[key] = now + LOG_EVERY

    def _summarise(self, key: tuple[str, str], last: str) -> None:
        more = self._unlogged.pop(key, 0)
        if more:
            log.warn("{more} more refused by {limit} for {service!r} in the last second (last: {last})",
                     more=more, limit=key[1], service=key[0], last=last)  # fmt: skip
            self._quiet_until[key] = self.clock.seconds() + LOG_EVERY


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


_PHRASES = {302: "Found", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            408: "Request Timeout", 431: "Request Header Fields Too Large", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}  # fmt: skip


def http_response(status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete plain-text HTTP/1.1 answer whose body is the one-line reason."""
    body = (reason.splitlines()[0] + "\n").encode("utf-8") if reason else b""
    lines = [f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}", "Content-Type: text/plain; charset=utf-8",
             f"Content-Length: {len(body)}", "Connection: close"]  # fmt: skip
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def host_of(addr: object) -> str:
    return str(getattr(addr, "host", addr))


def client_of(addr: object) -> str:
    """``host:port`` for log lines (``[v6]:port`` for IPv6)."""
    host, port = getattr(addr, "host", None), getattr(addr, "port", None)
    if host is None or port is None:
        return str(addr)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def finish(transport: IStreamTransport) -> None:
    """Close after what was written; cut at once if TLS never got going (a TLS transport holds
    writes until its handshake is done, and would then wait for ever)."""
    if getattr(transport, "_handshakeDone", True) is False:
        transport.abortConnection()
    else:
        transport.loseConnection()

"""One public service at the DMZ: opening its tunnels, counting them, saying why one failed.

Both frontplanes (raw TCP/TLS and WebSocket) go through here, so every client gets the same
link choice, the same metrics and the same one-line log for a refusal.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger

from shield.config.model import DmzService
from shield.dmz.admission import ClientGate, Refusal, Ticket
from shield.dmz.throttle import IdleWatch, PacedSide
from shield.dmz.tunnel import OpenFailed, TunnelOpener, TunnelStream
from shield.link.client_ends import endpoint_of, ends_metadata
from shield.proxy_protocol.header import Endpoint
from shield.ops.metrics import TO_BACKEND, TO_CLIENT, Metrics
from shield.relay import Relay, Side

log = Logger(namespace="shield.dmz.service")


class ServiceFront:
    """The runtime of one ``[[dmz.service]]``."""

    def __init__(
        self, config: DmzService, opener: TunnelOpener, metrics: Metrics, gate: ClientGate, clock: IReactorTime
    ) -> None:
        self.config = config
        self.name = config.name
        self.opener = opener
        self.metrics = metrics
        self.gate = gate
        self.clock = clock
        self._active = metrics.streams_active.labels(service=self.name)
        self._total = metrics.streams_total.labels(service=self.name)
        self._to_backend = metrics.byte_tally(self.name, TO_BACKEND)
        self._to_client = metrics.byte_tally(self.name, TO_CLIENT)
        self.relays: set[Relay] = set()

    def admit(self, host: str, client: str = "") -> Ticket | Refusal:
        """Count a new client against this service's limits (``client`` names it in a log line)."""
        return self.gate.admit(self.name, self.config.limits, host, client)

    def limit_hit(self, limit: str, line: str) -> None:
        """A client ended by a limit after it was admitted (handshake or idle timeout)."""
        self.metrics.refusals.labels(service=self.name, limit=limit).inc()
        self.gate.note(self.name, limit, line)

    def open(
        self,
        client: str,
        transport: str,
        extra: tuple[tuple[str, str], ...] = (),
        peer: IAddress | None = None,
        host: IAddress | None = None,
    ) -> Deferred[TunnelStream]:
        """Open a tunnel for ``client`` (its label); ``peer`` and ``host``, the connection's two
        ends (``getPeer``, ``getHost``), go to the connector as structured metadata."""
        ends = ends_metadata(_endpoint(peer), _endpoint(host))
        metadata = (("transport", transport),) + extra + ends
        return self.opener.open(self.name, client, metadata, self.config.open_timeout)

    def refused(self, client: str, transport: str, failure: OpenFailed) -> None:
        self.metrics.open_failures.labels(service=self.name, reason=failure.label).inc()
        log.warn(
            "{transport} client {client} -> {service}: {status} {reason}",
            transport=transport, client=client, service=self.name, status=failure.status, reason=failure.reason,
        )

    def denied(self, client: str, transport: str, status: int, label: str, reason: str) -> None:
        """A refusal decided at the front door (origin, ...), before any tunnel."""
        self.refused(client, transport, OpenFailed(status, label, reason))

    def relay(self, tunnel: TunnelStream, public: Side, client: str, transport: str) -> Relay:
        """Splice the public side onto the tunnel; counts it until either end finishes.

        The service's ``bytes-per-second`` paces what goes to the client, and its ``idle-timeout``
        ends a tunnel in which nothing has moved for that long.
        """
        limits = self.config.limits
        self._active.inc()
        self._total.inc()
        holder: list[Relay] = []
        if limits.bytes_per_second:
            public = PacedSide(public, limits.bytes_per_second, self.clock)
        idle: IdleWatch | None = None

        def finished(reason: str) -> None:
            # No line per closed client: at thousands of clients a second that is the log's
            # whole bandwidth. Refusals and lost links are logged where they happen.
            self._active.dec()
            if idle is not None:
                idle.stop()
            if holder:
                self.relays.discard(holder[0])

        relay = tunnel.start_relay(public, self._to_backend, self._to_client, finished)
        if not relay.finished:
            holder.append(relay)
            self.relays.add(relay)
            if limits.idle_timeout:

                def expired() -> None:
                    seconds = limits.idle_timeout
                    self.limit_hit("idle_timeout", f"{transport} client {client} -> {self.name}: closed, idle for {seconds:g} s")
                    public.abort(f"idle timeout: no data for {seconds:g} s")
                    tunnel.transport.loseConnection()

                idle = IdleWatch(limits.idle_timeout, self.clock, expired, relay.moved)
        return relay


def _endpoint(address: IAddress | None) -> Endpoint | None:
    return endpoint_of(getattr(address, "host", None), getattr(address, "port", None))

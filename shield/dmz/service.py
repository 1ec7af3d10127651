"""One public service at the DMZ: opening its tunnels, counting them, saying why one failed.

Both frontplanes (raw TCP/TLS and WebSocket) go through here, so every client gets the same
link choice, the same metrics and the same one-line log for a refusal.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from shield.config.model import DmzService
from shield.dmz.tunnel import OpenFailed, TunnelOpener, TunnelStream
from shield.ops.metrics import TO_BACKEND, TO_CLIENT, Metrics
from shield.relay import Relay, Side

log = Logger(namespace="shield.dmz.service")


class ServiceFront:
    """The runtime of one ``[[dmz.service]]``."""

    def __init__(self, config: DmzService, opener: TunnelOpener, metrics: Metrics) -> None:
        self.config = config
        self.name = config.name
        self.opener = opener
        self.metrics = metrics
        self._active = metrics.streams_active.labels(service=self.name)
        self._total = metrics.streams_total.labels(service=self.name)
        self._to_backend = metrics.byte_counter(self.name, TO_BACKEND)
        self._to_client = metrics.byte_counter(self.name, TO_CLIENT)
        self.relays: set[Relay] = set()

    def open(self, client: str, transport: str, extra: tuple[tuple[str, str], ...] = ()) -> Deferred[TunnelStream]:
        metadata = (("transport", transport),) + extra
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
        """Splice the public side onto the tunnel; counts it until either end finishes."""
        self._active.inc()
        self._total.inc()
        holder: list[Relay] = []

        def finished(reason: str) -> None:
            # No line per closed client: at thousands of clients a second that is the log's
            # whole bandwidth. Refusals and lost links are logged where they happen.
            self._active.dec()
            if holder:
                self.relays.discard(holder[0])

        relay = tunnel.start_relay(public, self._to_backend, self._to_client, finished)
        if not relay.finished:
            holder.append(relay)
            self.relays.add(relay)
        return relay

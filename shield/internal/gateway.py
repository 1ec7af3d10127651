"""The internal gateway (connector) as a twistd service: the link pool, admin, graceful drain."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.interfaces import IListeningPort, IReactorCore
from twisted.logger import Logger

from shield.config.model import InternalConfig
from shield.internal.backend import BackendDialer
from shield.internal.pool import LinkSlot, endpoint_for, endpoint_label, resolve
from shield.config.mux import mux_config_for
from shield.net import tcp_server_endpoint
from shield.ops.admin import admin_site
from shield.ops.drain import raise_file_limit, exit_cleanly_after_drain, fatal
from shield.ops.metrics import Metrics
from shield.tap.common import tls_material
from shield.tls.contexts import backend_client_options, backplane_client_options

log = Logger(namespace="shield.internal")


class InternalGateway(Service):
    """Everything one ``shield-internal`` process runs."""

    def __init__(self, config: InternalConfig, reactor: IReactorCore) -> None:
        self.config = config
        self.reactor = reactor
        self.metrics = Metrics()
        self.dialer = BackendDialer(config.services, self.metrics, reactor)
        backplane = config.backplane
        self.mux_config = mux_config_for(backplane)
        # Built now, so a bad certificate stops the process before it dials anything.
        self.tls_options = tls_material(
            {"internal.backplane.cert": backplane.cert, "internal.backplane.ca": backplane.ca},
            lambda: backplane_client_options(backplane.cert, backplane.ca, backplane.server_name),
        )
        for index, service in enumerate(config.services):
            if service.connect.scheme == "tls":
                tls_material(
                    {f"internal.service[{index}].ca": service.ca} if service.ca else {},
                    lambda service=service: backend_client_options(
                        service.server_name or service.connect.host, service.ca
                    ),
                )
        self.slots: list[LinkSlot] = []
        self.endpoints: list[str] = []
        self.admin_port: IListeningPort | None = None
        self._started: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        limit = raise_file_limit(log)
        log.info("open-files limit: {limit}", limit=limit)
        self._started = self._start()
        self._started.addErrback(fatal, self.reactor, "shield-internal could not start")

    @inlineCallbacks
    def _start(self):  # type: ignore[no-untyped-def]
        config = self.config
        if config.admin is not None:
            self.admin_port = yield tcp_server_endpoint(self.reactor, config.admin).listen(
                admin_site(self.readiness, self.metrics.registry)
            )
            log.info("connector {name}: admin on {uri}", name=config.name, uri=str(config.admin))
        for uri in config.backplane.connect:
            addresses = yield resolve(uri)
            for address in addresses:
                label = endpoint_label(address, uri.port)
                self.endpoints.append(label)
                self.metrics.links_up.labels(endpoint=label).set(0)
                dial = endpoint_for(self.reactor, address, uri.port, self.tls_options)
                for index in range(config.backplane.links):
                    slot = LinkSlot(self, label, dial, index)
                    self.slots.append(slot)
                    slot.start()
        log.info(
            "connector {name}: offering {services} over {links} links to each of {endpoints}",
            name=config.name,
            services=", ".join(s.name for s in config.services),
            links=config.backplane.links,
            endpoints=", ".join(self.endpoints),
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._drain()

    @inlineCallbacks
    def _drain(self):  # type: ignore[no-untyped-def]
        log.info("connector {name}: draining: GoAway on {n} links", name=self.config.name, n=len(self.slots))
        closing = DeferredList([slot.drain() for slot in self.slots], consumeErrors=True)
        timer = self.reactor.callLater(self.config.grace_period, self._grace_over)
        yield closing
        if timer.active():
            timer.cancel()
        if self.admin_port is not None:
            yield self.admin_port.stopListening()
        exit_cleanly_after_drain(self.reactor)

    def _grace_over(self) -> None:
        left = sum(slot.tunnels for slot in self.slots)
        log.warn("connector {name}: grace period over, closing {n} tunnels", name=self.config.name, n=left)
        for slot in self.slots:
            slot.abort("shutting down: grace period over")

    def link_changed(self) -> None:
        counts = {label: 0 for label in self.endpoints}
        for slot in self.slots:
            if slot.link is not None:
                counts[slot.endpoint] = counts.get(slot.endpoint, 0) + 1
        for label, count in counts.items():
            self.metrics.links_up.labels(endpoint=label).set(count)

    def readiness(self) -> tuple[bool, list[str]]:
        if self._started is None or not self._started.called or not self.endpoints:
            return False, ["backplane endpoints not resolved yet"]
        live = {slot.endpoint for slot in self.slots if slot.link is not None}
        missing = [f"endpoint {label}: no live link" for label in self.endpoints if label not in live]
        return not missing, missing

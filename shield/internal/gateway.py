"""The internal gateway (connector) as a twistd service: the link pool, admin, graceful drain.

The pool follows DNS: every ``connect`` host name is looked up again every ``resolve-interval``
seconds (``shield.dns``); a new address gets ``links`` slots, an address that is
gone has its slots drained (GoAway: open tunnels finish, no new ones land there).

With a ``proxy``, the connector resolves nothing: each ``connect`` URI is one endpoint, named by
its host and port, and every dial asks the proxy for that host name (``shield.proxy``), so the
proxy's DNS is followed at every redial.
"""

from __future__ import annotations

from functools import partial


from typing import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, succeed
from shield.addresses import host_port
from twisted.logger import Logger

from shield.config.model import InternalConfig, Uri
from shield import __version__
from shield.internal.backend import BackendDialer, BackendStreamFactory
from shield.link.wire import Announce
from shield.dns import Change, Discovery, resolve
from shield.internal.health import HealthBoard
from shield.internal.pool import Endpoint, LinkSlot, endpoint_for, endpoint_label
from shield.proxy.endpoint import ProxyRoute
from shield.config.mux import mux_config_for
from shield.mux.budget import BufferBudget
from shield.net import is_ipv4, is_ipv6
from shield.ops.drain import within_grace
from shield.ops.metrics import Metrics
from shield.ops.port import PortService
from shield.tap.common import tls_material
from shield.config.errors import ConfigError
from shield.config.env import configured_by_environment, internal_config_from_environment
from shield.config.loader import load_internal_config
from shield.tls.contexts import ReloadableClientTLS, backend_client_options, backplane_client_options
from shield.tls.identity import certificate_identity
from shield.transports import IGatewayReactor
from shield.ops.lifecycle import Phase, admin_endpoint, checked_reload, start_gateway, stop_gateway

log = Logger(namespace="shield.internal")


class InternalGateway(Service):
    """Everything one ``shield-internal`` process runs."""

    def __init__(
        self,
        config: InternalConfig,
        reactor: IGatewayReactor,
        resolver: Callable[[Uri], Deferred[list[str]]] = resolve,
    ) -> None:
        self.config = config
        self.reactor = reactor
        self.resolver = resolver
        self.metrics = Metrics()
        self.budget = BufferBudget(config.buffer_budget)
        self.metrics.watch_budget(self.budget)
        self.health = HealthBoard(config.services, reactor, self.metrics, self._offers_changed)
        self.dialer = BackendDialer(config.services, self.metrics, reactor, self.health.observe)
        backplane = config.backplane
        self.mux_config = mux_config_for(backplane)
        # Built now, so a bad certificate stops the process before it dials anything.
        self.tls_options = ReloadableClientTLS(_tls_material(config))
        self.endpoints: dict[str, Endpoint] = {}  # label -> endpoint, in the order they came
        self.discoveries: dict[Uri, Discovery] = {}  # one per connect URI
        self.retiring: set[LinkSlot] = set()  # slots of removed endpoints, draining
        self.phase = Phase()
        self.admin: PortService | None = None
        if config.admin is not None:
            uri = config.admin
            self.admin = admin_endpoint(
                reactor, uri, self.readiness, self.metrics.registry,
                lambda: log.info("connector {name}: admin on {uri}", name=config.name, uri=str(uri)),
            )  # fmt: skip
        self._started: Deferred[None] | None = None
        self._first_lookups_done = False

    @property
    def slots(self) -> list[LinkSlot]:
        """Every slot: those of current endpoints, then those still draining after a removal."""
        return [slot for endpoint in self.endpoints.values() for slot in endpoint.slots] + list(self.retiring)

    def startService(self) -> None:
        super().startService()
        self._started = start_gateway("shield-internal", self.reactor, log, self.reload, self._start)

    @inlineCallbacks
    def _start(self):
        config = self.config
        if self.admin is not None:
            self.admin.startService()
            yield self.admin.when_started()
        self.health.start()
        for uri in config.backplane.connect:
            self._watch(uri)
        # The first look-ups run side by side; one that fails is retried (see discovery.py)
        # and /readyz says why the connector is not ready meanwhile.
        yield DeferredList([discovery.start() for discovery in self.discoveries.values()], consumeErrors=True)
        self._first_lookups_done = True
        if self.phase.draining:
            return
        log.info(
            "connector {name}: offering {services} over {links} links to each of {endpoints}",
            name=config.name,
            services=", ".join(s.name for s in config.services),
            links=config.backplane.links,
            endpoints=(", ".join(self.endpoints) or "its endpoints, none known yet (waiting for DNS)") + self._through(),
        )

    def _through(self) -> str:
        proxy = self.config.backplane.proxy
        return "" if proxy is None else f" through proxy {host_port(proxy.host, proxy.port)}"

    def _proxy_route(self) -> ProxyRoute:
        """The proxy and credentials of the running configuration: read at every dial."""
        backplane = self.config.backplane
        assert backplane.proxy is not None, "only dials through a proxy ask for its route"
        return ProxyRoute(backplane.proxy, backplane.proxy_auth)

    def _follows_dns(self, uri: Uri) -> bool:
        """Whether ``uri``'s host is looked up again and again: a name, dialled without a proxy."""
        return not (self.config.backplane.proxy is not None or is_ipv4(uri.host) or is_ipv6(uri.host))

    def _watch(self, uri: Uri) -> Discovery:
        # Through a proxy, the host is its own answer: the proxy resolves it at every CONNECT.
        resolver = partial(succeed, [uri.host]) if self.config.backplane.proxy is not None else partial(self.resolver, uri)
        discovery = Discovery(
            uri.host,
            resolver,
            self.reactor,
            self.config.backplane.resolve_interval if self._follows_dns(uri) else 0.0,
            partial(self._addresses_changed, uri),
            where=f"connector {self.config.name}: connect {uri}",
        )
        self.discoveries[uri] = discovery
        return discovery

    # -- reload (SIGHUP) ------------------------------------------------------------------------

    def reload(self) -> None:
        """Read the configuration again and apply it; links and tunnels stay up.

        Refused whole (one error line, the running configuration stays) when the file fails any
        check a start would make, or changes the name or the admin address. Applied: the
        certificate and key for new links, the backend of each service for new tunnels, the
        services and priority announced again on every link, ``connect`` URIs added (dialled)
        or removed (drained), the number of links per endpoint for new endpoints, limits,
        ``resolve-interval`` (from each host's next look-up), and the proxy's address and
        credentials (``proxy-auth-file`` is read again) for new dials. Setting or removing
        ``proxy`` is refused: it changes what an endpoint is (an address found by DNS, or a
        host name the proxy resolves), so that takes a restart.
        """
        source = self.config.source
        if self.phase.draining:
            return
        if source is None and not configured_by_environment():
            return
        what = str(source) if source is not None else "the environment"
        def load() -> tuple[InternalConfig, object]:
            # From the environment, a reload rereads the certificate files (a rotated Secret); the
            # variables themselves cannot change in a running process.
            new = load_internal_config(source) if source is not None else internal_config_from_environment()
            fixed = []
            if new.name != self.config.name:
                fixed.append(f"internal.name changed ({self.config.name!r} -> {new.name!r})")
            if new.admin != self.config.admin:
                fixed.append("internal.admin changed")
            if (new.backplane.proxy is None) != (self.config.backplane.proxy is None):
                fixed.append(f"internal.backplane.proxy {'removed' if new.backplane.proxy is None else 'set'}")
            if fixed:
                raise ConfigError("", f"{'; '.join(fixed)} (restart the connector for that)")
            return new, _tls_material(new)

        loaded = checked_reload(what, log, load)
        if loaded is None:
            return
        new, options = loaded
        old, self.config = self.config, new
        self.tls_options.current = options
        self.mux_config = mux_config_for(new.backplane)
        self.dialer.services = {service.name: service for service in new.services}
        self.health.reconfigure(new.services)
        self.budget.limit = new.buffer_budget
        for uri, discovery in self.discoveries.items():  # from the next look-up on
            if self._follows_dns(uri):
                discovery.interval = new.backplane.resolve_interval
        before, after = set(old.backplane.connect), set(new.backplane.connect)
        for uri in sorted(after - before, key=str):
            self._watch(uri).start()
        for uri in sorted(before - after, key=str):
            discovery = self.discoveries.pop(uri)
            discovery.stop()
            for endpoint in list(self.endpoints.values()):
                if uri in endpoint.owners:
                    gone = self._remove_endpoint(uri, endpoint.address)
                    if gone is not None:
                        log.info("connector {name}: endpoint {label} removed from connect; draining its links", name=new.name, label=gone.label)
                        self._retire(gone)
        announced = 0
        if (old.priority, [s.name for s in old.services]) != (new.priority, [s.name for s in new.services]):
            announced = self._announce_again()
        how = f"resolve-interval {new.backplane.resolve_interval:g} s"
        if new.backplane.proxy is not None:
            credentials = " with the credentials read again" if new.backplane.proxy_auth is not None else ""
            how = f"{self._through().strip()}{credentials}, for new dials"
        log.info(
            "reloaded {source}: services {services}; priority {priority}; connect {connect} "
            "({how}); announced again on {n} links; "
            "certificate and key reloaded for new links",
            source=what, services=", ".join(s.name for s in new.services), priority=new.priority,
            connect=", ".join(str(uri) for uri in new.backplane.connect), n=announced, how=how,
        )  # fmt: skip

    def _announce_again(self) -> int:
        """Tell every accepted link what this connector offers now; how many were told."""
        return sum(1 for slot in self.slots if slot.link is not None and slot.link.announce_again())

    def _offers_changed(self) -> None:
        """A backend went down or came back: the DMZs learn it on every link at once."""
        if self.phase.draining:
            return
        offered = self.health.up_services()
        n = self._announce_again()
        log.info(
            "connector {name}: now offering {services}; announced on {n} links",
            name=self.config.name, services=", ".join(offered) or "nothing", n=n,
        )

    def _addresses_changed(self, uri: Uri, change: Change) -> None:
        """Slots for the addresses ``uri``'s host now has; drain those of addresses it lost."""
        if self.phase.draining:
            return
        now = ", ".join(change.addresses)
        for address in change.added:
            endpoint = self._add_endpoint(uri, address)
            if endpoint is not None and self._first_lookups_done:
                log.info(
                    "connector {name}: endpoint {label} added (host {host} now resolves to {now})",
                    name=self.config.name, label=endpoint.label, host=uri.host, now=now,
                )
        for address in change.removed:
            endpoint = self._remove_endpoint(uri, address)
            if endpoint is not None:
                log.info(
                    "connector {name}: endpoint {label} removed (host {host} now resolves to {now});"
                    " draining its {n} links",
                    name=self.config.name, label=endpoint.label, host=uri.host, now=now, n=len(endpoint.slots),
                )
                self._retire(endpoint)

    def _add_endpoint(self, uri: Uri, address: str) -> Endpoint | None:
        """The new endpoint, or None when another URI already leads to this address and port."""
        label = endpoint_label(address, uri)
        endpoint = self.endpoints.get(label)
        if endpoint is not None:
            endpoint.owners.add(uri)
            return None
        proxy = self._proxy_route if self.config.backplane.proxy is not None else None
        dial = endpoint_for(self.reactor, address, uri, self.tls_options, self.config.backplane.keepalive, proxy)
        slots = [LinkSlot(self, label, dial, index, self.reactor) for index in range(self.config.backplane.links)]
        endpoint = Endpoint(label, address, slots, {uri})
        self.endpoints[label] = endpoint
        self.metrics.links_up.labels(endpoint=label).set(0)
        for slot in slots:
            slot.start()
        return endpoint

    def _remove_endpoint(self, uri: Uri, address: str) -> Endpoint | None:
        """The endpoint no URI leads to any more, or None while another one still does."""
        label = endpoint_label(address, uri)
        endpoint = self.endpoints.get(label)
        if endpoint is None:
            return None
        endpoint.owners.discard(uri)
        if endpoint.owners:
            return None
        del self.endpoints[label]
        # The series goes (rather than staying at 0): an endpoint that is no longer configured
        # is not an endpoint that is down.
        self.metrics.links_up.remove(label)
        return endpoint

    def _retire(self, endpoint: Endpoint) -> None:
        """GoAway on the links of a removed endpoint: open tunnels finish, no new ones land there."""
        for slot in endpoint.slots:
            self.retiring.add(slot)
            slot.drain().addBoth(self._retired, slot)

    def _retired(self, result: object, slot: LinkSlot) -> None:
        """A retired slot has drained (or failed to: either way it is gone)."""
        self.retiring.discard(slot)

    def stopService(self) -> Deferred[None]:
        """SIGTERM: no more look-ups or health checks, GoAway on every link (open tunnels finish
        within the grace period), then the admin endpoint stops and the process exits 0."""
        super().stopService()
        self.phase.draining = True
        self.health.stop()
        for discovery in self.discoveries.values():
            discovery.stop()
        return stop_gateway(self.reactor, self._drain, self._stop_admin)

    def _drain(self) -> Deferred[None]:
        log.info("connector {name}: draining: GoAway on {n} links", name=self.config.name, n=len(self.slots))
        closing = DeferredList([slot.drain() for slot in self.slots], consumeErrors=True)
        return within_grace(closing, self.config.grace_period, self.reactor, self._grace_over)

    def _stop_admin(self) -> Deferred[None]:
        return self.admin.stopService() if self.admin is not None else succeed(None)

    def _grace_over(self) -> None:
        left = sum(slot.tunnels for slot in self.slots)
        log.warn("connector {name}: grace period over, closing {n} tunnels", name=self.config.name, n=left)
        for slot in self.slots:
            slot.abort("shutting down: grace period over")

    # -- PoolHost: what the slots ask ------------------------------------------------------------

    def announcement(self) -> Announce:
        config = self.config
        return Announce(
            name=config.name, priority=config.priority, version=__version__, services=self.health.up_services()
        )

    def backend_streams(self, endpoint: str) -> BackendStreamFactory:
        return BackendStreamFactory(
            self.dialer,
            lambda: endpoint,
            max_pending_opens=self.config.max_pending_opens,
            clock=self.reactor,
            budget=self.budget,
        )

    def link_changed(self) -> None:
        # Slots of removed endpoints are not counted: their series is gone.
        for label, endpoint in self.endpoints.items():
            self.metrics.links_up.labels(endpoint=label).set(endpoint.links_up)

    def readiness(self) -> tuple[bool, list[str]]:
        if not self.discoveries:
            return False, ["starting"]
        missing: list[str] = []
        for uri, discovery in self.discoveries.items():
            if discovery.resolved:
                continue
            if discovery.failure is None:
                missing.append(f"connect {uri}: resolving host {uri.host}")
            else:
                missing.append(
                    f"connect {uri}: host {uri.host} does not resolve: {discovery.failure}"
                    f" (retrying every {discovery.next_delay:g} s)"
                )
        missing += [f"endpoint {label}: no live link" for label, e in self.endpoints.items() if not e.links_up]
        missing += self.health.problems()
        if not self.endpoints and not missing:
            missing.append("no backplane endpoint")
        return not missing, missing


def _tls_material(config: InternalConfig) -> object:
    """The backplane client settings, after checking every certificate and key the file names
    (tls:// backends' CAs included): at start a problem is exit 2, at a reload a refusal."""
    backplane = config.backplane
    options = tls_material(
        {"internal.backplane.cert": backplane.cert, "internal.backplane.ca": backplane.ca},
        lambda: backplane_client_options(backplane.cert, backplane.ca, backplane.server_name),
    )
    identity = certificate_identity(backplane.cert)
    if identity != config.name:
        # The DMZ takes the connector's identity from its certificate and refuses an ANNOUNCE
        # naming another: such a connector would be refused at every link, forever.
        raise ConfigError(
            "internal.name",
            f"{config.name!r} is not the identity of the certificate internal.backplane.cert "
            f"({identity!r}): every DMZ would refuse its links",
        )
    for index, service in enumerate(config.services):
        if service.connect.scheme == "tls":
            tls_material(
                {f"internal.service[{index}].ca": service.ca} if service.ca else {},
                partial(backend_client_options, service.server_name or service.connect.host, service.ca),
            )
    return options

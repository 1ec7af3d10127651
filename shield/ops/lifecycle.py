"""What both gateways do around their own work, written once: start under twistd (SIGHUP reloads,
the open-files limit raised, a failure to start is a fatal exit), a reload that is refused whole,
with one line, when the new configuration does not pass, the admin endpoint, and the shape of a
SIGTERM: the gateway's own drain, then what stayed up for it stops, then exit 0."""

from __future__ import annotations

import signal
from collections.abc import Generator, Iterable
from typing import Any, Callable, TypeVar

from twisted.application.service import IService
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.logger import Logger

from shield.config.errors import ConfigError
from shield.config.model import Uri
from shield.ops.admin import ReadinessCheck, admin_site
from shield.ops.drain import exit_cleanly_after_drain, fatal, raise_file_limit
from shield.ops.port import PortService, at_once
from shield.reactor import describe as describe_reactor
from shield.transports import IGatewayReactor

T = TypeVar("T")

log = Logger(namespace="shield.ops.lifecycle")


class Phase:
    """Where a gateway is in its life. Several parts answer differently while it starts or drains
    (readiness, a peer's forwarded client, a reload), so they read it here rather than ask each
    other; only the start sets ``up`` and only the drain sets ``draining``."""

    def __init__(self) -> None:
        self.up = False  # every listener is up
        self.draining = False  # SIGTERM: no new clients


def start_gateway(
    what: str, reactor: IGatewayReactor, log: Logger, reload: Callable[[], None], start: Callable[[], Deferred[None]]
) -> Deferred[None]:
    """SIGHUP calls ``reload`` (in the reactor thread); ``start`` runs; if it fails, the process
    says why and exits 1 (``shield.ops.drain.fatal``)."""
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))
    limit = raise_file_limit(log)
    log.info("open-files limit: {limit}; reactor: {reactor}", limit=limit, reactor=describe_reactor(reactor))
    started = start()
    started.addErrback(fatal, reactor, f"{what} could not start")
    return started


def checked_reload(source: str, log: Logger, load: Callable[[], T]) -> T | None:
    """Run a reload's load-and-check; None (and one 'reload refused' line naming why) when the
    new configuration cannot be used: the running one stays."""
    try:
        return load()
    except ConfigError as error:
        log.error("reload refused, the running configuration stays: {problem}",
                  problem=error.describe() if error.file else f"{source}: {error}")  # fmt: skip
    except Exception as error:  # a certificate that does not load, say
        log.error("reload refused, the running configuration stays: {source}: {problem}", source=source, problem=str(error))
    return None


def admin_endpoint(
    reactor: IGatewayReactor,
    uri: Uri,
    readiness: ReadinessCheck,
    metrics_registry: object,
    listening: Callable[[], None],
    after: Callable[[], Deferred[None]] = at_once,
) -> PortService:
    """/healthz, /readyz and /metrics (``shield.ops.admin``) on the gateway's admin address."""
    return PortService(reactor, [(uri, admin_site(readiness, metrics_registry))], listening, after)


def stop_gateway(
    reactor: IGatewayReactor, drain: Callable[[], Deferred[Any]], then: Callable[[], Deferred[Any]]
) -> Deferred[None]:
    """SIGTERM: the gateway's ``drain`` (no new clients; open ones finish within the grace
    period), ``then`` what stayed up during it (the admin endpoint, so /readyz says 'draining'
    until the end), and the process exits 0 instead of 'killed by SIGTERM'."""
    stopping = drain()
    stopping.addCallback(lambda _: then())
    stopping.addCallback(lambda _: exit_cleanly_after_drain(reactor))
    return stopping


@inlineCallbacks
def stop_in_reverse(services: Iterable[IService]) -> Generator[Deferred[Any], Any, None]:
    """Stop each service once the one started after it has stopped: the reverse of the start.
    (Twisted's ``MultiService`` stops them all at once.) A stop that fails is logged; the rest
    still stop."""
    for service in reversed(list(services)):
        try:
            yield maybeDeferred(service.stopService)
        except Exception:
            log.failure("stopping {service!r} failed", service=service)

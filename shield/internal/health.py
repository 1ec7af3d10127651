"""Health of each backend, as its connector sees it: checks in, up/down transitions out.

A connector offers a service only while its backend is healthy, so the DMZ sends clients to
another connector instead of to a backend that refuses or hangs. Two sources of evidence feed
one counter per service:

- passive: every dial of the backend for a client (refused, unreachable or timed out is a
  failure; connected is a success);
- active: a check every ``health-interval`` seconds: a connection (``connect``, the default), a
  TLS handshake (``tls``) or an HTTP GET of ``health-path`` expecting ``health-status``
  (``http``). ``off`` turns health off: the service is always offered.

As in HAProxy, ``health-fall`` consecutive failures take an up backend down and ``health-rise``
consecutive successes bring a down one back, so one slow answer does not flap it. The counter is
sans-IO (``HealthCounter``); ``BackendMonitor`` runs the checks with Twisted.

Transitions (``HealthCounter.record``), anything else keeps the state:

    state  result   effect                                  next
    UP     success  failures = 0                            UP
    UP     failure  failures += 1                           UP, or DOWN once failures == fall
    DOWN   failure  successes = 0                           DOWN
    DOWN   success  successes += 1                          DOWN, or UP once successes == rise
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable
from typing import Protocol as TypingProtocol

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.interfaces import IHandshakeListener, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from shield.config.model import InternalService
from shield.internal.dialing import backend_endpoint
from shield.tls.contexts import describe_tls_failure
from shield.transports import IStreamTransport
from shield.transports import IGatewayReactor

log = Logger(namespace="shield.internal.health")


class Health(enum.Enum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Transition:
    """The backend changed state; ``why`` is the result that tipped it."""

    to: Health
    why: str
    streak: int  # consecutive results that made it


@dataclass(slots=True)
class HealthCounter:
    """rise/fall hysteresis over check results (see the module's table)."""

    rise: int
    fall: int
    state: Health = Health.UP
    successes: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        if self.rise < 1 or self.fall < 1:
            raise ValueError(f"rise and fall must be at least 1, got {self.rise} and {self.fall}")

    def record(self, ok: bool, why: str) -> Transition | None:
        if self.state is Health.UP:
            if ok:
                self.failures = 0
                return None
            self.failures += 1
            if self.failures < self.fall:
                return None
            self.state, self.successes = Health.DOWN, 0
            return Transition(Health.DOWN, why, self.failures)
        if not ok:
            self.successes = 0
            return None
        self.successes += 1
        if self.successes < self.rise:
            return None
        self.state, self.failures = Health.UP, 0
        return Transition(Health.UP, why, self.successes)


class CheckFailed(Exception):
    """An active check's verdict, with the reason the log and /readyz show."""


def describe(failure: Failure) -> str:
    """A dial or check failure in a few words."""
    if failure.check(error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(error.TimeoutError, CancelledError, error.ConnectingCancelledError):
        return "no answer in time"
    if failure.check(CheckFailed):
        return str(failure.value)
    message = failure.getErrorMessage()
    return message.splitlines()[0][:200] if message else failure.type.__name__


class _Hangup(Protocol):
    """Closes as soon as connected (a connect check): the backend sees an empty connection."""

    transport: IStreamTransport  # connected before any event reaches the protocol

    def connectionMade(self) -> None:
        self.transport.loseConnection()


@implementer(IAgentEndpointFactory)
class _BackendEndpoints:
    """For the HTTP check: every request goes to the service's backend, whatever the URL says."""

    def __init__(self, make: Callable[[], IStreamClientEndpoint]) -> None:
        self._make = make

    def endpointForURI(self, uri: object) -> IStreamClientEndpoint:
        return self._make()


class BackendMonitor:
    """Keeps the health of one service's backend: active checks on a timer, passive results from
    dials; ``changed`` hears of every transition."""

    def __init__(
        self,
        service: InternalService,
        reactor: IGatewayReactor,
        changed: Callable[[InternalService, Transition], None],
    ) -> None:
        self.service = service
        self.reactor = reactor
        self.changed = changed
        self.counter = HealthCounter(service.health_rise, service.health_fall)
        self.last_failure = ""
        self._loop: LoopingCall | None = None

    @property
    def enabled(self) -> bool:
        return self.service.health_check != "off"

    @property
    def up(self) -> bool:
        return not self.enabled or self.counter.state is Health.UP

    def start(self) -> None:
        if self.enabled and self._loop is None:
            self._loop = LoopingCall(self._check)
            self._loop.clock = self.reactor
            self._loop.start(self.service.health_interval, now=True).addErrback(
                lambda failure: log.failure("health checks of {service!r} stopped", failure, service=self.service.name)
            )

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def reconfigure(self, service: InternalService) -> None:
        """A reload: new settings, same state (a down backend stays down until it rises)."""
        self.stop()
        old, self.service = self.counter, service
        self.counter = HealthCounter(service.health_rise, service.health_fall, old.state, 0, 0)
        self.start()

    def observe(self, ok: bool, why: str = "") -> None:
        """A client's dial succeeded or failed (passive evidence)."""
        if self.enabled:
            self._record(ok, why or "a client's connection succeeded")

    def _record(self, ok: bool, why: str) -> None:
        if not ok:
            self.last_failure = why
        transition = self.counter.record(ok, why)
        if transition is not None:
            self.changed(self.service, transition)

    def _check(self) -> Deferred[None]:
        checking = self._run_check()
        timer = self.reactor.callLater(self.service.health_timeout, checking.cancel)

        def done(result: object) -> None:
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                self._record(False, f"{self.service.health_check} check: {describe(result)}")
            else:
                self._record(True, f"{self.service.health_check} check passed")

        return checking.addBoth(done)

    def _endpoint(self, tls: bool = True) -> IStreamClientEndpoint:
        """The backend as a client reaches it (a PROXY header of our own first, with
        ``proxy-protocol``: v1 UNKNOWN or v2 LOCAL); ``tls`` False: the socket only."""
        service = self.service
        return backend_endpoint(self.reactor, service, service.health_timeout, None, tls)

    @inlineCallbacks
    def _run_check(self):
        service = self.service
        kind = service.health_check
        if kind == "connect":
            yield self._endpoint(tls=False).connect(_quiet(Factory.forProtocol(_Hangup)))
            return None
        if kind == "tls":
            handshake: Deferred[None] = Deferred()
            yield self._endpoint().connect(_quiet(Factory.forProtocol(lambda: _Handshaker(handshake))))
            yield handshake  # the backend's certificate was verified
            return None
        # http: the request goes to the backend itself; the Host header names the service's host.
        scheme = "https" if service.connect.scheme == "tls" else "http"
        host = service.server_name or service.connect.host or "localhost"
        agent = Agent.usingEndpointFactory(self.reactor, _BackendEndpoints(lambda: self._endpoint()))
        response = yield agent.request(b"GET", f"{scheme}://{host}{service.health_path}".encode())
        response.deliverBody(_Discard())
        if response.code != service.health_status:
            raise CheckFailed(f"GET {service.health_path} answered {response.code}, expected {service.health_status}")
        return None


def _quiet(factory: Factory) -> Factory:
    """No 'Starting factory' / 'Stopping factory' lines: a check runs every few seconds."""
    factory.noisy = False
    return factory


@implementer(IHandshakeListener)
class _Handshaker(Protocol):
    """A tls check: done once the handshake (and the backend's certificate) succeeded."""

    transport: IStreamTransport  # connected before any event reaches the protocol

    def __init__(self, done: Deferred[None]) -> None:
        self.done = done

    def handshakeCompleted(self) -> None:
        if not self.done.called:
            self.done.callback(None)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.errback(CheckFailed(describe_tls_failure(reason)))


class _Discard(Protocol):
    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        pass


class HealthBoard:
    """Every service's monitor; what the connector offers is what is up here.

    A transition is logged once (never a line per check), counted in ``/metrics``, and reported
    to ``offers_changed`` so the connector announces its services again on every link. Several
    transitions in one reactor turn make one announcement.
    """

    def __init__(
        self,
        services: tuple[InternalService, ...],
        reactor: IGatewayReactor,
        metrics: "HealthMetrics",
        offers_changed: Callable[[], None],
    ) -> None:
        self.reactor = reactor
        self.metrics = metrics
        self.offers_changed = offers_changed
        self.monitors: dict[str, BackendMonitor] = {}
        self._announce_pending = False
        self._running = False
        self.reconfigure(services)

    def start(self) -> None:
        self._running = True
        for monitor in self.monitors.values():
            monitor.start()

    def stop(self) -> None:
        self._running = False
        for monitor in self.monitors.values():
            monitor.stop()

    def reconfigure(self, services: tuple[InternalService, ...]) -> None:
        """Services added get a monitor (up until checks say otherwise), removed ones lose theirs,
        kept ones keep their state with their new settings."""
        wanted = {service.name: service for service in services}
        for name in list(self.monitors):
            if name not in wanted:
                self.monitors.pop(name).stop()
                self.metrics.forget(name)
        for name, service in wanted.items():
            monitor = self.monitors.get(name)
            if monitor is None:
                monitor = self.monitors[name] = BackendMonitor(service, self.reactor, self._changed)
                if self._running:
                    monitor.start()
            elif monitor.service != service:
                if self._running:
                    monitor.reconfigure(service)
                else:
                    monitor.service = service
            self.metrics.set_up(name, monitor.up)
        self.monitors = {name: self.monitors[name] for name in wanted}  # configuration order

    def up_services(self) -> tuple[str, ...]:
        return tuple(name for name, monitor in self.monitors.items() if monitor.up)

    def observe(self, service: str, ok: bool, why: str = "") -> None:
        monitor = self.monitors.get(service)
        if monitor is not None:
            monitor.observe(ok, why)

    def problems(self) -> list[str]:
        """For /readyz: one line per backend that is down."""
        return [
            f"backend of {name!r} ({monitor.service.connect}) is down: {monitor.last_failure or 'failing'}"
            for name, monitor in self.monitors.items()
            if not monitor.up
        ]

    def _changed(self, service: InternalService, transition: Transition) -> None:
        name = service.name
        if transition.to is Health.DOWN:
            log.warn(
                "backend of {service!r} ({uri}) is down after {n} failures: {why}; no longer offered",
                service=name, uri=str(service.connect), n=transition.streak, why=transition.why,
            )  # fmt: skip
        else:
            log.info(
                "backend of {service!r} ({uri}) is up again after {n} good checks; offered again",
                service=name, uri=str(service.connect), n=transition.streak,
            )  # fmt: skip
        self.metrics.transition(name, transition.to is Health.UP)
        if not self._announce_pending:
            self._announce_pending = True
            self.reactor.callLater(0, self._announce)

    def _announce(self) -> None:
        self._announce_pending = False
        self.offers_changed()


class HealthMetrics(TypingProtocol):
    """What the board reports to: the gateway's Prometheus series."""

    def set_up(self, service: str, up: bool) -> None: ...

    def transition(self, service: str, up: bool) -> None: ...

    def forget(self, service: str) -> None: ...

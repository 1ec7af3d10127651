"""The connector's end of a tunnel: read OPEN, dial the backend from OUR config, answer, relay.

The DMZ names a service, never an address: an unknown service is refused and nothing is dialled.
The stream is not read while the backend connection is being made, so the DMZ cannot make the
connector buffer more than one stream window.

The DMZ is the less trusted side, so each link bounds what its streams may hold: at most
``max_pending_opens`` streams may be waiting for their OPEN header or for their backend at once
(beyond that a stream is answered OVERLOADED and closed), and an OPEN header must be complete
within ``OPEN_HEADER_TIMEOUT`` seconds of the stream opening (else the stream is reset). Every
refusal is counted (``shield_refusals_total`` for limits, ``shield_open_failures_total`` for bad or
unknown OPENs) and logged, but a burst of them gives one log line per second per link and kind
(``RefusalLog``), never one line per stream.
"""

from __future__ import annotations

from collections.abc import Hashable
from enum import Enum, auto
from typing import Callable, ClassVar, cast

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from shield.deadline import Deadline
from shield.config.model import InternalService
from shield.internal.health import describe as describe_failure
from shield.lifecycle import Lifecycle, Transitions
from shield.link.wire import MessageReader, OpenReply, OpenRequest, OpenStatus, WireError, encode
from shield.internal.dialing import OWN_CONNECTION, backend_endpoint
from shield.link.client_ends import client_ends
from shield.net import set_no_delay
from shield.proxy_protocol.header import ProxyHeader
from shield.mux.budget import BufferBudget
from shield.ops.metrics import TO_BACKEND, TO_CLIENT, Metrics
from shield.relay import Relay, RelayedProtocol
from shield.transports import IGatewayReactor
from shield.ops.ratelog import RateLimitedLog

log = Logger(namespace="shield.internal.backend")

#: Seconds a DMZ has, after opening a stream, to deliver its whole OPEN header.
OPEN_HEADER_TIMEOUT = 10.0
#: A burst of refusals of one kind on one link is logged at most once per this many seconds.
REFUSAL_LOG_INTERVAL = 1.0

#: ``limit`` labels of ``shield_refusals_total`` that the connector uses.
LIMIT_PENDING_OPENS = "max_pending_opens"
LIMIT_BUFFER_BUDGET = "buffer_budget"
LIMIT_STREAMS = "max_streams"
LIMIT_OPEN_HEADER_TIMEOUT = "open_header_timeout"


class RefusalLog:
    """One log line per burst of refusals of one kind, not one per refused stream.

    The first refusal of a kind is logged at once, in full. Those that follow within
    ``interval`` seconds are only counted; when the interval is over, one line says how many
    there were and what the last one was, and a new interval starts. An interval with no
    refusal ends the burst, so the next one is again logged at once. (shield.ops.ratelog does
    the counting; this names the link in each line.)
    """

    def __init__(
        self,
        clock: IReactorTime,
        where: Callable[[], str],
        interval: float = REFUSAL_LOG_INTERVAL,
        logger: Logger = log,
    ) -> None:
        self.where = where
        self.interval = interval
        self._log = RateLimitedLog(logger, clock, interval, summary=self._summary, first=self._first)

    def refused(self, kind: str, detail: str) -> None:
        """A stream was refused: ``kind`` groups a burst (a limit, "unknown service", ...)."""
        self._log.warn(kind, detail, refusal=kind)

    def _first(self, detail: str) -> str:
        return f"stream from DMZ {self.where()}: {detail}"

    def _summary(self, kind: Hashable, count: int, detail: str, interval: float) -> str:
        return (f"stream from DMZ {self.where()}: {count} more streams refused ({kind}) in the last "
                f"{interval:g} s; the last: {detail}")  # fmt: skip

    def stop(self) -> None:
        """The link is gone: say what is still only counted, stop the timers."""
        self._log.stop()


class OpenLimits:
    """What one link lets its DMZ hold: pending opens, and how long an OPEN header may take.

    A stream is *pending* from the moment the DMZ opens it until its backend is connected or it
    is refused or gone: it holds a buffer for its OPEN header, then a dial and a paused stream
    window. ``max_pending`` of them at once are allowed.
    """

    def __init__(
        self,
        max_pending: int,
        metrics: Metrics,
        refusals: RefusalLog,
        clock: IReactorTime,
        header_timeout: float = OPEN_HEADER_TIMEOUT,
        budget: BufferBudget | None = None,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = max_pending
        self.metrics = metrics
        self.refusals = refusals
        self.clock = clock
        self.header_timeout = header_timeout
        self.budget = budget
        self.pending = 0

    def admit(self) -> tuple[str, str, str] | None:
        """Take a pending place for a new stream, or say why it is refused: the limit, the log
        line and the reason the DMZ gets with OVERLOADED."""
        if self.pending >= self.max_pending:
            return (
                LIMIT_PENDING_OPENS,
                f"refused with OVERLOADED: {self.max_pending} stream opens already wait for their OPEN"
                " header or their backend on this link (max-pending-opens); nothing dialled",
                f"connector overloaded: {self.max_pending} stream opens already pending on this link",
            )
        if self.budget is not None and self.budget.exhausted:
            return (
                LIMIT_BUFFER_BUDGET,
                f"refused with OVERLOADED: streams hold the whole buffer-budget ({self.budget.limit} bytes)"
                " for backends that do not read; nothing dialled",
                "connector busy: its buffer budget is held by backends that do not read",
            )
        self.pending += 1
        return None

    def release(self) -> None:
        self.pending -= 1
        assert self.pending >= 0, "released more pending opens than were admitted"

    def refused_by_limit(self, limit: str, detail: str, service: str = "") -> None:
        self.metrics.refusals.labels(service=service, limit=limit).inc()
        self.refusals.refused(limit, detail)


class BackendConnection(RelayedProtocol):
    """The socket to the backend; reports to the relay once the tunnel is joined."""

    def connectionMade(self) -> None:
        set_no_delay(self.transport)

    def describe_loss(self, reason: Failure) -> str:
        return f"backend: {reason.getErrorMessage()}"


PUBLIC_REASONS = {
    OpenStatus.BACKEND_REFUSED: "backend of {service!r} refused the connection",
    OpenStatus.BACKEND_TIMEOUT: "backend of {service!r} did not accept the connection in time",
    OpenStatus.BACKEND_UNREACHABLE: "backend of {service!r} is unreachable",
}


def _classify(failure: Failure) -> OpenStatus:
    if failure.check(error.ConnectionRefusedError):
        return OpenStatus.BACKEND_REFUSED
    if failure.check(error.TimeoutError, error.UserError):
        return OpenStatus.BACKEND_TIMEOUT
    return OpenStatus.BACKEND_UNREACHABLE


class BackendStreamState(Enum):
    NEW = auto()  # built; the DMZ's stream is not connected to it yet
    AWAITING_OPEN = auto()  # holds a pending place; its OPEN header must come before the deadline
    DIALING = auto()  # holds a pending place; OPEN read, backend dialled, the stream paused
    RELAYING = auto()  # answered OK: spliced to the backend
    REFUSED = auto()  # answered with a refusal, or reset: what the DMZ sends is dropped unread
    GONE = auto()  # the stream is closed


class BackendStreamEvent(Enum):
    ADMITTED = auto()  # a pending place was free
    OVER_LIMIT = auto()  # none was (or the buffer budget is held)
    HEADER_LATE = auto()  # no complete OPEN header within the deadline
    HEADER_BAD = auto()
    SERVICE_UNKNOWN = auto()  # OPEN named a service this connector does not have
    SERVICE_KNOWN = auto()
    BACKEND_CONNECTED = auto()
    BACKEND_FAILED = auto()
    LOST = auto()  # the stream's connectionLost


_PENDING = frozenset({BackendStreamState.AWAITING_OPEN, BackendStreamState.DIALING})


class BackendStream(RelayedProtocol):
    """One stream the DMZ opened.

    Its lifecycle (``LIFECYCLE``; any other event is a ``StateError``):

    =============  =================  =============  ==================================================
    state          event              next           what happens
    =============  =================  =============  ==================================================
    NEW            ADMITTED           AWAITING_OPEN  takes a pending place; the header deadline starts
    NEW            OVER_LIMIT         REFUSED        answered OVERLOADED; nothing read, nothing dialled
    AWAITING_OPEN  HEADER_LATE        REFUSED        reset, counted as open_header_timeout
    AWAITING_OPEN  HEADER_BAD         REFUSED        reset, counted as bad_open
    AWAITING_OPEN  SERVICE_UNKNOWN    REFUSED        answered UNKNOWN_SERVICE; nothing dialled
    AWAITING_OPEN  SERVICE_KNOWN      DIALING        the stream is paused and the backend dialled
    AWAITING_OPEN  LOST               GONE
    DIALING        BACKEND_CONNECTED  RELAYING       answered OK; spliced to the backend
    DIALING        BACKEND_FAILED     REFUSED        answered with what failed (never where)
    DIALING        LOST               GONE           the dial is cancelled
    RELAYING       LOST               GONE           the relay ends the backend connection
    REFUSED        LOST               GONE
    GONE           BACKEND_CONNECTED  GONE           the DMZ left during the dial: the backend is dropped
    GONE           BACKEND_FAILED     GONE           the DMZ left during the dial: nothing to answer
    =============  =================  =============  ==================================================

    Leaving AWAITING_OPEN stops the header deadline; leaving AWAITING_OPEN or DIALING for any
    other state gives the pending place back (``_transition``), whichever way it is left.
    """

    LIFECYCLE: ClassVar[Transitions[BackendStreamState, BackendStreamEvent]] = {
        (BackendStreamState.NEW, BackendStreamEvent.ADMITTED): BackendStreamState.AWAITING_OPEN,
        (BackendStreamState.NEW, BackendStreamEvent.OVER_LIMIT): BackendStreamState.REFUSED,
        (BackendStreamState.AWAITING_OPEN, BackendStreamEvent.HEADER_LATE): BackendStreamState.REFUSED,
        (BackendStreamState.AWAITING_OPEN, BackendStreamEvent.HEADER_BAD): BackendStreamState.REFUSED,
        (BackendStreamState.AWAITING_OPEN, BackendStreamEvent.SERVICE_UNKNOWN): BackendStreamState.REFUSED,
        (BackendStreamState.AWAITING_OPEN, BackendStreamEvent.SERVICE_KNOWN): BackendStreamState.DIALING,
        (BackendStreamState.AWAITING_OPEN, BackendStreamEvent.LOST): BackendStreamState.GONE,
        (BackendStreamState.DIALING, BackendStreamEvent.BACKEND_CONNECTED): BackendStreamState.RELAYING,
        (BackendStreamState.DIALING, BackendStreamEvent.BACKEND_FAILED): BackendStreamState.REFUSED,
        (BackendStreamState.DIALING, BackendStreamEvent.LOST): BackendStreamState.GONE,
        (BackendStreamState.RELAYING, BackendStreamEvent.LOST): BackendStreamState.GONE,
        (BackendStreamState.REFUSED, BackendStreamEvent.LOST): BackendStreamState.GONE,
        (BackendStreamState.GONE, BackendStreamEvent.BACKEND_CONNECTED): BackendStreamState.GONE,
        (BackendStreamState.GONE, BackendStreamEvent.BACKEND_FAILED): BackendStreamState.GONE,
    }

    def __init__(self, gateway: "BackendDialer", link_peer: str, limits: OpenLimits) -> None:
        self.gateway = gateway
        self.link_peer = link_peer
        self.limits = limits
        self._reader = MessageReader((OpenRequest,))
        self._request: OpenRequest | None = None
        self._dialing: Deferred[BackendConnection] | None = None
        self._service: InternalService | None = None
        self._header_deadline = Deadline(limits.clock)
        # A header no longer awaited has no deadline, however it stops being awaited.
        self._life = Lifecycle(
            "BackendStream", self.LIFECYCLE, BackendStreamState.NEW,
            {BackendStreamState.AWAITING_OPEN: self._header_deadline.cancel},
        )  # fmt: skip

    @property
    def state(self) -> BackendStreamState:
        return self._life.state

    def _transition(self, event: BackendStreamEvent) -> BackendStreamState:
        """Take ``event``; a stream that stops pending gives its place back, however it stops."""
        before = self._life.state
        after = self._life.fire(event)
        if before in _PENDING and after not in _PENDING:
            self.limits.release()
        return after

    def connectionMade(self) -> None:
        limits = self.limits
        refusal = limits.admit()
        if refusal is not None:
            limit, detail, reason = refusal
            self._transition(BackendStreamEvent.OVER_LIMIT)
            limits.refused_by_limit(limit, detail)
            self._answer(OpenReply(OpenStatus.OVERLOADED, reason))
            self.transport.loseConnection()  # what the DMZ sends from now on is dropped unread
            return
        self._transition(BackendStreamEvent.ADMITTED)
        self._header_deadline.start(limits.header_timeout, self._header_timed_out)

    def _header_timed_out(self) -> None:
        self._transition(BackendStreamEvent.HEADER_LATE)
        timeout = self.limits.header_timeout
        self.limits.refused_by_limit(
            LIMIT_OPEN_HEADER_TIMEOUT,
            f"reset: no complete OPEN header within {timeout:g} s of the stream opening; nothing dialled",
        )
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        state = self._life.state
        if state is BackendStreamState.RELAYING or state is BackendStreamState.DIALING:
            super().dataReceived(data)  # relayed, or held until the backend is there
            return
        if state is not BackendStreamState.AWAITING_OPEN:
            return  # refused or reset: dropped unread
        try:
            request, rest = self._reader.feed(data)
        except WireError as problem:
            self._transition(BackendStreamEvent.HEADER_BAD)
            self.gateway.metrics.open_failures.labels(service="", reason="bad_open").inc()
            self.limits.refusals.refused("bad OPEN", f"reset: bad open request: {problem}; nothing dialled")
            self.transport.abortConnection()
            return
        if request is None:
            return
        assert isinstance(request, OpenRequest)
        self._request = request
        if rest:
            super().dataReceived(rest)
        self._start(request)

    def _start(self, request: OpenRequest) -> None:
        service = self.gateway.services.get(request.service)
        if service is None:
            self._transition(BackendStreamEvent.SERVICE_UNKNOWN)
            # The name comes from the DMZ: it is not used as a metric label (any number of them).
            self.gateway.metrics.open_failures.labels(service="", reason="unknown_service").inc()
            self.limits.refusals.refused(
                "unknown service",
                f"refused: no service {request.service!r} here (client {request.client}); nothing dialled",
            )
            self._answer(OpenReply(OpenStatus.UNKNOWN_SERVICE, f"connector has no service {request.service!r}"))
            self.transport.loseConnection()
            return
        self._transition(BackendStreamEvent.SERVICE_KNOWN)
        self._service = service
        self.transport.pauseProducing()  # nothing more from the DMZ until the backend is there
        self._dialing = self.gateway.dial(service, self.gateway.proxy_header(service, request))
        self._dialing.addCallbacks(self._connected, self._dial_failed)

    def _answer(self, reply: OpenReply) -> None:
        self.transport.write(encode(reply))

    def _connected(self, backend: BackendConnection) -> None:
        self._dialing = None
        if self._transition(BackendStreamEvent.BACKEND_CONNECTED) is BackendStreamState.GONE:
            backend.transport.abortConnection()
            return
        assert self._request is not None and self._service is not None
        name = self._service.name
        self._answer(OpenReply(OpenStatus.OK, ""))
        metrics = self.gateway.metrics
        active = metrics.streams_active.labels(service=name)
        active.inc()
        metrics.streams_total.labels(service=name).inc()

        def finished(reason: str) -> None:
            active.dec()

        # Both ends join the one relay; whatever either held (a backend's greeting, payload
        # that followed OPEN) goes out first, after the OK above.
        self.join(
            lambda stream_side: backend.join(
                lambda backend_side: Relay(
                    stream_side,
                    backend_side,
                    metrics.byte_tally(name, TO_BACKEND),
                    metrics.byte_tally(name, TO_CLIENT),
                    finished,
                )
            )
        )
        self.transport.resumeProducing()

    def _dial_failed(self, failure: Failure) -> None:
        self._dialing = None
        if self._transition(BackendStreamEvent.BACKEND_FAILED) is BackendStreamState.GONE:
            return  # the DMZ dropped the stream while we dialled
        assert self._request is not None and self._service is not None
        status = _classify(failure)
        name = self._service.name
        detail = f"backend {self._service.connect} for {name!r}: {failure.getErrorMessage()}"
        self.gateway.metrics.open_failures.labels(service=name, reason=status.name.lower()).inc()
        log.warn(
            "stream from DMZ {peer} (client {client}): {detail}",
            peer=self.link_peer, client=self._request.client, detail=detail,
        )
        # The DMZ shows this reason to public clients: say what failed, never where the backend is.
        self._answer(OpenReply(status, PUBLIC_REASONS[status].format(service=name)))
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._transition(BackendStreamEvent.LOST)
        if self._dialing is not None:
            dialing, self._dialing = self._dialing, None
            dialing.cancel()
        super().connectionLost(reason)


class BackendDialer:
    """Dials backends for the services in the connector's own configuration."""

    def __init__(
        self,
        services: tuple[InternalService, ...],
        metrics: Metrics,
        reactor: IGatewayReactor,
        observe: Callable[[str, bool, str], None] | None = None,
    ) -> None:
        self.services = {service.name: service for service in services}
        self.metrics = metrics
        self.reactor = reactor
        #: Told of every dial's outcome (service, connected, why not): passive health evidence.
        self.observe = observe if observe is not None else (lambda service, ok, why: None)
        self._told_unknown: set[str] = set()  # services whose OPENs came without client addresses

    def proxy_header(self, service: InternalService, request: OpenRequest) -> ProxyHeader | None:
        """What the backend is told of the client (``proxy-protocol``): its two ends from the
        OPEN's metadata; without them, a header that says nothing (v1 UNKNOWN, v2 LOCAL), and
        one log line per service saying why."""
        if service.proxy_protocol is None:
            return None
        ends = client_ends(request.metadata)
        if isinstance(ends, ProxyHeader):
            return ends
        if service.name not in self._told_unknown:
            self._told_unknown.add(service.name)
            log.warn(
                "service {service!r}: PROXY {version} header without addresses to its backend: {why}"
                " (said once per service)",
                service=service.name, version=service.proxy_protocol.value, why=ends,
            )  # fmt: skip
        return OWN_CONNECTION

    def dial(self, service: InternalService, header: ProxyHeader | None = None) -> Deferred[BackendConnection]:
        """Connect to ``service``'s backend, ``header`` first if it has ``proxy-protocol``."""
        endpoint = backend_endpoint(self.reactor, service, service.connect_timeout, header)
        factory = Factory.forProtocol(BackendConnection)
        factory.noisy = False
        connecting = cast("Deferred[BackendConnection]", endpoint.connect(factory))
        # A hard deadline on top of the endpoint's: TLS handshakes and name lookups count too.
        deadline: list[bool] = []
        def expire() -> None:
            deadline.append(True)
            connecting.cancel()

        timer = self.reactor.callLater(service.connect_timeout, expire)

        def done(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        def timed_out(failure: Failure) -> Failure:
            if failure.check(CancelledError, error.ConnectingCancelledError) and deadline:
                return Failure(error.TimeoutError(f"no connection within {service.connect_timeout:g} s"))
            return failure

        def observed(result: object) -> object:
            if not isinstance(result, Failure):
                self.observe(service.name, True, "")
            elif not result.check(CancelledError, error.ConnectingCancelledError):
                # Cancelled without the deadline: the client left; that says nothing of the backend.
                self.observe(service.name, False, f"a client's connection failed: {describe_failure(result)}")
            return result

        connecting.addBoth(done)
        connecting.addErrback(timed_out)
        connecting.addBoth(observed)
        return connecting


class BackendStreamFactory(Factory):
    """Builds a ``BackendStream`` for every stream the DMZ opens on one link (one factory per link).

    It holds the link's ``OpenLimits`` and ``RefusalLog``; call ``stop`` when the link is gone.
    """

    def __init__(
        self,
        dialer: BackendDialer,
        link_peer: Callable[[], str],
        max_pending_opens: int = 256,
        clock: IReactorTime | None = None,
        header_timeout: float = OPEN_HEADER_TIMEOUT,
        log_interval: float = REFUSAL_LOG_INTERVAL,
        budget: BufferBudget | None = None,
    ) -> None:
        self.dialer = dialer
        self.link_peer = link_peer
        clock = clock if clock is not None else dialer.reactor
        self.refusals = RefusalLog(clock, link_peer, log_interval)
        self.limits = OpenLimits(max_pending_opens, dialer.metrics, self.refusals, clock, header_timeout, budget)

    def buildProtocol(self, addr: IAddress | None) -> BackendStream:
        return BackendStream(self.dialer, self.link_peer(), self.limits)

    def stream_rejected(self, stream_id: int, reason: str, limit_reached: bool) -> None:
        """The mux refused a stream (RST) before any protocol saw it: count and log it."""
        if limit_reached:
            self.limits.refused_by_limit(LIMIT_STREAMS, f"stream {stream_id} reset: {reason} (max-streams)")
        else:
            self.refusals.refused("mux refusal", f"stream {stream_id} reset: {reason}")

    def stop(self) -> None:
        self.refusals.stop()

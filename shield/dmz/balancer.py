"""Balancer services (``type = "balancer"``): send each public client to the best cluster member.

The best member is alive, not draining, has a live connector link for a service that lists this
balancer in ``balance``, and serves the fewest clients (this member included). ``redirect`` answers
a WebSocket client with HTTP 302 to that member's own accept URI; ``proxy`` keeps the client and
splices it to the member over the cluster link (or serves it here, when this member is best), so
it works for every client, browsers and raw TCP included. If a member refuses or its link drops
before it answers, the next one is tried; with none left the client gets 503 and the reason.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import TYPE_CHECKING, Callable, ClassVar
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IHandshakeListener, IProtocol
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.deadline import Deadline
from shield.addresses import describe_address, host_of
from shield.cluster.link import ForwardFailed, ForwardStream
from shield.dmz.admission import ClientGate, Refusal, Refused, Ticket, finish
from shield.ops.http import http_response
from shield.dmz.auth import check_client_certificate, client_identity
from shield.cluster.membership import Candidate
from shield.cluster.messages import ForwardRequest
from shield.config.model import DmzService, Uri
from shield.handover import Handover
from shield.lifecycle import Lifecycle, Transitions
from shield.net import set_no_delay
from shield.ops.metrics import TO_BACKEND, TO_CLIENT, Metrics
from shield.relay import Relay, TransportSide

if TYPE_CHECKING:
    from shield.cluster.node import ClusterNode
    from shield.dmz.frontplane_ws import GuardedSite

log = Logger(namespace="shield.dmz.balancer")

#: An HTTP request head larger than this is refused (431) before any member is chosen.
MAX_HEAD = 16384



class BalancerFront:
    """The runtime of one balancer service: choice, metrics, refusal lines, local hand-over."""

    def __init__(
        self,
        config: DmzService,
        node: "ClusterNode",
        metrics: Metrics,
        local: Callable[[str, str, IAddress], IProtocol | None],
        gate: ClientGate,
    ) -> None:
        self.config = config
        self.name = config.name
        self.node = node
        self.metrics = metrics
        self.gate = gate
        self.clock = gate.clock
        self.local = local  # (service, kind, client address) -> protocol serving it here, or None
        self.relays: set[Relay] = set()
        self._idle_waiters: list[Deferred[None]] = []
        self._to_backend = metrics.byte_tally(self.name, TO_BACKEND)
        self._to_client = metrics.byte_tally(self.name, TO_CLIENT)

    def when_idle(self) -> Deferred[None]:
        """Fires once no client spliced by this balancer is open (at once if none is)."""
        if not self.relays:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def candidates(self, accept: Uri, exclude: set[str | None]) -> list[Candidate]:
        return self.node.candidates(accept, exclude)

    def counted(self, member: str | None) -> None:
        self.metrics.balanced.labels(service=self.name, member=member or self.node.own_name, mode=self.config.mode).inc()
        if member is not None:
            self.node.forwarded_to(member)

    def refused(self, client: str, kind: str, status: int, label: str, reason: str) -> None:
        self.metrics.open_failures.labels(service=self.name, reason=label).inc()
        log.warn("{kind} client {client} -> {service}: {status} {reason}", kind=kind, client=client, service=self.name, status=status, reason=reason)

    def relay(self, client: TransportSide, stream: ForwardStream) -> Relay:
        holder: list[Relay] = []

        def finished(reason: str) -> None:
            if holder:
                self.relays.discard(holder[0])
                if not self.relays:
                    waiters, self._idle_waiters = self._idle_waiters, []
                    for waiter in waiters:
                        waiter.callback(None)

        relay = stream.join(lambda side: Relay(client, side, self._to_backend, self._to_client, finished))
        if not relay.finished:
            holder.append(relay)
            self.relays.add(relay)
        return relay


def _no_member_reason(front: BalancerFront, tried: list[str]) -> str:
    if tried:
        return f"no cluster member took the client for {front.name!r} ({'; '.join(tried)})"
    alive = front.node.alive_members()
    return (
        f"no cluster member can serve {front.name!r} now "
        f"({len(alive)} peers alive; none live, not draining and balanced by this accept)"
    )


class BalancedClientState(Enum):
    NEW = auto()  # accepted (counted by the gateway), nothing decided yet
    HANDSHAKING = auto()  # tls: its TLS handshake must complete before the deadline
    SECURED = auto()  # tls: handshake done; its certificate is checked next
    READING_HEAD = auto()  # ws: its HTTP request head must come before the deadline
    PLACING = auto()  # a member is chosen and asked; the socket is paused, what it sent is held
    RELAYING = auto()  # spliced to a member over the cluster link
    HANDED_OVER = auto()  # served here: the protocol it was handed to has it
    CLOSING = auto()  # answered (refused, redirected) or cut: only its end is awaited
    GONE = auto()  # the connection is closed


class BalancedClientEvent(Enum):
    AWAIT_HANDSHAKE = auto()
    HANDSHAKE_DONE = auto()
    HANDSHAKE_LATE = auto()
    AWAIT_HEAD = auto()
    PLACE = auto()
    FORWARDED = auto()  # a member took it
    FORWARD_FAILED = auto()  # a member did not (or the cluster link failed)
    HAND_OVER = auto()  # to a protocol of this member (served here, or the listener's site)
    ANSWER = auto()  # a refusal, an HTTP error or a redirect is sent and the connection closed
    LOST = auto()


class _BalancedClient(Handover):
    """Shared by both front doors: try candidates in order, forward or serve here, else refuse.

    Its lifecycle (``LIFECYCLE``; any other event is a ``StateError``):

    ============  ===============  ============  ==============================================
    state         event            next          what happens
    ============  ===============  ============  ==============================================
    NEW           AWAIT_HANDSHAKE  HANDSHAKING   tls: the handshake deadline starts
    NEW           AWAIT_HEAD       READING_HEAD  ws: the request-head deadline starts
    NEW           PLACE            PLACING       tcp: admitted, paused, a member is chosen
    NEW           ANSWER           CLOSING       refused by a limit of the balancer
    HANDSHAKING   HANDSHAKE_DONE   SECURED
    HANDSHAKING   HANDSHAKE_LATE   CLOSING       cut, counted as handshake_timeout
    HANDSHAKING   LOST             GONE
    SECURED       PLACE            PLACING       paused, a member is chosen
    SECURED       ANSWER           CLOSING       its certificate is refused (auth = "mtls")
    READING_HEAD  PLACE            PLACING       admitted: paused, a member is chosen
    READING_HEAD  HAND_OVER        HANDED_OVER   a path of no balancer: to the listener's site
    READING_HEAD  ANSWER           CLOSING       408, 431, 400, 404, or a limit or auth refusal
    READING_HEAD  LOST             GONE
    PLACING       FORWARDED        RELAYING      resumed; what it sent so far goes first
    PLACING       FORWARD_FAILED   PLACING       the next member is tried, or it is refused
    PLACING       HAND_OVER        HANDED_OVER   served here; what it sent so far is replayed
    PLACING       ANSWER           CLOSING       302 to the member, or refused with the reasons
    PLACING       LOST             GONE          the forward is cancelled
    RELAYING      LOST             GONE          the relay ends the forward stream
    HANDED_OVER   LOST             GONE          passed on to the protocol serving it
    CLOSING       HANDSHAKE_DONE   CLOSING       TLS went on after a refusal at the door
    CLOSING       LOST             GONE
    GONE          FORWARDED        GONE          it left during the forward: stream dropped
    GONE          FORWARD_FAILED   GONE          it left during the forward: nothing to say
    ============  ===============  ============  ==============================================

    What it sends is relayed in RELAYING, held in PLACING, read as a request head in
    READING_HEAD, and dropped in the other states before the hand-over.
    """

    LIFECYCLE: ClassVar[Transitions[BalancedClientState, BalancedClientEvent]] = {
        (BalancedClientState.NEW, BalancedClientEvent.AWAIT_HANDSHAKE): BalancedClientState.HANDSHAKING,
        (BalancedClientState.NEW, BalancedClientEvent.AWAIT_HEAD): BalancedClientState.READING_HEAD,
        (BalancedClientState.NEW, BalancedClientEvent.PLACE): BalancedClientState.PLACING,
        (BalancedClientState.NEW, BalancedClientEvent.ANSWER): BalancedClientState.CLOSING,
        (BalancedClientState.HANDSHAKING, BalancedClientEvent.HANDSHAKE_DONE): BalancedClientState.SECURED,
        (BalancedClientState.HANDSHAKING, BalancedClientEvent.HANDSHAKE_LATE): BalancedClientState.CLOSING,
        (BalancedClientState.HANDSHAKING, BalancedClientEvent.LOST): BalancedClientState.GONE,
        (BalancedClientState.SECURED, BalancedClientEvent.PLACE): BalancedClientState.PLACING,
        (BalancedClientState.SECURED, BalancedClientEvent.ANSWER): BalancedClientState.CLOSING,
        (BalancedClientState.READING_HEAD, BalancedClientEvent.PLACE): BalancedClientState.PLACING,
        (BalancedClientState.READING_HEAD, BalancedClientEvent.HAND_OVER): BalancedClientState.HANDED_OVER,
        (BalancedClientState.READING_HEAD, BalancedClientEvent.ANSWER): BalancedClientState.CLOSING,
        (BalancedClientState.READING_HEAD, BalancedClientEvent.LOST): BalancedClientState.GONE,
        (BalancedClientState.PLACING, BalancedClientEvent.FORWARDED): BalancedClientState.RELAYING,
        (BalancedClientState.PLACING, BalancedClientEvent.FORWARD_FAILED): BalancedClientState.PLACING,
        (BalancedClientState.PLACING, BalancedClientEvent.HAND_OVER): BalancedClientState.HANDED_OVER,
        (BalancedClientState.PLACING, BalancedClientEvent.ANSWER): BalancedClientState.CLOSING,
        (BalancedClientState.PLACING, BalancedClientEvent.LOST): BalancedClientState.GONE,
        (BalancedClientState.RELAYING, BalancedClientEvent.LOST): BalancedClientState.GONE,
        (BalancedClientState.HANDED_OVER, BalancedClientEvent.LOST): BalancedClientState.GONE,
        (BalancedClientState.CLOSING, BalancedClientEvent.HANDSHAKE_DONE): BalancedClientState.CLOSING,
        (BalancedClientState.CLOSING, BalancedClientEvent.LOST): BalancedClientState.GONE,
        (BalancedClientState.GONE, BalancedClientEvent.FORWARDED): BalancedClientState.GONE,
        (BalancedClientState.GONE, BalancedClientEvent.FORWARD_FAILED): BalancedClientState.GONE,
    }

    kind = "tcp"  # what the member receives: "ws" (an HTTP upgrade request) or "tcp"
    front: BalancerFront
    accept: Uri

    def __init__(self) -> None:
        self.client = "?"
        self.relay_: Relay | None = None
        self.side: TransportSide | None = None
        self._initial = b""
        self._tried: list[str] = []
        self._exclude: set[str | None] = set()
        self._pending: Deferred[ForwardStream] | None = None
        self._life = Lifecycle(type(self).__name__, self.LIFECYCLE, BalancedClientState.NEW)
        self._metadata: dict[str, str] = {}
        self.connection_ticket: Ticket | None = None  # the gateway's count, taken at accept
        self.gate: ClientGate  # set by the factory

    @property
    def state(self) -> BalancedClientState:
        return self._life.state

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        self.client = describe_address(self.transport.getPeer())
        if self.connection_ticket is not None:
            # Kept with the socket: after a hand-over, a WebSocket protocol may see its end.
            self.gate.hold(self.transport, self.connection_ticket)
            self.connection_ticket = None

    def admitted(self) -> bool:
        """This balancer's own limits, once the client is known to be its client."""
        admitted = self.front.gate.admit(self.front.name, self.front.config.limits, host_of(self.transport.getPeer()), self.client)
        if isinstance(admitted, Refusal):
            self.send_refusal(admitted.status, admitted.reason)
            return False
        self.gate.hold(self.transport, admitted)
        return True

    def authenticated(self) -> bool:
        """``auth = "mtls"`` on the balancer: it terminates TLS, so it checks the certificate and
        tells the member who the client is (members trust what a cluster peer says)."""
        if self.front.config.auth != "mtls":
            return True
        denied = check_client_certificate(self.front.config, self.transport)
        if denied is not None:
            self.front.refused(self.client, self.kind, denied.status, denied.label, denied.reason)
            self.send_refusal(denied.status, denied.reason)
            return False
        self._metadata["client-identity"] = client_identity(self.transport) or "?"
        return True

    def place(self, initial: bytes) -> None:
        """Choose a member for this client and hand it over; ``initial`` are the bytes read so far."""
        self._life.fire(BalancedClientEvent.PLACE)
        self._initial = initial
        self.transport.pauseProducing()
        self._next()

    def _next(self) -> None:
        found = self.front.candidates(self.accept, self._exclude)
        if not found:
            self.refuse(503, "no_member", _no_member_reason(self.front, self._tried))
            return
        choice = found[0]
        self.choose(choice)

    def choose(self, choice: Candidate) -> None:
        self.forward_to(choice)

    def forward_to(self, choice: Candidate) -> None:
        if choice.member is None:
            peer = self.transport.getPeer()
            inner = self.front.local(choice.service, self.kind, peer)
            if inner is None:
                self._exclude.add(None)
                self._tried.append("this member cannot serve it")
                self._next()
                return
            self._life.fire(BalancedClientEvent.HAND_OVER)
            self.front.counted(None)
            self.transport.resumeProducing()
            self.hand_to(inner, self._initial)
            return
        peer = self.transport.getPeer()
        request = ForwardRequest(
            service=choice.service, kind=self.kind,
            client_host=getattr(peer, "host", "?"), client_port=getattr(peer, "port", 0),
            metadata=self._metadata,
        )  # fmt: skip
        self._pending = self.front.node.forward(choice.member, request, self.front.config.open_timeout)
        self._pending.addCallbacks(self._forwarded, self._forward_failed, errbackArgs=(choice,))

    def _forwarded(self, stream: ForwardStream) -> None:
        self._pending = None
        if self._life.fire(BalancedClientEvent.FORWARDED) is BalancedClientState.GONE:
            stream.transport.abortConnection()
            return
        self.front.counted(stream.member)
        self.side = TransportSide(self.transport)
        self.relay_ = self.front.relay(self.side, stream)
        if self._initial:
            self.relay_.received(self.side, self._initial)
            self._initial = b""
        self.transport.resumeProducing()

    def _forward_failed(self, failure: Failure, choice: Candidate) -> None:
        self._pending = None
        if self._life.fire(BalancedClientEvent.FORWARD_FAILED) is BalancedClientState.GONE:
            return
        problem = failure.value
        if isinstance(problem, ForwardFailed) and problem.retry:
            self._exclude.add(choice.member)
            self._tried.append(problem.reason)
            self._next()
            return
        self.refuse(502, "forward_failed", failure.getErrorMessage())

    def refuse(self, status: int, label: str, reason: str) -> None:
        self.front.refused(self.client, self.kind, status, label, reason)
        self.send_refusal(status, reason)

    def send_refusal(self, status: int, reason: str) -> None:
        self._life.fire(BalancedClientEvent.ANSWER)
        self.answer(status, reason)

    def answer(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        """Tell the client ``status`` and close: raw TCP has no status to send, so it only closes."""
        self.transport.loseConnection()

    def before_handover(self, data: bytes) -> None:
        state = self._life.state
        if state is BalancedClientState.RELAYING:
            self.relay_.received(self.side, data)  # type: ignore[union-attr, arg-type]  # relay_ and side are set on FORWARDED
        elif state is BalancedClientState.PLACING:
            self._initial += data  # a member is being chosen: hold, it will get these first
        elif state is BalancedClientState.READING_HEAD:
            self.before_choice(data)
        # else answered, cut, or not secured yet: dropped

    def before_choice(self, data: bytes) -> None:
        """Bytes of a request head: only a door that reads one first (``BalancedHttpClient``) is
        ever in READING_HEAD."""
        raise NotImplementedError

    def readConnectionLost(self) -> None:
        if self._life.state is BalancedClientState.RELAYING:
            self.relay_.eof(self.side)  # type: ignore[union-attr, arg-type]  # relay_ and side are set on FORWARDED
        else:
            super().readConnectionLost()  # to the protocol it was handed to, or the end

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._life.fire(BalancedClientEvent.LOST)
        self.gate.release(self.transport)
        super().connectionLost(reason)

    def lost_before_handover(self, reason: Failure) -> None:
        if self.relay_ is not None:
            from twisted.internet import error

            clean = reason.check(error.ConnectionDone) is not None
            self.relay_.lost(self.side, clean, reason.getErrorMessage())  # type: ignore[arg-type]  # side is set together with relay_, in join()
        elif self._pending is not None:
            pending, self._pending = self._pending, None
            pending.addErrback(lambda _: None)
            pending.cancel()


@implementer(IHandshakeListener)
class BalancedTcpClient(_BalancedClient):
    """A raw TCP (or TLS, terminated here) client of a balancer: always proxied."""

    def __init__(self, front: BalancerFront, accept: Uri) -> None:
        super().__init__()
        self.front = front
        self.accept = accept
        self._handshake_deadline = Deadline(front.clock)

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self.admitted():
            return
        if self.accept.scheme == "tcp":
            self.place(b"")
        else:
            self._life.fire(BalancedClientEvent.AWAIT_HANDSHAKE)
            seconds = self.front.config.limits.handshake_timeout
            self._handshake_deadline.start(seconds, self._handshake_too_slow, seconds)

    def _handshake_too_slow(self, seconds: float) -> None:
        self._life.fire(BalancedClientEvent.HANDSHAKE_LATE)
        self.front.metrics.refusals.labels(service=self.front.name, limit="handshake_timeout").inc()
        self.front.gate.note(self.front.name, "handshake_timeout", f"tls client {self.client} -> {self.front.name}: no TLS handshake within {seconds:g} s; closed")
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        self._handshake_deadline.cancel()
        if self._life.fire(BalancedClientEvent.HANDSHAKE_DONE) is BalancedClientState.CLOSING:
            return  # refused at the door while TLS went on
        if self.authenticated():
            self.place(b"")

    def lost_before_handover(self, reason: Failure) -> None:
        self._handshake_deadline.cancel()
        super().lost_before_handover(reason)


class BalancedHttpClient(_BalancedClient):
    """A WebSocket client of a balancer: the request head picks the route, then redirect or proxy.

    ``routes`` maps paths on this listener to balancers; any other path goes, unread, to the
    listener's ordinary WebSocket site (``fallback``) when it has one.
    """

    kind = "ws"

    def __init__(self, routes: dict[str, tuple[BalancerFront, Uri]], fallback: GuardedSite | None, clock, head_timeout: float) -> None:
        super().__init__()
        self.routes = routes
        self.fallback = fallback
        self.clock = clock
        self.head_timeout = head_timeout
        self._head = b""
        self._head_deadline = Deadline(clock)
        self._target = ""

    def connectionMade(self) -> None:
        super().connectionMade()
        self._life.fire(BalancedClientEvent.AWAIT_HEAD)
        self._head_deadline.start(self.head_timeout, self._slow)

    def _slow(self) -> None:
        front = next(iter(self.routes.values()))[0]
        front.metrics.refusals.labels(service="", limit="handshake_timeout").inc()
        front.gate.note("", "handshake_timeout", f"ws client {self.client}: no complete request within {self.head_timeout:g} s; closed (408)")
        self.send_refusal(408, f"request not completed within {self.head_timeout:g} s")

    def before_choice(self, data: bytes) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD:
                self._head_deadline.cancel()
                log.info("ws client {client}: request head over {n} bytes; refused (431)", client=self.client, n=MAX_HEAD)
                self.send_refusal(431, f"request head over {MAX_HEAD} bytes")
            return
        self._head_deadline.cancel()
        head, self._head = self._head, b""
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            log.info("ws client {client}: bad request line {line!r}; refused (400)", client=self.client, line=request_line[:80])
            self.send_refusal(400, "bad request line")
            return
        self._target = parts[1]
        path = urlsplit(self._target).path
        route = self.routes.get(path)
        if route is None:
            if self.fallback is not None:
                self._life.fire(BalancedClientEvent.HAND_OVER)
                self.hand_to(self.fallback.handed_over(self.transport.getPeer()), head)
            else:
                self.send_refusal(404, "no WebSocket service at this path")
            return
        self.front, self.accept = route
        if self.admitted() and self.authenticated():
            self.place(head)

    def choose(self, choice: Candidate) -> None:
        if self.front.config.mode != "redirect":
            self.forward_to(choice)
            return
        location = _location(choice, self.accept, self._target)
        if location is None:
            self._exclude.add(choice.member)
            self._tried.append(f"member {choice.member or self.front.node.own_name!r} has no address to redirect to")
            self._next()
            return
        self.front.counted(choice.member)
        self._life.fire(BalancedClientEvent.ANSWER)
        self.answer(302, "", (("Location", location),))

    def answer(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        if status == 401:
            headers = (*headers, ("WWW-Authenticate", 'Bearer realm="shield"'))
        self.transport.write(http_response(status, reason, headers))
        finish(self.transport)

    def lost_before_handover(self, reason: Failure) -> None:
        self._head_deadline.cancel()
        super().lost_before_handover(reason)


def _location(choice: Candidate, accept: Uri, target: str) -> str | None:
    """The member's accept for a redirect: same scheme preferred, ws -> http and wss -> https."""
    from shield.config.errors import ConfigError
    from shield.config.uris import parse_uri

    parsed = []
    for text in choice.accept:
        try:
            parsed.append(parse_uri(text, ("ws", "wss", "tcp", "tls"), "accept"))
        except ConfigError:
            continue
    usable = [u for u in parsed if u.scheme in ("ws", "wss") and u.host not in ("0.0.0.0", "::")]
    usable.sort(key=lambda u: u.scheme != accept.scheme)
    if not usable:
        return None
    uri = usable[0]
    query = urlsplit(target).query
    host = f"[{uri.host}]" if ":" in uri.host else uri.host
    scheme = "https" if uri.scheme == "wss" else "http"
    return f"{scheme}://{host}:{uri.port}{uri.path}" + (f"?{query}" if query else "")


class BalancedHttpFactory(Factory):
    def __init__(self, routes: dict[str, tuple[BalancerFront, Uri]], fallback: GuardedSite | None, gate: ClientGate) -> None:
        self.routes = routes
        self.fallback = fallback
        self.gate = gate
        self.noisy = False
        # The path is not known before the head is in: the shortest timeout of the listener.
        self.head_timeout = min(front.config.limits.handshake_timeout for front, _ in routes.values())

    def buildProtocol(self, addr: IAddress | None) -> BalancedHttpClient | Refused:
        ticket = self.gate.connection(host_of(addr), describe_address(addr))
        if isinstance(ticket, Refusal):
            return Refused(ticket, http=True)
        protocol = BalancedHttpClient(self.routes, self.fallback, self.gate.clock, self.head_timeout)
        protocol.factory = self
        protocol.gate = self.gate
        protocol.connection_ticket = ticket
        return protocol


class BalancedTcpFactory(Factory):
    def __init__(self, front: BalancerFront, accept: Uri) -> None:
        self.front = front
        self.accept = accept
        self.noisy = False

    def buildProtocol(self, addr: IAddress | None) -> BalancedTcpClient | Refused:
        ticket = self.front.gate.connection(host_of(addr), describe_address(addr))
        if isinstance(ticket, Refusal):
            return Refused(ticket, http=False)
        protocol = BalancedTcpClient(self.front, self.accept)
        protocol.factory = self
        protocol.gate = self.front.gate
        protocol.connection_ticket = ticket
        return protocol

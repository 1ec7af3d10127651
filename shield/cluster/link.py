"""One member-to-member link: mutual TLS, yamux, a heartbeat stream each way, forwarded clients.

The peer's name comes from its certificate (the TLS layer already refused anything that is not
an admitted gateway certificate from the backplane CA). Its heartbeats must carry that same name
and this cluster's name, or the link is closed with one log line.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import Any, ClassVar
from typing import Protocol as TypingProtocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from shield.deadline import Deadline
from shield.refusal import Refusal, RefusedError
from shield.cluster.messages import (
    ClusterWireError,
    ForwardReply,
    ForwardRequest,
    Heartbeat,
    MessageDecoder,
    encode,
    heartbeats_header,
)
from shield.handover import Handover
from shield.lifecycle import Lifecycle, Transitions
from shield.link.roles import link_mux, tune_link_socket, why_link_ended
from shield.mux.budget import BufferBudget
from shield.mux.config import MuxConfig
from shield.mux.stream import MuxStream
from shield.net import is_ipv6
from shield.relay import RelayedProtocol
from shield.tls.identity import peer_identity

log = Logger(namespace="shield.cluster")

#: Seconds a peer has to finish TLS and say who it is.
HANDSHAKE_TIMEOUT = 10.0


class MemberHost(TypingProtocol):
    """What a member link needs from the cluster node that keeps it (shield/cluster/node.py)."""

    @property
    def cluster_name(self) -> str: ...

    def link_ready(self, link: "MemberLink", name: str) -> bool:
        """TLS is up and the peer's certificate names ``name``: may the link serve?"""

    def own_heartbeat(self) -> Heartbeat:
        """This member's heartbeat now, the first one a new link sends."""

    def heard(self, link: "MemberLink", heartbeat: Heartbeat) -> None:
        """A heartbeat arrived on ``link`` (raises ``ClusterWireError`` when it lies)."""

    def serve_forward(self, request: ForwardRequest, balancer: str) -> tuple[ForwardReply, IProtocol | None]:
        """A peer's balancer forwards a client here."""

    def link_lost(self, link: "MemberLink", reason: str) -> None:
        """The link is gone, for ``reason``."""


class MemberLink:
    """A link to one peer member; ``dialled`` is True on the side that connected. Its ``mux`` is
    the protocol."""

    def __init__(
        self,
        host: MemberHost,
        dialled: bool,
        endpoint: str,
        mux_config: MuxConfig,
        clock: IReactorTime,
        budget: BufferBudget | None = None,
        peer_host: str = "",
    ) -> None:
        self.host = host
        self.clock = clock
        self.mux = link_mux(
            self, client=dialled, config=mux_config, stream_factory=_IncomingStreams(self), clock=clock, budget=budget
        )
        self.dialled = dialled
        self.endpoint = endpoint  # what was dialled, or the address a peer came from
        self.peer_host = peer_host or endpoint  # the key of its rate-limited log lines
        self.peer_name: str | None = None
        self.heartbeats_out: MuxStream | None = None
        self._handshake_deadline = Deadline(clock)
        self.up_since: float | None = None

    # -- MuxOwner ------------------------------------------------------------------------------

    def mux_connected(self) -> None:
        tune_link_socket(self.mux)
        self._handshake_deadline.start(HANDSHAKE_TIMEOUT, self._no_handshake)

    def _no_handshake(self) -> None:
        self.mux.abort(f"no TLS handshake within {HANDSHAKE_TIMEOUT:g} s")

    def mux_secured(self) -> None:
        self._handshake_deadline.cancel()
        name = peer_identity(self.mux.transport)
        if name is None:
            self.mux.close("the peer's certificate names no member")
            return
        if not self.host.link_ready(self, name):
            self.mux.close(f"the peer is this member itself ({name!r})")
            return
        self.peer_name = name
        self.up_since = self.clock.seconds()
        try:
            self.heartbeats_out = self.mux.open_stream(Protocol())
        except Exception as problem:  # the session died under us
            log.warn("cluster link to {name}: cannot open heartbeat stream: {p}", name=name, p=problem)
            return
        self.heartbeats_out.write(encode(heartbeats_header(self.host.cluster_name)))
        self.send_heartbeat(self.host.own_heartbeat())

    def mux_going_away(self) -> None:
        pass

    def stream_rejected(self, stream_id: int, reason: str) -> bool:
        return False

    def mux_lost(self, reason: Failure) -> None:
        self._handshake_deadline.cancel()
        self.host.link_lost(self, why_link_ended(self.mux, reason))

    # -- what the node asks ----------------------------------------------------------------------

    def send_heartbeat(self, heartbeat: Heartbeat) -> None:
        stream = self.heartbeats_out
        if stream is not None and self.mux.is_open and not stream.disconnecting:
            stream.write(encode(heartbeat.to_json()))

    @property
    def usable(self) -> bool:
        mux = self.mux
        return self.peer_name is not None and mux.is_open and mux.transport is not None and not mux.going_away


class _IncomingStreams(Factory):
    def __init__(self, link: MemberLink) -> None:
        self.link = link

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        if self.link.peer_name is None:
            return None  # nothing before the handshake
        return IncomingStream(self.link)


class IncomingStream(Handover):
    """A stream the peer opened: its heartbeats, or a client its balancer forwards to us."""

    def __init__(self, link: MemberLink) -> None:
        self.link = link
        self._decoder = MessageDecoder()
        self._kind: str | None = None

    def before_handover(self, data: bytes) -> None:
        try:
            if self._kind is None:
                header = self._decoder.feed(data, limit=1)
                if not header:
                    return
                self._header(header[0])
                if self._kind == "forward":
                    self._forward(ForwardRequest.from_json(header[0]))
                    return
                data = b""
            for message in self._decoder.feed(data):
                self.link.host.heard(self.link, Heartbeat.from_json(message))
        except ClusterWireError as problem:
            log.warn("cluster link to {name}: bad message: {problem}; link closed", name=self.link.peer_name, problem=problem)
            self.link.mux.abort(f"bad cluster message: {problem}")

    def _header(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "heartbeats":
            cluster = message.get("cluster")
            if cluster != self.link.host.cluster_name:
                raise ClusterWireError(
                    f"member {self.link.peer_name!r} belongs to cluster {str(cluster)[:64]!r}, "
                    f"not {self.link.host.cluster_name!r}"
                )
            self._kind = "heartbeats"
        elif kind == "forward":
            self._kind = "forward"
        else:
            raise ClusterWireError(f"unknown stream type {str(kind)[:40]!r}")

    def _forward(self, request: ForwardRequest) -> None:
        try:
            reply, inner = self.link.host.serve_forward(request, self.link.peer_name or "?")
        except Exception:
            # One client the member could not take must not cost the link and its other clients.
            log.failure("cluster: forwarded client of {service!r} from {name}: internal error", service=request.service, name=self.link.peer_name)
            reply, inner = ForwardReply(502, "internal error on the member"), None
        self.transport.write(encode(reply.to_json()))
        if inner is None:
            self.transport.loseConnection()
            return
        # The forward stream speaks for the balancer's client: its address, and (a balancer that
        # terminated TLS and verified a client certificate says whose it was) its identity.
        stream: Any = self.transport
        stream.speaks_for = _address(request.client_host, request.client_port)
        stream.client_identity = request.metadata.get("client-identity")
        self.hand_to(inner, self._decoder.take_rest())


def _address(host: str, port: int) -> IAddress:
    if is_ipv6(host):
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


class ForwardState(Enum):
    NEW = auto()  # the stream is being opened on the member link
    AWAITING_ANSWER = auto()  # the forward header is sent; the member must answer before the deadline
    ANSWERED = auto()  # the member took the client: bytes go to the relay (held until it joins)
    FAILED = auto()  # ``answered`` failed (refused, bad or late answer, closed): closing
    CANCELLED = auto()  # the balancer's client left before the answer: reset
    GONE = auto()  # the stream is closed


class ForwardEvent(Enum):
    HEADER_SENT = auto()
    ANSWER_OK = auto()
    ANSWER_REFUSED = auto()  # a reply that is not ok
    ANSWER_BAD = auto()  # bytes that are no reply
    ANSWER_LATE = auto()  # the open-timeout ran out
    INPUT_ENDED = auto()  # the member half-closed the stream
    CANCEL = auto()  # ``answered`` was cancelled: the client left
    LOST = auto()  # the stream's connectionLost


class ForwardStream(RelayedProtocol):
    """The balancer's end of one forwarded client: header, the member's answer, then bytes.

    Its lifecycle (``LIFECYCLE``; any other event is a ``StateError``):

    ===============  ==============  ===============  =================================================
    state            event           next             what happens
    ===============  ==============  ===============  =================================================
    NEW              HEADER_SENT     AWAITING_ANSWER  the forward header written; the deadline starts
    AWAITING_ANSWER  ANSWER_OK       ANSWERED         ``answered`` fires with this stream
    AWAITING_ANSWER  ANSWER_REFUSED  FAILED           fails with the member's status; closed
    AWAITING_ANSWER  ANSWER_BAD      FAILED           fails with 502; reset
    AWAITING_ANSWER  ANSWER_LATE     FAILED           fails with 504; reset
    AWAITING_ANSWER  INPUT_ENDED     FAILED           fails with 502; closed
    AWAITING_ANSWER  CANCEL          CANCELLED        reset: the member stops serving a client
                                                      that is gone
    AWAITING_ANSWER  LOST            GONE             fails with 502: the link died, another member may
    ANSWERED         INPUT_ENDED     ANSWERED         passed to the relay (half-close), or held for it
    ANSWERED         LOST            GONE             the relay ends the client
    FAILED           INPUT_ENDED     FAILED           nothing more to hear
    FAILED           LOST            GONE
    CANCELLED        INPUT_ENDED     CANCELLED        nothing more to hear
    CANCELLED        LOST            GONE
    ===============  ==============  ===============  =================================================

    Leaving AWAITING_ANSWER stops the answer deadline, whichever way it is left. Bytes from the
    member are read as its answer in AWAITING_ANSWER, relayed (or held) in ANSWERED and dropped
    in every other state.
    """

    LIFECYCLE: ClassVar[Transitions[ForwardState, ForwardEvent]] = {
        (ForwardState.NEW, ForwardEvent.HEADER_SENT): ForwardState.AWAITING_ANSWER,
        (ForwardState.AWAITING_ANSWER, ForwardEvent.ANSWER_OK): ForwardState.ANSWERED,
        (ForwardState.AWAITING_ANSWER, ForwardEvent.ANSWER_REFUSED): ForwardState.FAILED,
        (ForwardState.AWAITING_ANSWER, ForwardEvent.ANSWER_BAD): ForwardState.FAILED,
        (ForwardState.AWAITING_ANSWER, ForwardEvent.ANSWER_LATE): ForwardState.FAILED,
        (ForwardState.AWAITING_ANSWER, ForwardEvent.INPUT_ENDED): ForwardState.FAILED,
        (ForwardState.AWAITING_ANSWER, ForwardEvent.CANCEL): ForwardState.CANCELLED,
        (ForwardState.AWAITING_ANSWER, ForwardEvent.LOST): ForwardState.GONE,
        (ForwardState.ANSWERED, ForwardEvent.INPUT_ENDED): ForwardState.ANSWERED,
        (ForwardState.ANSWERED, ForwardEvent.LOST): ForwardState.GONE,
        (ForwardState.FAILED, ForwardEvent.INPUT_ENDED): ForwardState.FAILED,
        (ForwardState.FAILED, ForwardEvent.LOST): ForwardState.GONE,
        (ForwardState.CANCELLED, ForwardEvent.INPUT_ENDED): ForwardState.CANCELLED,
        (ForwardState.CANCELLED, ForwardEvent.LOST): ForwardState.GONE,
    }

    def __init__(self, request: ForwardRequest, member: str, timeout: float, clock: IReactorTime) -> None:
        self.request = request
        self.member = member
        # Cancelling it (the balancer's client left) resets the stream, so the member stops too.
        self.answered: Deferred[ForwardStream] = Deferred(lambda _: self._cancelled())
        self._timeout = timeout
        self._clock = clock
        self._answer_deadline = Deadline(clock)
        self._decoder = MessageDecoder()
        # An answer no longer awaited has no deadline, however it stops being awaited.
        self._life = Lifecycle(
            "ForwardStream", self.LIFECYCLE, ForwardState.NEW, {ForwardState.AWAITING_ANSWER: self._answer_deadline.cancel}
        )

    @property
    def state(self) -> ForwardState:
        return self._life.state

    def _transition(self, event: ForwardEvent) -> None:
        self._life.fire(event)

    def _fail(self, event: ForwardEvent, problem: "ForwardFailed") -> None:
        self._transition(event)
        self.answered.errback(problem)

    def connectionMade(self) -> None:
        self._transition(ForwardEvent.HEADER_SENT)
        self.transport.write(encode(self.request.to_json()))
        self._answer_deadline.start(self._timeout, self._timed_out)

    def _timed_out(self) -> None:
        late = ForwardFailed(504, f"member {self.member!r} did not answer within {self._timeout:g} s", retry=True)
        self._fail(ForwardEvent.ANSWER_LATE, late)
        self.transport.abortConnection()

    def _cancelled(self) -> None:
        if self._life.state is ForwardState.AWAITING_ANSWER:
            self._transition(ForwardEvent.CANCEL)
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        state = self._life.state
        if state is ForwardState.ANSWERED:
            super().dataReceived(data)
            return
        if state is not ForwardState.AWAITING_ANSWER:
            return  # failed or cancelled: nobody will read it
        try:
            messages = self._decoder.feed(data, limit=1)
            if not messages:
                return
            reply = ForwardReply.from_json(messages[0])
        except ClusterWireError as problem:
            bad = ForwardFailed(502, f"member {self.member!r} sent a bad reply: {problem}", retry=True)
            self._fail(ForwardEvent.ANSWER_BAD, bad)
            self.transport.abortConnection()
            return
        rest = self._decoder.take_rest()
        if not reply.ok:
            refused = ForwardFailed(reply.status, f"member {self.member!r}: {reply.reason}", retry=True)
            self._fail(ForwardEvent.ANSWER_REFUSED, refused)
            self.transport.loseConnection()
            return
        self._transition(ForwardEvent.ANSWER_OK)
        if rest:
            super().dataReceived(rest)
        self.answered.callback(self)

    def readConnectionLost(self) -> None:
        state = self._life.state
        if state is ForwardState.AWAITING_ANSWER:
            closed = ForwardFailed(502, f"member {self.member!r} closed the stream without answering", retry=True)
            self._fail(ForwardEvent.INPUT_ENDED, closed)
            self.transport.loseConnection()
            return
        self._transition(ForwardEvent.INPUT_ENDED)
        if state is ForwardState.ANSWERED:
            super().readConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        state = self._life.state
        if state is ForwardState.AWAITING_ANSWER:
            lost = ForwardFailed(502, f"link to member {self.member!r} lost: {reason.getErrorMessage()}", retry=True)
            self._fail(ForwardEvent.LOST, lost)
            return
        self._transition(ForwardEvent.LOST)
        if state is ForwardState.ANSWERED and self.relay is not None:
            super().connectionLost(reason)

    def describe_loss(self, reason: Failure) -> str:
        message = reason.getErrorMessage()
        if "mux session lost" in message:
            return f"cluster link to member {self.member!r} lost"
        return message or "closed"


class ForwardFailed(RefusedError):
    """A member did not take a forwarded client; ``retry`` says another member may."""

    def __init__(self, status: int, reason: str, retry: bool) -> None:
        super().__init__(Refusal(status, "forward_failed", reason), retry)

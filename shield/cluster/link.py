"""One member-to-member link: mutual TLS, yamux, a heartbeat stream each way, forwarded clients.

The peer's name comes from its certificate (the TLS layer already refused anything that is not
an admitted gateway certificate from the backplane CA). Its heartbeats must carry that same name
and this cluster's name, or the link is closed with one log line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHandshakeListener, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

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
from shield.mux.protocol import MuxProtocol
from shield.mux.stream import MuxStream
from shield.net import is_ipv6, set_no_delay
from shield.relay import RelayedProtocol
from shield.tls.contexts import describe_tls_failure
from shield.tls.identity import peer_identity

if TYPE_CHECKING:
    from shield.cluster.node import ClusterNode

log = Logger(namespace="shield.cluster")

#: Seconds a peer has to finish TLS and say who it is.
HANDSHAKE_TIMEOUT = 10.0


@implementer(IHandshakeListener)
class MemberLinkProtocol(MuxProtocol):
    """A link to one peer member; ``dialled`` is True on the side that connected."""

    def __init__(self, node: "ClusterNode", dialled: bool, endpoint: str, peer_host: str = "") -> None:
        super().__init__(
            client=dialled, config=node.mux_config, stream_factory=_IncomingStreams(self), clock=node.clock,
            budget=node.budget,
        )
        self.node = node
        self.dialled = dialled
        self.endpoint = endpoint  # what was dialled, or the address a peer came from
        self.peer_host = peer_host or endpoint  # the key of its rate-limited log lines
        self.peer_name: str | None = None
        self.heartbeats_out: MuxStream | None = None
        self._handshake_deadline = Deadline(node.clock)
        self.up_since: float | None = None

    keepalive_after_handshake = True

    def connectionMade(self) -> None:
        super().connectionMade()
        set_no_delay(self.transport)
        self._handshake_deadline.start(HANDSHAKE_TIMEOUT, self._no_handshake)

    def _no_handshake(self) -> None:
        self.abort(f"no TLS handshake within {HANDSHAKE_TIMEOUT:g} s")

    def handshakeCompleted(self) -> None:
        self.start_keepalive()
        self._handshake_deadline.cancel()
        name = peer_identity(self.transport)
        if name is None or not self.node.link_ready(self, name):
            self._close_transport()
            return
        self.peer_name = name
        self.up_since = self.node.clock.seconds()
        sender = Protocol()
        try:
            self.heartbeats_out = self.open_stream(sender)
        except Exception as problem:  # the session died under us
            log.warn("cluster link to {name}: cannot open heartbeat stream: {p}", name=name, p=problem)
            return
        self.heartbeats_out.write(encode(heartbeats_header(self.node.cluster_name)))
        self.send_heartbeat(self.node.own_heartbeat())

    def send_heartbeat(self, heartbeat: Heartbeat) -> None:
        stream = self.heartbeats_out
        if stream is not None and self.is_open and not stream.disconnecting:
            stream.write(encode(heartbeat.to_json()))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._handshake_deadline.cancel()
        never_up = self.peer_name is None
        ours = self._close_reason  # set when this side cut the link, with why
        super().connectionLost(reason)
        # A link that never got past TLS: say why in TLS terms (refused, alert, cut mid-handshake).
        why = (ours or describe_tls_failure(reason)) if never_up else _describe(reason, self)
        self.node.link_lost(self, why)

    @property
    def usable(self) -> bool:
        return self.peer_name is not None and self.is_open and self.transport is not None and not self.going_away


def _describe(reason: Failure, link: MuxProtocol) -> str:
    closed = getattr(link, "_close_reason", None)
    if closed:
        return closed
    return describe_tls_failure(reason)


class _IncomingStreams(Factory):
    def __init__(self, link: MemberLinkProtocol) -> None:
        self.link = link

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        if self.link.peer_name is None:
            return None  # nothing before the handshake
        return IncomingStream(self.link)


class IncomingStream(Handover):
    """A stream the peer opened: its heartbeats, or a client its balancer forwards to us."""

    def __init__(self, link: MemberLinkProtocol) -> None:
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
                self.link.node.heard(self.link, Heartbeat.from_json(message))
        except ClusterWireError as problem:
            log.warn("cluster link to {name}: bad message: {problem}; link closed", name=self.link.peer_name, problem=problem)
            self.link.abort(f"bad cluster message: {problem}")

    def _header(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "heartbeats":
            cluster = message.get("cluster")
            if cluster != self.link.node.cluster_name:
                raise ClusterWireError(
                    f"member {self.link.peer_name!r} belongs to cluster {str(cluster)[:64]!r}, "
                    f"not {self.link.node.cluster_name!r}"
                )
            self._kind = "heartbeats"
        elif kind == "forward":
            self._kind = "forward"
        else:
            raise ClusterWireError(f"unknown stream type {str(kind)[:40]!r}")

    def _forward(self, request: ForwardRequest) -> None:
        try:
            reply, inner = self.link.node.local.serve_forward(request, self.link.peer_name or "?")
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


class ForwardStream(RelayedProtocol):
    """The balancer's end of one forwarded client: header, the member's answer, then bytes."""

    def __init__(self, request: ForwardRequest, member: str, timeout: float, clock: IReactorTime) -> None:
        self.request = request
        self.member = member
        self.answered: Deferred[ForwardStream] = Deferred()
        self._timeout = timeout
        self._clock = clock
        self._answer_deadline = Deadline(clock)
        self._decoder = MessageDecoder()

    def connectionMade(self) -> None:
        self.transport.write(encode(self.request.to_json()))
        self._answer_deadline.start(self._timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._fail(ForwardFailed(504, f"member {self.member!r} did not answer within {self._timeout:g} s", retry=True))
        self.transport.abortConnection()

    def _fail(self, problem: "ForwardFailed") -> None:
        self._answer_deadline.cancel()
        if not self.answered.called:
            self.answered.errback(problem)

    def cancel(self) -> None:
        self._fail(ForwardFailed(499, "client left", retry=False))
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.answered.called:
            super().dataReceived(data)
            return
        try:
            messages = self._decoder.feed(data, limit=1)
            if not messages:
                return
            reply = ForwardReply.from_json(messages[0])
        except ClusterWireError as problem:
            self._fail(ForwardFailed(502, f"member {self.member!r} sent a bad reply: {problem}", retry=True))
            self.transport.abortConnection()
            return
        rest = self._decoder.take_rest()
        if not reply.ok:
            self._fail(ForwardFailed(reply.status, f"member {self.member!r}: {reply.reason}", retry=True))
            self.transport.loseConnection()
            return
        self._answer_deadline.cancel()
        if rest:
            super().dataReceived(rest)
        self.answered.callback(self)

    def readConnectionLost(self) -> None:
        if self.answered.called:
            super().readConnectionLost()
        else:
            self._fail(ForwardFailed(502, f"member {self.member!r} closed the stream without answering", retry=True))
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._answer_deadline.cancel()
        if self.relay is not None:
            super().connectionLost(reason)
        elif not self.answered.called:
            self._fail(ForwardFailed(502, f"link to member {self.member!r} lost: {reason.getErrorMessage()}", retry=True))

    def describe_loss(self, reason: Failure) -> str:
        message = reason.getErrorMessage()
        if "mux session lost" in message:
            return f"cluster link to member {self.member!r} lost"
        return message or "closed"


class ForwardFailed(RefusedError):
    """A member did not take a forwarded client; ``retry`` says another member may."""

    def __init__(self, status: int, reason: str, retry: bool) -> None:
        super().__init__(Refusal(status, "forward_failed", reason), retry)

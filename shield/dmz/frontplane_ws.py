"""Public WebSocket clients (``ws://`` and ``wss://`` accepts) with Autobahn on twisted.web.

The path picks the service; several services share one listener when their accepts name the same
host and port. The upgrade completes only once the connector says the backend is connected, so a
refusal is a real HTTP status (403, 502, 503, 504) with the reason as a one-line body. Message
payloads (binary or text) become backend bytes; backend bytes become binary messages.
"""

from __future__ import annotations

from enum import Enum, auto
from pprint import pformat
from typing import Any, Callable, ClassVar, TypeVar, cast

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket import USES_NVX
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IAddress, IConsumer, IHalfCloseableProtocol, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.internet.protocol import connectionDone
from twisted.web.resource import IResource, NoResource, Resource
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site
from zope.interface import implementer

from shield.addresses import describe_address, host_of
from shield.config.model import DmzService
from shield.dmz.admission import ClientGate, Refusal, Refused, Ticket, finish
from shield.ops.http import http_response, status_phrase
from shield.dmz.auth import check_client_certificate, check_token
from shield.dmz.service import ServiceFront
from shield.dmz.tunnel import OpenFailed, TunnelStream
from shield.lifecycle import Lifecycle, Transitions
from shield.net import send_room, set_no_delay, socket_under
from shield.relay import Relay
from shield.transports import IStreamTransport

log = Logger(namespace="shield.dmz.frontplane_ws")


class _LazyFormat:
    """``pformat(value)``, computed only if a log observer renders it."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return pformat(self.value)

    __repr__ = __str__


# Autobahn pretty-prints every protocol option into a debug line on every new connection, debug
# logging on or not: a tenth of the DMZ's time when clients connect and disconnect quickly. Its
# module's ``pformat`` becomes lazy: the same text, built only when the line is written.
# tests/dmz/test_autobahn_adapter.py pins that this still holds for the installed Autobahn.
autobahn_protocol.pformat = _LazyFormat  # type: ignore[assignment]  # Autobahn formats every frame for a log line it drops; pinned by tests/dmz/test_autobahn_adapter.py

#: Close codes that need no log line: normal, going away, or none sent by this side.
_ORDINARY_CLOSES = (None, 1000, 1001)

#: WebSocket close codes for a tunnel that ended abnormally.
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011


def _close_reason(reason: str) -> bytes:
    """A close reason fits 123 bytes of UTF-8: cut at a word, never inside a character."""
    encoded = reason.encode("utf-8")
    if len(encoded) <= 123:
        return encoded
    cut = encoded[:120].decode("utf-8", errors="ignore").rsplit(" ", 1)[0]
    return (cut + "...").encode("utf-8")


class WebSocketSide:
    """The relay's view of a WebSocket client: bytes go out as binary messages."""

    def __init__(self, protocol: "PublicWebSocketProtocol") -> None:
        self.protocol = protocol

    @property
    def producer(self) -> IPushProducer:
        return self.protocol.transport

    @property
    def consumer(self) -> IConsumer:
        return self.protocol.transport

    def send(self, data: bytes) -> None:
        self.protocol.sendMessage(data, isBinary=True)

    def send_eof(self) -> None:
        # WebSocket has no half-close: the backend finished, so the conversation is over.
        self.protocol.sendClose(1000, "backend closed the connection")

    def close(self) -> None:
        self.protocol.sendClose(1000)

    def room(self) -> int:
        return send_room(socket_under(self.protocol.transport))

    def follow(self, room: Callable[[], int]) -> None:
        pass  # what a WebSocket client sends is read from its socket: no credit to grow

    def abort(self, reason: str) -> None:
        going_away = ("link lost", "shutting down", "idle timeout")
        code = CLOSE_GOING_AWAY if any(words in reason for words in going_away) else CLOSE_INTERNAL_ERROR
        # sendClose() only lets applications use 1000 and 3000-4999; 1001 and 1011 are the
        # codes RFC 6455 gives a server for these cases, so send the frame directly.
        self.protocol.sendCloseFrame(code=code, reasonUtf8=_close_reason(reason), isReply=False)


class WsClientState(Enum):
    NEW = auto()  # accepted, not yet admitted
    TURNED_AWAY = auto()  # refused by a connection limit: answered at once, Autobahn never started
    HANDSHAKING = auto()  # Autobahn reads the upgrade request
    OPENING = auto()  # the request passed; a tunnel is opened and the upgrade waits for it
    UPGRADING = auto()  # the tunnel is ready; Autobahn answers 101
    RELAYING = auto()  # spliced to the tunnel
    REFUSED = auto()  # refused with one log line; the HTTP error answer goes out
    GONE = auto()  # the connection is closed (Autobahn's onClose)


class WsClientEvent(Enum):
    DOOR_REFUSED = auto()
    ADMITTED = auto()
    DENIED = auto()  # token, certificate or origin refused
    OPEN = auto()
    TUNNEL_READY = auto()
    TUNNEL_REFUSED = auto()
    HANDSHAKE_FAILED = auto()  # Autobahn's failHandshake: the HTTP error answer
    UPGRADED = auto()  # Autobahn's onOpen
    LOST = auto()


@implementer(IHalfCloseableProtocol)
class PublicWebSocketProtocol(WebSocketServerProtocol):
    """One public WebSocket client of one service.

    Its lifecycle (``LIFECYCLE``; any other event is a ``StateError``):

    ===========  ================  ===========  ==================================================
    state        event             next         what happens
    ===========  ================  ===========  ==================================================
    NEW          DOOR_REFUSED      TURNED_AWAY  answered in raw HTTP; what it sends is not read
    NEW          ADMITTED          HANDSHAKING  Autobahn starts
    TURNED_AWAY  LOST              GONE
    HANDSHAKING  DENIED            REFUSED      one line: token, certificate or origin
    HANDSHAKING  OPEN              OPENING      a tunnel is opened; the upgrade waits for it
    HANDSHAKING  HANDSHAKE_FAILED  REFUSED      Autobahn refused the request: one line
    HANDSHAKING  LOST              GONE
    OPENING      TUNNEL_READY      UPGRADING    the upgrade completes
    OPENING      TUNNEL_REFUSED    REFUSED      one line; the answer has the tunnel's status
    OPENING      HANDSHAKE_FAILED  REFUSED      an unexpected error in onConnect: one line
    OPENING      LOST              GONE         the opening goes on; its outcome finds it gone
    UPGRADING    UPGRADED          RELAYING     spliced to the tunnel
    UPGRADING    HANDSHAKE_FAILED  REFUSED      Autobahn refused its extension offer: one line;
                                                the tunnel is dropped when the connection ends
    RELAYING     LOST              GONE         the relay ends the tunnel
    REFUSED      HANDSHAKE_FAILED  REFUSED      the answer to the refusal logged already
    REFUSED      LOST              GONE         a tunnel it had is dropped
    GONE         TUNNEL_READY      GONE         the tunnel is dropped and the upgrade denied
    GONE         TUNNEL_REFUSED    GONE         not logged: nobody to refuse
    GONE         HANDSHAKE_FAILED  GONE         nothing written or logged: nobody to answer
    ===========  ================  ===========  ==================================================
    """

    LIFECYCLE: ClassVar[Transitions[WsClientState, WsClientEvent]] = {
        (WsClientState.NEW, WsClientEvent.DOOR_REFUSED): WsClientState.TURNED_AWAY,
        (WsClientState.NEW, WsClientEvent.ADMITTED): WsClientState.HANDSHAKING,
        (WsClientState.TURNED_AWAY, WsClientEvent.LOST): WsClientState.GONE,
        (WsClientState.HANDSHAKING, WsClientEvent.DENIED): WsClientState.REFUSED,
        (WsClientState.HANDSHAKING, WsClientEvent.OPEN): WsClientState.OPENING,
        (WsClientState.HANDSHAKING, WsClientEvent.HANDSHAKE_FAILED): WsClientState.REFUSED,
        (WsClientState.HANDSHAKING, WsClientEvent.LOST): WsClientState.GONE,
        (WsClientState.OPENING, WsClientEvent.TUNNEL_READY): WsClientState.UPGRADING,
        (WsClientState.OPENING, WsClientEvent.TUNNEL_REFUSED): WsClientState.REFUSED,
        (WsClientState.OPENING, WsClientEvent.HANDSHAKE_FAILED): WsClientState.REFUSED,
        (WsClientState.OPENING, WsClientEvent.LOST): WsClientState.GONE,
        (WsClientState.UPGRADING, WsClientEvent.UPGRADED): WsClientState.RELAYING,
        (WsClientState.UPGRADING, WsClientEvent.HANDSHAKE_FAILED): WsClientState.REFUSED,
        (WsClientState.RELAYING, WsClientEvent.LOST): WsClientState.GONE,
        (WsClientState.REFUSED, WsClientEvent.HANDSHAKE_FAILED): WsClientState.REFUSED,
        (WsClientState.REFUSED, WsClientEvent.LOST): WsClientState.GONE,
        (WsClientState.GONE, WsClientEvent.TUNNEL_READY): WsClientState.GONE,
        (WsClientState.GONE, WsClientEvent.TUNNEL_REFUSED): WsClientState.GONE,
        (WsClientState.GONE, WsClientEvent.HANDSHAKE_FAILED): WsClientState.GONE,
    }

    transport: IStreamTransport  # connected before any event reaches the protocol

    front: ServiceFront  # set by the factory

    def __init__(self) -> None:
        super().__init__()
        self.client = "?"
        self._tunnel: TunnelStream | None = None
        self._relay: Relay | None = None
        self._side: WebSocketSide | None = None
        self._ticket: Ticket | None = None
        self._life = Lifecycle("PublicWebSocketProtocol", self.LIFECYCLE, WsClientState.NEW)

    @property
    def lifecycle_state(self) -> WsClientState:
        """Where it is in its lifecycle (``state`` is Autobahn's WebSocket state)."""
        return self._life.state

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.client = describe_address(peer)
        admitted = self.front.admit(getattr(peer, "host", self.client), self.client)
        if isinstance(admitted, Refusal):
            # Refused before reading a byte: answer and go, whatever the client sends.
            self._life.fire(WsClientEvent.DOOR_REFUSED)
            self._raw_response(admitted.status, admitted.reason)
            return
        self._ticket = admitted
        self._life.fire(WsClientEvent.ADMITTED)
        super().connectionMade()
        set_no_delay(self.transport)

    def _raw_response(self, status: int, reason: str) -> None:
        self.transport.write(http_response(status, reason))
        self.transport.loseConnection()

    def onConnect(self, request: ConnectionRequest) -> Any:
        config = self.front.config
        denied = None
        if config.auth == "token":
            denied = check_token(config, request.headers, request.params)
        elif config.auth == "mtls":
            denied = check_client_certificate(config, self.transport)
        if denied is not None:
            self._life.fire(WsClientEvent.DENIED)
            self.front.denied(self.client, "ws", denied.status, denied.label, denied.reason)
            raise ConnectionDeny(denied.status, denied.reason)
        origin = request.headers.get("origin")
        allowed = self.front.config.allow_origin
        if origin is not None and "*" not in allowed and origin not in allowed:
            reason = f"origin {origin!r} is not allowed for service {self.front.name!r}"
            self._life.fire(WsClientEvent.DENIED)
            self.front.denied(self.client, "ws", 403, "origin", reason)
            raise ConnectionDeny(403, reason)
        extra: tuple[tuple[str, str], ...] = (("path", request.path),)
        if origin is not None:
            extra += (("origin", origin),)
        self._life.fire(WsClientEvent.OPEN)
        opening = self.front.open(self.client, "ws", extra, self.transport.getPeer(), self.transport.getHost())
        opening.addCallbacks(self._opened, self._refused)
        return opening

    def _opened(self, tunnel: TunnelStream) -> None:
        if self._life.fire(WsClientEvent.TUNNEL_READY) is WsClientState.GONE:
            tunnel.transport.abortConnection()
            # Autobahn would otherwise write a 101 to the closed connection and start its timers.
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "the client left before the upgrade")
        self._tunnel = tunnel
        return None  # accept the upgrade, no subprotocol

    def _refused(self, failure: Failure) -> None:
        problem = failure.value if failure.check(OpenFailed) else OpenFailed(502, "internal", failure.getErrorMessage())
        if self._life.fire(WsClientEvent.TUNNEL_REFUSED) is not WsClientState.GONE:
            self.front.refused(self.client, "ws", problem)
        raise ConnectionDeny(problem.status, problem.reason)

    def onOpen(self) -> None:
        self._life.fire(WsClientEvent.UPGRADED)
        tunnel = self._tunnel
        assert tunnel is not None, "UPGRADING is reached with a tunnel"
        # twisted.web's channel registered itself as the producer of this socket; the tunnel
        # stream takes its place so backpressure flows between the client and the stream.
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()  # socket, TLS and mux stream transports alike
        self._side = WebSocketSide(self)
        self._relay = self.front.relay(tunnel, self._side, self.client, "ws")

    def readConnectionLost(self) -> None:
        """The input ended without a close frame: the client vanished, or (for a client a
        balancer forwarded here) its balancer is shutting down. Say goodbye with a reason."""
        if self.state == self.STATE_OPEN:
            reason = "input closed without a WebSocket close (client gone, or its balancer is shutting down)"
            self.sendCloseFrame(code=CLOSE_GOING_AWAY, reasonUtf8=_close_reason(reason), isReply=False)
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._relay is not None and payload:
            self._relay.received(self._side, payload)  # type: ignore[arg-type]  # _side is set together with _relay

    # -- the data path, without Autobahn's per-message extras ------------------------------------
    #
    # Autobahn, per message, fires a "message" event (a Deferred and a gather even with no
    # listener) and formats a debug line whose arguments are built whether or not debug is on.
    # Both were about a tenth of the DMZ's time per WebSocket message. These overrides keep
    # Autobahn's behaviour for everything shield uses: the payload to ``onMessage``, and bytes to
    # the transport in order (queued writes, when Autobahn has any, still go through its queue).

    def onMessageEnd(self) -> None:
        if not self.failedByMe:
            data = self.message_data
            self.onMessage(data[0] if len(data) == 1 else b"".join(data), self.message_is_binary)
        self.message_data = []

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if sync or chopsize or self.send_queue or self.state != WebSocketProtocol.STATE_OPEN:
            super().sendData(data, sync, chopsize)
            return
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        if self._life.state is WsClientState.TURNED_AWAY:
            return  # refused at connectionMade: the answer is on its way, the request is moot
        super().dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.front.gate.release(self.transport)
        if self._ticket is not None:
            self._ticket.release()
            self._ticket = None
        if self._life.state is WsClientState.TURNED_AWAY:
            self._life.fire(WsClientEvent.LOST)
            return  # Autobahn never started
        super().connectionLost(reason)  # Autobahn's, which calls onClose

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._life.fire(WsClientEvent.LOST)
        local_code = getattr(self, "localCloseCode", None)
        if local_code not in _ORDINARY_CLOSES:
            # This side closed for cause (message too big, protocol violation, ping timeout).
            why = getattr(self, "localCloseReason", None) or self.wasNotCleanReason or reason
            if isinstance(why, bytes):
                why = why.decode("utf-8", errors="replace")
            log.info(
                "ws client {client} -> {service}: closed with {code}: {why}",
                client=self.client, service=self.front.name, code=local_code, why=why,
            )
        if self._relay is not None:
            self._relay.lost(self._side, bool(wasClean), reason or f"client closed ({code})")  # type: ignore[arg-type]  # _side is set together with _relay
        elif self._tunnel is not None:
            self._tunnel.transport.abortConnection()

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """Refuse the upgrade with one log line: ours, not Autobahn's two (none if the refusal
        was logged already, or the client is gone)."""
        before = self._life.state
        self._life.fire(WsClientEvent.HANDSHAKE_FAILED)
        if before is WsClientState.GONE:
            return  # the connection is closed: nobody to answer
        if before is not WsClientState.REFUSED:
            log.warn(
                "ws client {client} -> {service}: {code} {reason}",
                client=self.client, service=self.front.name, code=code, reason=reason,
            )
        self.wasNotCleanReason = reason
        if code == 401:
            responseHeaders = list(responseHeaders or ()) + [("WWW-Authenticate", 'Bearer realm="shield"')]
        self.sendHttpErrorResponse(code, reason, responseHeaders)
        self.wasClean = True  # Autobahn would log the drop again as a warning
        self.dropConnection(abort=False)

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        """A plain-text error with the reason as its one-line body (Autobahn sends no body)."""
        self.sendData(http_response(code, reason or status_phrase(code), tuple(responseHeaders or ())))


class PublicWebSocketFactory(WebSocketServerFactory):
    """Autobahn's factory, whose protocols know their service."""

    protocol = PublicWebSocketProtocol

    def __init__(self, front: ServiceFront, url: str) -> None:
        super().__init__(url, server=None)  # no "Server: AutobahnPython/<version>"
        self.front = front

    def buildProtocol(self, addr: IAddress | None) -> PublicWebSocketProtocol:
        protocol = cast(PublicWebSocketProtocol, super().buildProtocol(addr))
        protocol.front = self.front
        return protocol


def websocket_factory(front: ServiceFront, url: str) -> PublicWebSocketFactory:
    """Autobahn factory for one service, with its limits (``max-message-size``, pings)."""
    config: DmzService = front.config
    factory = PublicWebSocketFactory(front, url)
    factory.setProtocolOptions(
        maxMessagePayloadSize=config.max_message_size,
        maxFramePayloadSize=config.max_message_size,
        autoPingInterval=config.ws_ping_interval or 0,
        autoPingTimeout=max(config.ws_ping_interval, 1.0) if config.ws_ping_interval else 0,
        openHandshakeTimeout=config.open_timeout + 5.0,
        closeHandshakeTimeout=5.0,
        failByDrop=False,
        webStatus=False,  # a plain GET gets 426, not Autobahn's status page with its version
    )
    return factory


class _Root(Resource):
    """Routes by exact path; anything else is 404 with a one-line body."""

    def __init__(self) -> None:
        super().__init__()
        self._routes: dict[bytes, IResource] = {}

    def route(self, path: str, resource: IResource) -> None:
        self._routes[path.encode()] = resource

    def getChildWithDefault(self, name: bytes, request: Any) -> IResource:
        path = request.path
        resource = self._routes.get(path)
        if resource is not None:
            request.postpath = []
            return resource
        return NoResource("no WebSocket service at this path")

    def render(self, request: Any) -> bytes:
        return self.getChildWithDefault(b"", request).render(request)


class _AnyPath(Resource):
    """Every path is the one service: a client a balancer sent here already chose it."""

    def __init__(self, resource: IResource) -> None:
        super().__init__()
        self._resource = resource

    def getChildWithDefault(self, name: bytes, request: Any) -> IResource:
        request.postpath = []
        return self._resource

    def render(self, request: Any) -> bytes:
        return self._resource.render(request)


class GuardedChannel(HTTPChannel):
    """An HTTP connection on a public WebSocket port: counted by the gateway from its accept, and
    given ``handshake-timeout`` to finish its TLS handshake (wss) and send its request head."""

    transport: IStreamTransport  # connected before any event reaches the protocol
    site: GuardedSite  # set by GuardedSite.buildProtocol

    def connectionMade(self) -> None:
        super().connectionMade()
        site = self.site
        self._head_timer: Any = site.clock.callLater(site.handshake_timeout, self._head_too_slow)

    def allHeadersReceived(self) -> None:
        self._stop_head_timer()
        super().allHeadersReceived()

    def _stop_head_timer(self) -> None:
        timer, self._head_timer = getattr(self, "_head_timer", None), None
        if timer is not None and timer.active():
            timer.cancel()

    def _head_too_slow(self) -> None:
        self._head_timer = None
        site = self.site
        client = describe_address(self.transport.getPeer())
        seconds = site.handshake_timeout
        site.gate.metrics.refusals.labels(service="", limit="handshake_timeout").inc()
        site.gate.note("", "handshake_timeout", f"ws client {client}: no complete request within {seconds:g} s; closed (408)")
        self.transport.write(http_response(408, f"request not completed within {seconds:g} s"))
        finish(self.transport)

    def _bad_request(self, why: str) -> None:
        site = self.site
        self._stop_head_timer()
        client = describe_address(self.transport.getPeer())
        site.gate.metrics.refusals.labels(service="", limit="bad_request").inc()
        site.gate.note("", "bad_request", f"ws client {client}: {why}; closed (400)")

    def lineLengthExceeded(self, line: bytes) -> Any:
        # Called again for every read of a long line until the socket closes: answer once.
        self.dataReceived = lambda data: None  # type: ignore[method-assign]  # after the refusal, whatever else arrives is dropped
        if getattr(self, "_answered_bad", False):
            return None
        self._answered_bad = True
        self._bad_request(f"request or header line over {self.MAX_LENGTH} bytes")
        self.transport.write(http_response(400, "request or header line too long"))
        return self.transport.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._bad_request("malformed or oversized request head")
        super()._respondToBadRequestAndDisconnect()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_head_timer()
        site = self.site
        site.gate.release(self.transport)
        super().connectionLost(reason)


class GuardedSite(Site):
    # Twisted types Site.protocol as its HTTP/1-or-2 wrapper; buildProtocol only calls it.
    protocol = GuardedChannel  # type: ignore[assignment]  # Site.protocol is typed as its HTTP/1-or-2 wrapper; buildProtocol only calls it

    def __init__(self, root: Resource, gate: ClientGate, handshake_timeout: float) -> None:
        super().__init__(root)
        self.gate = gate
        self.clock = gate.clock
        self.handshake_timeout = handshake_timeout

    def handed_over(self, addr: Any) -> Any:
        """A channel for a connection another door already counted (a balancer's fallback)."""
        return Site.buildProtocol(self, addr)

    def buildProtocol(self, addr: Any) -> Any:
        ticket = self.gate.connection(host_of(addr), describe_address(addr))
        if isinstance(ticket, Refusal):
            return Refused(ticket, http=True)
        channel = super().buildProtocol(addr)
        original = channel.makeConnection

        def make_connection(transport: Any) -> None:
            self.gate.hold(transport, ticket)
            original(transport)

        channel.makeConnection = make_connection
        return channel


def websocket_site(routes: list[tuple[str, ServiceFront, str]], gate: ClientGate) -> GuardedSite:
    """One twisted.web site for a listener: ``routes`` are (path, service, public URL).

    The path is not known before the request head is in, so the handshake timeout is the
    shortest of the services sharing the listener.
    """
    root = _Root()
    for path, front, url in routes:
        root.route(path, WebSocketResource(websocket_factory(front, url)))
    timeout = min(front.config.limits.handshake_timeout for _, front, _ in routes)
    return _quiet_site(GuardedSite(root, gate, timeout))


def balanced_site(front: ServiceFront, url: str) -> Site:
    """The site for WebSocket clients a balancer hands to ``front``, whatever path they asked for.

    They were counted and timed where they arrived, so this site does neither.
    """
    return _quiet_site(Site(_AnyPath(WebSocketResource(websocket_factory(front, url)))))


class _AnonymousRequest(Request):
    """A request whose answer does not say ``Server: TwistedWeb/<version>``: a public listener
    does not tell the internet which library, at which version, it runs."""

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if (name.encode() if isinstance(name, str) else name).lower() == b"server":
            return
        super().setHeader(name, value)


_S = TypeVar("_S", bound=Site)


def _quiet_site(site: _S) -> _S:
    site.requestFactory = _AnonymousRequest
    site.noisy = False
    site.displayTracebacks = False
    site.log = lambda request: None  # type: ignore[method-assign]  # no access log line per public request
    return site


def nvx_in_use() -> bool:
    """Autobahn's native (NVX) UTF-8 validation and masking are active."""
    return bool(USES_NVX)

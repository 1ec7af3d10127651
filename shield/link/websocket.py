"""A link carried in WebSocket binary messages: the ``wss://`` backplane.

Some networks let out nothing but HTTPS and WebSocket. A ``wss://`` link is the same mutual-TLS
link with the same yamux session, with a WebSocket between the two: TLS, then an HTTP upgrade on
the backplane's path (offering the subprotocol ``shield.link.v1``), then every mux write goes as
one binary message and every received frame's payload goes to the mux as it arrives (the mux
does not care where messages end, so nothing is reassembled or held here). The identity checks,
limits, keepalives and drain are the mux's and the link roles', unchanged.

Autobahn does the WebSocket (handshake, framing, pings, the closing handshake); the mux sees an
ordinary transport, ``MessagePipe``. The connector does not mask its frames, and the DMZ does not
ask it to: RFC 6455's masking protects intermediaries that read frames in the clear, and a link's
frames are inside mutual TLS from one shield end to the other, which no intermediary can read
(one that terminated TLS could not present the connector's certificate). Masking would double
what the WebSocket costs a link. The layer sits
between the TLS protocol and the mux on both ends:

- the DMZ: ``LinkTLSFactory`` -> ``LinkWebSocketServerFactory`` -> the ``BackplaneFactory``'s mux;
- the connector: ``LinkWebSocketEndpoint`` over the TLS endpoint (straight, or through a CONNECT
  proxy), wrapping whatever factory dials through it (``ClientService``'s).

The mux is connected with the TCP connection, before the upgrade, so the roles' deadlines and
lines cover a link from its first byte (the DMZ's ten seconds to announce include TLS and the
upgrade); what it writes before the upgrade completes (the connector's ANNOUNCE, a ping) waits
here and goes as the first message. WebSocket pings at the keepalive interval keep middleboxes
that watch WebSocket traffic (not only bytes) from closing an idle link; the mux's own pings,
inside binary messages, still detect a dead peer.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol as TypingProtocol, cast

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest, ConnectionResponse
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.config.model import KeepaliveSettings, Uri
from shield.ops.http import http_response, status_phrase

#: The subprotocol a link's upgrade names: anything else (a browser, a wrong client) is refused.
SUBPROTOCOL = "shield.link.v1"
#: How long the connector waits for the answer to its upgrade (the DMZ's announce deadline,
#: ten seconds from the first byte, covers the other direction).
UPGRADE_TIMEOUT = 10.0
#: What the DMZ waits for a link's closing handshake to finish, and the connector for the DMZ
#: to drop the connection after it.
CLOSE_TIMEOUT = 5.0
_CLOSE_NORMAL = WebSocketProtocol.CLOSE_STATUS_CODE_NORMAL
#: Close codes that say nothing the connection's loss does not: a normal close, and Autobahn's
#: "abnormal" (no close frame at all: the connection just ended).
_NO_NEWS = (_CLOSE_NORMAL, WebSocketProtocol.CLOSE_STATUS_CODE_ABNORMAL_CLOSE)
_STATE_OPEN = WebSocketProtocol.STATE_OPEN
_STATE_CONNECTING = WebSocketProtocol.STATE_CONNECTING


class WebSocketEnded(Exception):
    """Why the WebSocket under a link ended, when it says more than the connection's loss did:
    a refused upgrade, a timeout, a protocol error, the peer's close code. The text is whole."""


class LinkProtocol(TypingProtocol):
    """What the layer drives of the protocol above it: a ``MuxProtocol`` (or the reconnecting
    client's proxy of one)."""

    def makeConnection(self, transport: Any) -> None: ...

    def dataReceived(self, data: bytes) -> None: ...

    def connectionLost(self, reason: Failure) -> None: ...

    def abort(self, reason: str) -> None: ...


class _Unlogged:
    """Autobahn's own log lines are not shield's: a link says what happened in one line of its
    own (the role's, or the refusal's), so Autobahn's warnings about the same events are dropped."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _nothing


def _nothing(*args: object, **kwargs: object) -> None:
    return None


class MessagePipe:
    """The transport the mux sees: its writes become binary messages; everything else (addresses,
    the peer's certificate, producers, closing) is the TLS transport's underneath."""

    def __init__(self, carrier: "_LinkMessages") -> None:
        self._carrier = carrier
        self.transport: Any = carrier.transport  # what is underneath (shield.net walks down)

    def write(self, data: bytes) -> None:
        self._carrier.send_link_data(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self._carrier.send_link_data(b"".join(data))

    def loseConnection(self) -> None:
        self._carrier.close_link()

    def abortConnection(self) -> None:
        self.transport.abortConnection()

    def getPeer(self) -> IAddress:
        return cast(IAddress, self.transport.getPeer())

    def getHost(self) -> IAddress:
        return cast(IAddress, self.transport.getHost())

    def getPeerCertificate(self) -> Any:
        return self.transport.getPeerCertificate()

    def getHandle(self) -> Any:
        return self.transport.getHandle()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    @property
    def disconnecting(self) -> bool:
        return bool(getattr(self.transport, "disconnecting", False))


class _LinkMessages:
    """What both ends do between TLS and the mux (Autobahn's protocol classes come after this
    one in each end's bases, so these methods take the place of theirs)."""

    log = _Unlogged()
    inner: LinkProtocol
    transport: Any
    state: int
    failedByMe: bool
    sendMessage: Callable[..., None]
    sendClose: Callable[..., None]

    def _bind(self, inner: LinkProtocol) -> None:
        self.inner = inner
        self._before_open: list[bytes] = []
        self._why: str | None = None
        self._begin_batch: Callable[[], None] | None = getattr(inner, "begin_batch", None)
        self._end_batch: Callable[[], None] | None = getattr(inner, "end_batch", None)

    # -- the mux's side --------------------------------------------------------------------------

    def send_link_data(self, data: bytes) -> None:
        if self.state == _STATE_OPEN:
            self.sendMessage(data, isBinary=True)
        elif self.state == _STATE_CONNECTING:
            self._before_open.append(data)
        # closing or closed: the link is ending, and so is what it still wanted to say

    def close_link(self) -> None:
        if self.state == _STATE_OPEN:
            self.sendClose(code=_CLOSE_NORMAL, reason="link closed")
        elif self.state == _STATE_CONNECTING:
            self.transport.loseConnection()

    def ending(self, why: str) -> None:
        """Cut the link, saying why (the mux keeps the reason for its role's line)."""
        if self._why is None:
            self._why = why
        self.inner.abort(why)

    # -- Twisted's and Autobahn's side -----------------------------------------------------------

    def _connected(self) -> None:
        self.inner.makeConnection(MessagePipe(self))

    def handshakeCompleted(self) -> None:
        """TLS is up (IHandshakeListener): the mux reads the peer's certificate."""
        completed = getattr(self.inner, "handshakeCompleted", None)
        if completed is not None:
            completed()

    def begin_batch(self) -> None:
        if self._begin_batch is not None:
            self._begin_batch()

    def end_batch(self) -> None:
        if self._end_batch is not None:
            self._end_batch()

    def onOpen(self) -> None:
        queued, self._before_open = self._before_open, []
        if queued:
            self.sendMessage(b"".join(queued), isBinary=True)

    def onMessageBegin(self, isBinary: bool) -> None:
        if not isBinary:
            self.ending("protocol error: a text message on a link (links carry binary messages)")

    def onMessageFrameBegin(self, length: int) -> None:
        pass  # frames are streamed to the mux as they arrive: nothing is held, nothing to bound

    def onMessageFrameData(self, payload: bytes) -> None:
        # Once the link is ending (a text message, a refused upgrade), the rest of the read is
        # not link data: the mux would parse it and name its own error instead of the reason.
        if self._why is None and not self.failedByMe and payload:
            self.inner.dataReceived(payload)

    def onMessageFrameEnd(self) -> None:
        pass

    def onMessageEnd(self) -> None:
        pass

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._why is not None:
            return
        # This end failed the WebSocket (a frame it refused): the reason is in its close frame
        # (whether the peer answered it, a clean close, or not, a closing-handshake timeout), or
        # in why it dropped the connection.
        said = getattr(self, "localCloseReason", None) or getattr(self, "wasNotCleanReason", None)
        if self.failedByMe and said:
            said = said.decode("utf-8", "replace") if isinstance(said, bytes) else said
            self._why = f"WebSocket protocol error: {said}"
        elif code is not None and code not in _NO_NEWS:
            self._why = f"the peer closed the WebSocket ({code}{': ' + reason if reason else ''})"

    def onAutoPingTimeout(self) -> None:
        self._why = "no answer to a WebSocket ping in time"
        WebSocketProtocol.onAutoPingTimeout(cast(WebSocketProtocol, self))

    def dataReceived(self, data: bytes) -> None:
        """Straight to Autobahn's parser (its Twisted adapter would format a debug line per read)."""
        self._dataReceived(data)

    _dataReceived: Callable[[bytes], None]

    def _lost(self, reason: Failure) -> None:
        why = self._why
        self.inner.connectionLost(reason if why is None else Failure(WebSocketEnded(why)))

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """One write per frame (Autobahn's would format a debug line per frame first)."""
        if sync or chopsize or self.send_queue:
            WebSocketProtocol.sendData(cast(WebSocketProtocol, self), data, sync, chopsize)
            return
        self.transport.write(data)

    send_queue: Any


# (type: ignore: Autobahn's own two bases disagree on the types of two attributes)
@implementer(IHandshakeListener)
class LinkWebSocketServer(_LinkMessages, WebSocketServerProtocol):  # type: ignore[misc]
    """The DMZ's end: accepts the upgrade on the backplane's path with ``shield.link.v1``."""

    factory: "LinkWebSocketServerFactory"

    def connectionMade(self) -> None:
        WebSocketServerProtocol.connectionMade(self)
        self._connected()

    def onConnect(self, request: ConnectionRequest) -> str:
        path = self.factory.path
        if request.path != path:
            raise ConnectionDeny(404, f"no backplane at {request.path} (it is at {path})")
        if SUBPROTOCOL not in request.protocols:
            offered = ", ".join(request.protocols) or "none"
            raise ConnectionDeny(
                400, f"not a shield link: the upgrade must offer subprotocol {SUBPROTOCOL} (offered: {offered})"
            )
        return SUBPROTOCOL

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """Refuse the upgrade: one line (the backplane's), the reason in the answer's body."""
        self._why = f"WebSocket upgrade refused: {code} {reason}"
        self.factory.refused(self.transport.getPeer(), f"{code} {reason}")
        self.sendData(http_response(code, reason or status_phrase(code)))
        self.wasClean = True  # Autobahn would log the drop again
        self.dropConnection(abort=False)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        WebSocketServerProtocol.connectionLost(self, reason)
        self._lost(reason)


class LinkWebSocketServerFactory(WebSocketServerFactory):
    """Each accepted connection: a ``LinkWebSocketServer`` around a new mux from ``links``."""

    protocol = LinkWebSocketServer  # type: ignore[assignment]  # Autobahn's attribute, not Twisted's callable

    def __init__(
        self,
        links: IProtocolFactory,
        uri: Uri,
        keepalive: KeepaliveSettings,
        refused: Callable[[IAddress, str], None],
    ) -> None:
        super().__init__(str(uri), server=None)  # no "Server: AutobahnPython/<version>"
        self.noisy = False
        self.links = links
        self.path = uri.path or "/"
        self.refused = refused
        self.setProtocolOptions(
            **_link_options(keepalive),
            openHandshakeTimeout=0,  # the link's announce deadline covers TLS and the upgrade
            webStatus=False,
            requireMaskedClientFrames=False,  # see the module's docstring
        )

    def buildProtocol(self, addr: IAddress | None) -> LinkWebSocketServer | None:  # type: ignore[override]
        inner = self.links.buildProtocol(cast(IAddress, addr))
        if inner is None:
            return None
        protocol = cast(LinkWebSocketServer, super().buildProtocol(addr))
        protocol._bind(cast(LinkProtocol, inner))
        return protocol

    def doStart(self) -> None:
        super().doStart()
        self.links.doStart()

    def doStop(self) -> None:
        self.links.doStop()
        super().doStop()


@implementer(IHandshakeListener)
class LinkWebSocketClient(_LinkMessages, WebSocketClientProtocol):  # type: ignore[misc]
    """The connector's end: asks for the upgrade, then carries the link."""

    def connectionMade(self) -> None:
        WebSocketClientProtocol.connectionMade(self)
        self._connected()

    def onConnect(self, response: ConnectionResponse) -> None:
        if response.protocol != SUBPROTOCOL:
            self.ending(f"the DMZ's answer to the WebSocket upgrade did not select {SUBPROTOCOL}")

    def failHandshake(self, reason: str) -> None:
        # Autobahn's reasons start "WebSocket connection upgrade failed [404]: Not Found" and the like
        self.ending(reason if reason.startswith("WebSocket") else f"WebSocket upgrade failed: {reason}")

    def onOpenHandshakeTimeout(self) -> None:
        self.openHandshakeTimeoutCall = None
        if self.state == _STATE_CONNECTING:
            self.ending(f"no answer to the WebSocket upgrade within {UPGRADE_TIMEOUT:g} s")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        WebSocketClientProtocol.connectionLost(self, reason)
        self._lost(reason)


class _LinkWebSocketClientFactory(WebSocketClientFactory):
    protocol = LinkWebSocketClient

    def __init__(self, links: IProtocolFactory, url: str, keepalive: KeepaliveSettings) -> None:
        super().__init__(url, protocols=[SUBPROTOCOL], useragent="shield-link")
        self.noisy = False
        self.links = links
        self.setProtocolOptions(
            **_link_options(keepalive), openHandshakeTimeout=UPGRADE_TIMEOUT, maskClientFrames=False
        )  # (no masking: see the module's docstring)

    def buildProtocol(self, addr: IAddress | None) -> LinkWebSocketClient | None:
        inner = self.links.buildProtocol(cast(IAddress, addr))
        if inner is None:
            return None
        protocol = cast(LinkWebSocketClient, super().buildProtocol(addr))
        protocol._bind(cast(LinkProtocol, inner))
        return protocol


@implementer(IStreamClientEndpoint)
class LinkWebSocketEndpoint:
    """Dials ``url`` (``wss://host:port/path``) over ``tls``, an endpoint that is the link's TLS
    (straight or through a proxy); the factory's protocol rides on the WebSocket."""

    def __init__(self, tls: IStreamClientEndpoint, uri: Uri, keepalive: KeepaliveSettings) -> None:
        self._tls = tls
        self._url = str(uri)
        self._keepalive = keepalive

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting = self._tls.connect(_LinkWebSocketClientFactory(factory, self._url, self._keepalive))
        return connecting.addCallback(_inner)


def _inner(carrier: IProtocol) -> IProtocol:
    """What the dialler built (as ``LinkTLSEndpoint`` gives the protocol above TLS)."""
    return cast(IProtocol, cast(LinkWebSocketClient, carrier).inner)


def _link_options(keepalive: KeepaliveSettings) -> dict[str, Any]:
    """What both ends set: no limits on messages (they are streamed to the mux, never held),
    pings at the keepalive interval (the mux's own pings find a dead peer first: a WebSocket ping
    unanswered for one interval longer ends the link too), a bounded closing handshake."""
    interval = keepalive.interval
    return {
        "maxMessagePayloadSize": 0,
        "maxFramePayloadSize": 0,
        "autoFragmentSize": 0,
        "autoPingInterval": interval if interval > 0 else 0,
        "autoPingTimeout": interval * (keepalive.misses + 1) if interval > 0 else 0,
        "closeHandshakeTimeout": CLOSE_TIMEOUT,
        "failByDrop": False,
    }


__all__ = [
    "SUBPROTOCOL",
    "LinkWebSocketEndpoint",
    "LinkWebSocketServerFactory",
    "MessagePipe",
    "WebSocketEnded",
]

"""Opening a tunnel for one public client: a stream on a chosen link, OPEN, and the answer.

The DMZ names only a service and the client's address; the connector decides where that goes.
The outcome is either a ``TunnelStream`` ready to relay bytes, or an ``OpenFailed`` carrying the
HTTP status and the one-line reason the public client and the log will see.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from shield.dmz.links import ConnectorLink, LinkRegistry
from shield.link.wire import MessageReader, OpenReply, OpenRequest, OpenStatus, WireError, encode
from shield.mux.budget import BufferBudget
from shield.mux.errors import MuxError
from shield.relay import Relay, RelayedProtocol, Side


@dataclass(frozen=True)
class OpenFailed(Exception):
    """Why a tunnel could not be opened: ``status`` is the HTTP code, ``label`` the metric reason."""

    status: int
    label: str
    reason: str

    def __str__(self) -> str:
        return self.reason


_STATUS_FOR_REPLY = {
    OpenStatus.UNKNOWN_SERVICE: (502, "unknown_service"),
    OpenStatus.BACKEND_REFUSED: (502, "backend_refused"),
    OpenStatus.BACKEND_UNREACHABLE: (502, "backend_unreachable"),
    OpenStatus.BACKEND_TIMEOUT: (502, "backend_timeout"),
    OpenStatus.OVERLOADED: (503, "connector_overloaded"),
}


class _Retry(Exception):
    """The link refused the stream before answering (it is going away): try another link."""


class TunnelStream(RelayedProtocol):
    """The DMZ's end of one tunnel stream: OPEN, wait for OPEN_REPLY, then relay."""

    def __init__(self, request: OpenRequest, link: ConnectorLink, timeout: float, clock: IReactorTime) -> None:
        self.request = request
        self.link = link
        self.answered: Deferred[TunnelStream] = Deferred()
        self._timeout = timeout
        self._clock = clock
        self._timer: IDelayedCall | None = None
        self._reader = MessageReader((OpenReply,))

    # -- before the answer ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.link.tunnels += 1
        self.transport.write(encode(self.request))
        self._timer = self._clock.callLater(self._timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        connector = self.link.connector
        self._fail(
            OpenFailed(504, "open_timeout", f"connector {connector!r} did not answer within {self._timeout:g} s")
        )
        self.transport.abortConnection()

    def _fail(self, failure: Exception) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self.answered.called:
            self.answered.errback(failure)

    def cancel(self) -> None:
        """The public client left before the answer: drop the stream."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.relay is not None or self.answered.called:
            super().dataReceived(data)
            return
        try:
            reply, rest = self._reader.feed(data)
        except WireError as problem:
            self._fail(OpenFailed(502, "bad_reply", f"connector {self.link.connector!r} sent a bad reply: {problem}"))
            self.transport.abortConnection()
            return
        if reply is None:
            return
        assert isinstance(reply, OpenReply)
        if rest:
            super().dataReceived(rest)
        if reply.status == OpenStatus.OK:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            self.answered.callback(self)
            return
        status, label = _STATUS_FOR_REPLY.get(reply.status, (502, "refused"))
        reason = reply.reason or reply.status.name.lower().replace("_", " ")
        self._fail(OpenFailed(status, label, f"connector {self.link.connector!r}: {reason}"))
        self.transport.loseConnection()

    # -- relaying --------------------------------------------------------------------------------

    def start_relay(self, public: Side, to_backend, to_client, on_finished) -> Relay:  # type: ignore[no-untyped-def]
        """Join this stream to the public client's side; bytes held so far go out first."""
        return self.join(lambda side: Relay(public, side, to_backend, to_client, on_finished))

    def readConnectionLost(self) -> None:
        if self.relay is not None or self.answered.called:
            super().readConnectionLost()
        else:
            self._fail(
                OpenFailed(502, "closed", f"connector {self.link.connector!r} closed the stream without answering")
            )
            self.transport.loseConnection()

    def describe_loss(self, reason: Failure) -> str:
        return _link_reason(reason)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.link.tunnels -= 1
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.relay is not None:
            super().connectionLost(reason)
        elif not self.answered.called:
            # Refused (reset by a link going away) or the link died before the connector answered:
            # no client byte has gone anywhere yet, so another link may take the client.
            self.answered.errback(_Retry(f"connector {self.link.connector!r}: {_link_reason(reason)}"))


def _link_reason(reason: Failure) -> str:
    message = reason.getErrorMessage()
    marker = "mux session lost: "
    if marker in message:
        detail = message.split(marker, 1)[1]
        if detail.startswith("shutting down"):
            return f"DMZ gateway {detail}"
        return f"connector link lost ({detail})"
    if "reset" in message:
        return "tunnel reset by the connector"
    return message or "closed"


class TunnelOpener:
    """Chooses a link for a service and opens a tunnel on it, trying another link if one refuses."""

    def __init__(self, registry: LinkRegistry, clock: IReactorTime, budget: BufferBudget | None = None) -> None:
        self.registry = registry
        self.clock = clock
        self.budget = budget

    def open(self, service: str, client: str, metadata: tuple[tuple[str, str], ...], timeout: float) -> Deferred[TunnelStream]:
        """Fires with a ready ``TunnelStream`` or fails with ``OpenFailed``; cancel it if the client leaves."""
        budget = self.budget
        if budget is not None and budget.exhausted:
            # Streams already hold all the tunnel data this gateway may hold: a new client would
            # only add to it. Open tunnels keep going; this one is refused until some drains.
            return fail(
                OpenFailed(
                    503, "buffer_budget",
                    f"gateway busy: stalled clients hold the whole buffer-budget ({budget.limit} bytes)",
                )
            )
        request = OpenRequest(service=service, client=client, metadata=metadata)
        tried: list[ConnectorLink] = []
        retried: list[str] = []
        current: list[TunnelStream] = []

        def cancel(d: Deferred[TunnelStream]) -> None:
            if current:
                current[-1].cancel()

        result: Deferred[TunnelStream] = Deferred(cancel)

        def attempt() -> None:
            while True:
                link = self.registry.pick(service, exclude=tried)
                if link is None:
                    if tried:
                        why = "; ".join(dict.fromkeys(retried)) or "refused the stream"
                        reason = f"no link for service {service!r} took the client ({why})"
                    else:
                        reason = f"no live link for service {service!r}"
                    result.errback(OpenFailed(503, "no_link", reason))
                    return
                tried.append(link)
                tunnel = TunnelStream(request, link, timeout, self.clock)
                try:
                    link.mux.open_stream(tunnel)
                except MuxError:
                    continue  # going away or full: next link
                current.append(tunnel)
                tunnel.answered.addCallbacks(answered, failed)
                return

        def answered(tunnel: TunnelStream) -> None:
            if not result.called:
                result.callback(tunnel)
            else:
                tunnel.transport.abortConnection()

        def failed(failure: Failure) -> None:
            if result.called:
                return
            if failure.check(_Retry):
                retried.append(failure.getErrorMessage())
                attempt()
            elif failure.check(OpenFailed):
                result.errback(failure)
            elif failure.check(CancelledError):
                pass
            else:
                result.errback(OpenFailed(502, "internal", f"tunnel open failed: {failure.getErrorMessage()}"))

        attempt()
        return result

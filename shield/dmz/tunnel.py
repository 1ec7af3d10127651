"""Opening a tunnel for one public client: a stream on a chosen link, OPEN, and the answer.

The DMZ names only a service and the client's address; the connector decides where that goes.
The outcome is either a ``TunnelStream`` ready to relay bytes, or an ``OpenFailed`` carrying the
HTTP status and the one-line reason the public client and the log will see.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import Callable, ClassVar, Iterable

from twisted.internet.protocol import connectionDone
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from shield.deadline import Deadline
from shield.refusal import Refusal, RefusedError
from shield.dmz.links import ConnectorLink, LinkRegistry
from shield.lifecycle import Lifecycle, Transitions
from shield.link.wire import MessageReader, OpenReply, OpenRequest, OpenStatus, WireError, encode
from shield.mux.budget import BufferBudget
from shield.mux.errors import MuxError
from shield.relay import Relay, RelayedProtocol, Side


class OpenFailed(RefusedError):
    """Why a tunnel could not be opened: ``status`` is the HTTP code, ``label`` the metric reason."""

    def __init__(self, status: int, label: str, reason: str) -> None:
        super().__init__(Refusal(status, label, reason))


_STATUS_FOR_REPLY = {
    OpenStatus.UNKNOWN_SERVICE: (502, "unknown_service"),
    OpenStatus.BACKEND_REFUSED: (502, "backend_refused"),
    OpenStatus.BACKEND_UNREACHABLE: (502, "backend_unreachable"),
    OpenStatus.BACKEND_TIMEOUT: (502, "backend_timeout"),
    OpenStatus.OVERLOADED: (503, "connector_overloaded"),
}


class _Retry(Exception):
    """The link refused the stream before answering (it is going away): try another link."""


class TunnelState(Enum):
    NEW = auto()  # the stream is being opened on its link
    AWAITING_ANSWER = auto()  # OPEN sent; the connector's answer must come before the deadline
    ANSWERED = auto()  # answered OK; bytes are held until the public client is joined
    RELAYING = auto()  # spliced to the public client
    FAILED = auto()  # ``answered`` failed (refused, bad or late answer, closed): closing
    CANCELLED = auto()  # the public client left before the answer: reset
    GONE = auto()  # the stream is closed


class TunnelEvent(Enum):
    OPEN_SENT = auto()
    ANSWER_OK = auto()
    ANSWER_REFUSED = auto()  # an OPEN_REPLY with another status
    ANSWER_BAD = auto()  # bytes that are no OPEN_REPLY
    ANSWER_LATE = auto()  # the open-timeout ran out
    INPUT_ENDED = auto()  # the connector half-closed the stream
    CANCEL = auto()  # the public client left
    JOIN = auto()  # the front splices the public client onto it
    LOST = auto()  # the stream's connectionLost


class TunnelStream(RelayedProtocol):
    """The DMZ's end of one tunnel stream: OPEN, wait for OPEN_REPLY, then relay.

    Its lifecycle (``LIFECYCLE``; any other event is a ``StateError``):

    ===============  ==============  ===============  =================================================
    state            event           next             what happens
    ===============  ==============  ===============  =================================================
    NEW              OPEN_SENT       AWAITING_ANSWER  OPEN written; the answer deadline starts
    AWAITING_ANSWER  ANSWER_OK       ANSWERED         ``answered`` fires with this stream
    AWAITING_ANSWER  ANSWER_REFUSED  FAILED           fails with the connector's reason; closed
    AWAITING_ANSWER  ANSWER_BAD      FAILED           fails with 502 bad_reply; reset
    AWAITING_ANSWER  ANSWER_LATE     FAILED           fails with 504 open_timeout; reset
    AWAITING_ANSWER  INPUT_ENDED     FAILED           fails with 502 closed; closed
    AWAITING_ANSWER  CANCEL          CANCELLED        reset
    AWAITING_ANSWER  LOST            GONE             fails with _Retry: the link refused it or died,
                                                      no client byte went anywhere, another link may
    ANSWERED         JOIN            RELAYING         what was held goes to the client first
    ANSWERED         INPUT_ENDED     ANSWERED         held for the relay
    ANSWERED         LOST            GONE
    RELAYING         INPUT_ENDED     RELAYING         passed to the relay (half-close)
    RELAYING         LOST            GONE             the relay ends the client
    FAILED           INPUT_ENDED     FAILED           nothing more to hear
    FAILED           LOST            GONE
    CANCELLED        LOST            GONE             fails with CancelledError: the client is gone,
                                                      no other link is tried for it
    ===============  ==============  ===============  =================================================

    Leaving AWAITING_ANSWER stops the answer deadline, whichever way it is left. Bytes from the
    connector are read as its answer in AWAITING_ANSWER, held in ANSWERED, relayed in RELAYING
    and dropped in every other state.
    """

    LIFECYCLE: ClassVar[Transitions[TunnelState, TunnelEvent]] = {
        (TunnelState.NEW, TunnelEvent.OPEN_SENT): TunnelState.AWAITING_ANSWER,
        (TunnelState.AWAITING_ANSWER, TunnelEvent.ANSWER_OK): TunnelState.ANSWERED,
        (TunnelState.AWAITING_ANSWER, TunnelEvent.ANSWER_REFUSED): TunnelState.FAILED,
        (TunnelState.AWAITING_ANSWER, TunnelEvent.ANSWER_BAD): TunnelState.FAILED,
        (TunnelState.AWAITING_ANSWER, TunnelEvent.ANSWER_LATE): TunnelState.FAILED,
        (TunnelState.AWAITING_ANSWER, TunnelEvent.INPUT_ENDED): TunnelState.FAILED,
        (TunnelState.AWAITING_ANSWER, TunnelEvent.CANCEL): TunnelState.CANCELLED,
        (TunnelState.AWAITING_ANSWER, TunnelEvent.LOST): TunnelState.GONE,
        (TunnelState.ANSWERED, TunnelEvent.JOIN): TunnelState.RELAYING,
        (TunnelState.ANSWERED, TunnelEvent.INPUT_ENDED): TunnelState.ANSWERED,
        (TunnelState.ANSWERED, TunnelEvent.LOST): TunnelState.GONE,
        (TunnelState.RELAYING, TunnelEvent.INPUT_ENDED): TunnelState.RELAYING,
        (TunnelState.RELAYING, TunnelEvent.LOST): TunnelState.GONE,
        (TunnelState.FAILED, TunnelEvent.INPUT_ENDED): TunnelState.FAILED,
        (TunnelState.FAILED, TunnelEvent.LOST): TunnelState.GONE,
        (TunnelState.CANCELLED, TunnelEvent.LOST): TunnelState.GONE,
    }

    def __init__(
        self, request: OpenRequest, link: ConnectorLink, timeout: float, clock: IReactorTime, open_timeout: float | None = None
    ) -> None:
        self.request = request
        self.link = link
        self.answered: Deferred[TunnelStream] = Deferred()
        self._timeout = timeout  # what is left of the open-timeout for this try
        self._open_timeout = open_timeout if open_timeout is not None else timeout  # what the log says
        self._clock = clock
        self._answer_deadline = Deadline(clock)
        self._reader = MessageReader((OpenReply,))
        # An answer no longer awaited has no deadline, however it stops being awaited.
        self._life = Lifecycle(
            "TunnelStream", self.LIFECYCLE, TunnelState.NEW, {TunnelState.AWAITING_ANSWER: self._answer_deadline.cancel}
        )

    @property
    def state(self) -> TunnelState:
        return self._life.state

    def _transition(self, event: TunnelEvent) -> TunnelState:
        return self._life.fire(event)

    # -- before the answer ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._transition(TunnelEvent.OPEN_SENT)
        self.link.tunnels += 1
        self.transport.write(encode(self.request))
        self._answer_deadline.start(self._timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._transition(TunnelEvent.ANSWER_LATE)
        connector = self.link.connector
        self.answered.errback(
            OpenFailed(504, "open_timeout", f"connector {connector!r} did not answer within {self._open_timeout:g} s")
        )
        self.transport.abortConnection()

    def cancel(self) -> None:
        """The public client left before the answer: drop the stream."""
        self._transition(TunnelEvent.CANCEL)
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        state = self._life.state
        if state is TunnelState.RELAYING or state is TunnelState.ANSWERED:
            super().dataReceived(data)  # relayed, or held until the client is joined
            return
        if state is not TunnelState.AWAITING_ANSWER:
            return  # failed or cancelled: nobody will read it
        try:
            reply, rest = self._reader.feed(data)
        except WireError as problem:
            self._transition(TunnelEvent.ANSWER_BAD)
            self.answered.errback(
                OpenFailed(502, "bad_reply", f"connector {self.link.connector!r} sent a bad reply: {problem}")
            )
            self.transport.abortConnection()
            return
        if reply is None:
            return
        assert isinstance(reply, OpenReply)
        if reply.status == OpenStatus.OK:
            self._transition(TunnelEvent.ANSWER_OK)
            if rest:
                super().dataReceived(rest)  # held: the client gets it first once joined
            self.answered.callback(self)
            return
        self._transition(TunnelEvent.ANSWER_REFUSED)
        status, label = _STATUS_FOR_REPLY.get(reply.status, (502, "refused"))
        reason = reply.reason or reply.status.name.lower().replace("_", " ")
        self.answered.errback(OpenFailed(status, label, f"connector {self.link.connector!r}: {reason}"))
        self.transport.loseConnection()

    # -- relaying --------------------------------------------------------------------------------

    def start_relay(self, public: Side, to_backend, to_client, on_finished) -> Relay:
        """Join this stream to the public client's side; bytes held so far go out first."""
        self._transition(TunnelEvent.JOIN)
        return self.join(lambda side: Relay(public, side, to_backend, to_client, on_finished))

    def readConnectionLost(self) -> None:
        state = self._life.state
        self._transition(TunnelEvent.INPUT_ENDED)
        if state is TunnelState.AWAITING_ANSWER:
            self.answered.errback(
                OpenFailed(502, "closed", f"connector {self.link.connector!r} closed the stream without answering")
            )
            self.transport.loseConnection()
        elif state is not TunnelState.FAILED:
            super().readConnectionLost()  # to the relay, or held for it

    def describe_loss(self, reason: Failure) -> str:
        return _link_reason(reason)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.link.tunnels -= 1
        state = self._life.state
        self._transition(TunnelEvent.LOST)
        if state is TunnelState.RELAYING:
            super().connectionLost(reason)
        elif state is TunnelState.AWAITING_ANSWER:
            # Refused (reset by a link going away) or the link died before the connector answered:
            # no client byte has gone anywhere yet, so another link may take the client.
            self.answered.errback(_Retry(f"connector {self.link.connector!r}: {_link_reason(reason)}"))
        elif state is TunnelState.CANCELLED:
            # Reset because the client left: that says nothing about the link, and there is
            # nobody left to open another tunnel for.
            self.answered.errback(CancelledError("the public client left before the answer"))


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

    def __init__(
        self,
        registry: LinkRegistry,
        clock: IReactorTime,
        budget: BufferBudget | None = None,
        may_serve: Callable[[str], Iterable[str]] = lambda service: (),
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.budget = budget
        #: The connectors the configuration lets serve a service (to say why none does now).
        self.may_serve = may_serve

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
        return _Opening(self, request, timeout).start()


#: Answers that say "this connector cannot serve it now", so another connector may: its backend
#: refused, was unreachable or timed out, it has no such service (a reload racing), or it is busy.
#: Nothing has reached the public client yet when one of these arrives.
TRY_ANOTHER_CONNECTOR = frozenset(
    {"backend_refused", "backend_unreachable", "backend_timeout", "unknown_service", "connector_overloaded"}
)


class _Opening:
    """One client's way to a tunnel: links in the router's order, within one deadline.

    A link that refuses the stream before answering (going away, full) is skipped for the next
    link. A connector that answers that it cannot serve the client (``TRY_ANOTHER_CONNECTOR``) is
    skipped with all its links, for the next connector by priority and load. The client gets an
    error only when no link is left or the service's ``open-timeout`` is over; the error names
    every connector tried and why each failed.
    """

    def __init__(self, opener: TunnelOpener, request: OpenRequest, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = opener.clock.seconds() + timeout
        self.registry = opener.registry
        self.clock = opener.clock
        self.may_serve = opener.may_serve
        self.request = request
        self.tried: list[ConnectorLink] = []  # links not to use again
        self.skipped: list[str] = []  # links that refused the stream, why
        self.failures: dict[str, OpenFailed] = {}  # connector -> why it could not serve
        self.current: TunnelStream | None = None
        self.result: Deferred[TunnelStream] = Deferred(self._cancel)

    def start(self) -> Deferred[TunnelStream]:
        self._attempt()
        return self.result

    def _cancel(self, result: Deferred[TunnelStream]) -> None:
        if self.current is not None:
            self.current.cancel()

    def _attempt(self) -> None:
        service = self.request.service
        while True:
            remaining = self.deadline - self.clock.seconds()
            excluded = self.tried + [link for link in self.registry.links if link.connector in self.failures]
            link = self.registry.pick(service, exclude=excluded) if remaining > 0 else None
            if link is None:
                self.result.errback(self._give_up(remaining <= 0))
                return
            self.tried.append(link)
            tunnel = TunnelStream(self.request, link, remaining, self.clock, self.timeout)
            try:
                link.mux.open_stream(tunnel)
            except MuxError:
                continue  # going away or full: next link
            self.current = tunnel
            tunnel.answered.addCallbacks(self._answered, self._failed)
            return

    def _answered(self, tunnel: TunnelStream) -> None:
        if not self.result.called:
            self.result.callback(tunnel)
        else:
            tunnel.transport.abortConnection()

    def _failed(self, failure: Failure) -> None:
        self.current = None
        if self.result.called:
            return
        if failure.check(_Retry):
            self.skipped.append(failure.getErrorMessage())
            self._attempt()
        elif failure.check(OpenFailed):
            problem: OpenFailed = failure.value
            if problem.label in TRY_ANOTHER_CONNECTOR:
                self.failures[self.tried[-1].connector] = problem
                self._attempt()
            elif self.failures:
                self.failures[self.tried[-1].connector] = problem
                self.result.errback(self._give_up(timed_out=problem.status == 504))
            else:
                self.result.errback(failure)
        elif failure.check(CancelledError):
            pass
        else:
            self.result.errback(OpenFailed(502, "internal", f"tunnel open failed: {failure.getErrorMessage()}"))

    def _give_up(self, timed_out: bool) -> OpenFailed:
        service = self.request.service
        if self.failures:
            tried = "; ".join(str(problem) for problem in self.failures.values())
            labels = {problem.label for problem in self.failures.values()}
            label = labels.pop() if len(labels) == 1 else "no_backend"
            statuses = {problem.status for problem in self.failures.values()}
            status = 504 if timed_out or statuses == {504} else (503 if statuses == {503} else 502)
            if len(self.failures) == 1 and not timed_out:
                (only,) = self.failures.values()
                return only
            why = f"no connector could serve {service!r}: {tried}"
            if timed_out:
                why += "; open-timeout over before another connector could be tried"
            return OpenFailed(status, label, why)
        if timed_out and self.tried:
            return OpenFailed(504, "open_timeout", f"no connector for {service!r} answered in time")
        if self.tried:
            why = "; ".join(dict.fromkeys(self.skipped)) or "refused the stream"
            return OpenFailed(503, "no_link", f"no link for service {service!r} took the client ({why})")
        withdrawn = sorted(
            {link.connector for link in self.registry.links if link.usable and service in link.withdrawn}
            & set(self.may_serve(service))
        )
        if withdrawn:
            # Linked, allowed, and no longer offering it: their checks found its backend down.
            names = ", ".join(repr(name) for name in withdrawn)
            return OpenFailed(
                502, "backend_down", f"no connector can reach a backend of {service!r}: {names} report it down"
            )
        return OpenFailed(503, "no_link", f"no live link for service {service!r}")

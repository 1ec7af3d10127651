"""The connector's per-link limits on what a DMZ may make it hold, without sockets.

A DMZ-side ``MuxProtocol`` and the connector's link protocol are joined in memory
(twisted.test.iosim) with one fake clock; the backend dialer hands out Deferreds the test fires
itself, so "a backend that does not answer yet" is exact. Checked here: ``max-pending-opens``
(OVERLOADED beyond it, counted, one log line per burst), the OPEN header deadline, the mux's
``max_streams`` refusals, and that a refused or bad OPEN never dials anything.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Iterator

import pytest
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim

from shield.proxy_protocol.header import ProxyHeader
from shield.config.model import InternalService, Uri
from shield.internal.backend import (
    OPEN_HEADER_TIMEOUT,
    BackendConnection,
    BackendDialer,
    BackendStream,
    BackendStreamFactory,
    BackendStreamState,
    OpenLimits,
    RefusalLog,
)
from shield.internal.link import ConnectorLinkEnd
from shield.lifecycle import StateError
from shield.link.wire import MessageReader, OpenReply, OpenRequest, OpenStatus, encode
from shield.mux.config import MuxConfig
from shield.mux.protocol import MuxProtocol
from shield.ops.metrics import Metrics

SERVICE = InternalService(name="echo", connect=Uri("tcp", "127.0.0.1", 7000))


class HeldDialer(BackendDialer):
    """Records every dial and leaves it pending until the test fires it."""

    def __init__(self, clock: MemoryReactorClock) -> None:
        super().__init__((SERVICE,), Metrics(), clock)
        self.dials: list[Deferred[BackendConnection]] = []

    def dial(self, service: InternalService, header: ProxyHeader | None = None) -> Deferred[BackendConnection]:
        dialing: Deferred[BackendConnection] = Deferred()
        self.dials.append(dialing)
        return dialing

    def connect(self, index: int) -> BackendConnection:
        backend = BackendConnection()
        backend.makeConnection(StringTransport())
        self.dials[index].callback(backend)
        return backend


class Client(Protocol):
    """The DMZ end of one stream: sends ``header`` (OPEN by default) and records the reply."""

    def __init__(self, header: bytes | None) -> None:
        self.header = header
        self.reader = MessageReader((OpenReply,))
        self.reply: OpenReply | None = None
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        if self.header:
            self.transport.write(self.header)

    def dataReceived(self, data: bytes) -> None:
        if self.reply is None:
            reply, _ = self.reader.feed(data)
            if reply is not None:
                assert isinstance(reply, OpenReply)
                self.reply = reply
                self.transport.loseConnection()  # as the DMZ does after a refusal

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = reason

    @property
    def status(self) -> OpenStatus | None:
        return None if self.reply is None else self.reply.status

    @property
    def was_reset(self) -> bool:
        return self.reply is None and self.lost is not None and "reset" in self.lost.getErrorMessage()


def open_header(service: str = "echo") -> bytes:
    return encode(OpenRequest(service=service, client="192.0.2.1:5000", metadata=(("transport", "tcp"),)))


class Pair:
    """A connector link (the real ``ConnectorLinkEnd``) and a DMZ mux, in memory."""

    def __init__(self, max_pending: int = 3, max_streams: int = 16384) -> None:
        self.clock = MemoryReactorClock()
        self.dialer = HeldDialer(self.clock)
        self.lost_reasons: list[str] = []
        endpoint = "192.0.2.9:5941"
        host = SimpleNamespace(
            endpoint=endpoint, link_lost=lambda link, uptime, reason: self.lost_reasons.append(reason)
        )  # the link's LinkHost: only its losses matter here
        config = MuxConfig(keepalive_interval=0, max_streams=max_streams)
        streams = BackendStreamFactory(self.dialer, lambda: endpoint, max_pending_opens=max_pending, clock=self.clock)
        self.connector = ConnectorLinkEnd(host, config, streams, self.clock)
        self.dmz = MuxProtocol(False, MuxConfig(keepalive_interval=0), None, self.clock)
        self.pump = iosim.connect(
            self.dmz,
            iosim.FakeTransport(self.dmz, isServer=True),
            self.connector.mux,
            iosim.FakeTransport(self.connector.mux, isServer=False),
            greet=False,
            clock=self.clock,
        )

    def run(self) -> None:
        for _ in range(10_000):
            if not self.pump.pump():
                self.clock.advance(0)
                if not self.pump.pump():
                    return
        raise AssertionError("link never went quiet")

    def open(self, n: int, header: bytes | None = None) -> list[Client]:
        header = open_header() if header is None else header
        clients = [Client(header) for _ in range(n)]
        for client in clients:
            self.dmz.open_stream(client)
        self.run()
        return clients

    def refusals(self, limit: str) -> float:
        value = self.dialer.metrics.registry.get_sample_value(
            "shield_refusals_total", {"service": "", "limit": limit}
        )
        return value or 0.0

    def open_failures(self, reason: str) -> float:
        value = self.dialer.metrics.registry.get_sample_value(
            "shield_open_failures_total", {"service": "", "reason": reason}
        )
        return value or 0.0

    @property
    def pending(self) -> int:
        return self.connector.backend_streams.limits.pending


@pytest.fixture
def lines() -> Iterator[list[str]]:
    """Log lines of the connector's backend module."""
    captured: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "shield.internal.backend":
            captured.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield captured
    globalLogPublisher.removeObserver(observe)


def test_opens_beyond_the_limit_are_overloaded_counted_and_logged_once(lines: list[str]) -> None:
    pair = Pair(max_pending=3)
    clients = pair.open(10)

    assert len(pair.dialer.dials) == 3, "only the admitted opens dial"
    statuses = [client.status for client in clients]
    assert statuses[:3] == [None, None, None]
    assert statuses[3:] == [OpenStatus.OVERLOADED] * 7
    assert all("3 stream opens already pending" in c.reply.reason for c in clients[3:])  # type: ignore[union-attr]
    assert pair.refusals("max_pending_opens") == 7
    assert pair.pending == 3

    # One line at once for the burst; the other six are counted and said in one line a second later.
    refusal_lines = [line for line in lines if "max-pending-opens" in line or "max_pending_opens" in line]
    assert len(refusal_lines) == 1, lines
    assert "OVERLOADED" in refusal_lines[0] and "192.0.2.9:5941" in refusal_lines[0]
    pair.clock.advance(1.0)
    summaries = [line for line in lines if "more streams refused (max_pending_opens)" in line]
    assert len(summaries) == 1 and "6 more" in summaries[0], lines
    # A quiet second ends the burst: no more lines, and the next refusal is logged at once.
    pair.clock.advance(1.0)
    pair.clock.advance(1.0)
    assert len([line for line in lines if "max_pending_opens" in line or "max-pending-opens" in line]) == 2
    # The refused streams are gone on both sides (the DMZ closed after the reply).
    assert all(client.lost is not None for client in clients[3:])
    assert len(pair.connector.mux.streams) == 3


def test_a_connected_backend_frees_its_place() -> None:
    pair = Pair(max_pending=2)
    first = pair.open(2)
    assert pair.open(1)[0].status is OpenStatus.OVERLOADED

    pair.dialer.connect(0)
    pair.run()
    assert first[0].status is OpenStatus.OK
    assert pair.pending == 1
    late = pair.open(1)
    assert late[0].status is None and len(pair.dialer.dials) == 3, "the freed place was taken"
    assert pair.pending == 2


def test_a_failed_dial_frees_its_place() -> None:
    pair = Pair(max_pending=1)
    first = pair.open(1)
    pair.dialer.dials[0].errback(Failure(error.ConnectionRefusedError()))
    pair.run()
    assert first[0].status is OpenStatus.BACKEND_REFUSED
    assert pair.pending == 0
    assert pair.open(1)[0].status is None


def test_the_dmz_dropping_a_pending_stream_cancels_the_dial_and_frees_its_place() -> None:
    pair = Pair(max_pending=1)
    first = pair.open(1)
    dialing = pair.dialer.dials[0]
    first[0].transport.abortConnection()
    pair.run()
    assert dialing.called, "the dial was cancelled"
    assert pair.pending == 0


def test_a_stream_without_an_open_header_is_reset_after_the_deadline(lines: list[str]) -> None:
    pair = Pair(max_pending=2)
    silent = pair.open(1, header=b"")
    partial = pair.open(1, header=open_header()[:9])  # envelope and a little of the body
    assert pair.pending == 2
    assert pair.open(1)[0].status is OpenStatus.OVERLOADED, "a header still arriving holds a place"

    pair.clock.advance(OPEN_HEADER_TIMEOUT - 0.5)
    pair.run()
    assert silent[0].lost is None and partial[0].lost is None

    pair.clock.advance(0.5)
    pair.run()
    assert silent[0].was_reset and partial[0].was_reset
    assert pair.pending == 0
    assert pair.refusals("open_header_timeout") == 2
    assert pair.dialer.dials == []
    timeouts = [line for line in lines if "no complete OPEN header" in line]
    assert len(timeouts) == 1, lines  # the second is in the same burst


def test_a_header_completed_in_time_is_served() -> None:
    pair = Pair()
    header = open_header()
    clients = pair.open(1, header=header[:5])
    pair.clock.advance(OPEN_HEADER_TIMEOUT - 1)
    clients[0].transport.write(header[5:])
    pair.run()
    assert len(pair.dialer.dials) == 1
    pair.clock.advance(5)  # past the deadline: nothing happens to an open that has its header
    pair.run()
    assert clients[0].lost is None
    assert pair.refusals("open_header_timeout") == 0


def test_unknown_service_is_refused_without_dialling_and_frees_its_place(lines: list[str]) -> None:
    pair = Pair(max_pending=1)
    # One after the other: each refusal frees its place for the next.
    clients = [pair.open(1, header=open_header(name))[0] for name in ("nosuch", "Echo", "echo.", "x" * 63)]
    assert [c.status for c in clients] == [OpenStatus.UNKNOWN_SERVICE] * 4
    assert pair.dialer.dials == []
    assert pair.pending == 0
    assert pair.open_failures("unknown_service") == 4
    refused = [line for line in lines if "no service 'nosuch' here" in line]
    assert refused and "nothing dialled" in refused[0]


@pytest.mark.parametrize(
    "header, problem",
    [
        (b"GET / HTTP/1.1\r\n\r\n", "bad magic"),
        # An OPEN of the largest size the envelope allows, whose service name is 255 bytes long.
        (
            b"SH\x01\x03\xff\xff" + b"\xff" + b"a" * 255 + b"\x00\x01\x01k" + (65273).to_bytes(2, "big")
            + b"v" * 65273,
            "service name",
        ),
        (b"SH\x01\x03\x00\x08" + b"\x05ec ho" + b"\x00\x00", "not valid"),
        (b"SH\x01\x04\x00\x03\x00\x00\x00", "unexpected OPEN_REPLY"),
    ],
    ids=["not-shield", "max-size-long-name", "odd-characters", "wrong-type"],
)
def test_a_bad_open_header_resets_the_stream_and_dials_nothing(
    header: bytes, problem: str, lines: list[str]
) -> None:
    pair = Pair(max_pending=1)
    client = pair.open(1, header=header)[0]
    assert client.was_reset, client.lost
    assert pair.dialer.dials == []
    assert pair.pending == 0
    assert pair.open_failures("bad_open") == 1
    assert any("bad open request" in line and problem in line for line in lines), lines
    assert pair.connector.mux.is_open, "a bad OPEN costs its stream, not the link"
    assert pair.open(1)[0].status is None, "the link goes on serving"


def test_streams_beyond_max_streams_are_reset_counted_and_logged_once(lines: list[str]) -> None:
    pair = Pair(max_pending=100, max_streams=4)
    clients = pair.open(10)
    assert len(pair.dialer.dials) == 4
    reset = [client for client in clients if client.was_reset]
    assert len(reset) == 6
    assert pair.refusals("max_streams") == 6
    limit_lines = [line for line in lines if "max-streams" in line or "(max_streams)" in line]
    assert len(limit_lines) == 1, lines
    pair.clock.advance(1.0)
    limit_lines = [line for line in lines if "max-streams" in line or "(max_streams)" in line]
    assert len(limit_lines) == 2 and "5 more" in limit_lines[1], lines


def test_refusal_log_lines_per_burst() -> None:
    clock = MemoryReactorClock()
    said: list[str] = []

    class Logger:
        def warn(self, format: str, **kwargs: object) -> None:
            said.append(formatEvent({"log_format": format, **kwargs}))

    refusals = RefusalLog(clock, lambda: "dmz:1", 1.0, Logger())  # type: ignore[arg-type]
    for i in range(1000):
        refusals.refused("overload", f"refusal {i}")
        clock.advance(0.0009)  # a burst within one interval
    refusals.refused("other", "something else")
    assert said == ["stream from DMZ dmz:1: refusal 0", "stream from DMZ dmz:1: something else"]
    clock.advance(0.1)
    assert len(said) == 3 and "999 more streams refused (overload)" in said[2] and "refusal 999" in said[2]
    clock.advance(5)
    refusals.refused("overload", "again")
    refusals.refused("overload", "and again")
    assert said[-1] == "stream from DMZ dmz:1: again"
    refusals.stop()  # the link went: what was only counted is said
    assert "1 more streams refused (overload)" in said[-1]
    assert not clock.getDelayedCalls()


def test_the_link_ends_its_refusal_timers_when_it_goes() -> None:
    pair = Pair(max_pending=1)
    pair.open(3)
    assert pair.clock.getDelayedCalls()
    pair.connector.mux.transport.loseConnection()
    pair.run()
    assert pair.lost_reasons
    pending = [call for call in pair.clock.getDelayedCalls() if call.active()]
    assert all("_interval_over" not in repr(call) for call in pending), pending


def test_an_event_out_of_turn_is_refused_loudly_and_changes_nothing() -> None:
    """A stream told twice that it is gone is a bug: it raises instead of giving its place back twice."""
    clock = MemoryReactorClock()
    dialer = HeldDialer(clock)
    limits = OpenLimits(3, dialer.metrics, RefusalLog(clock, lambda: "dmz"), clock)
    stream = BackendStream(dialer, "dmz", limits)
    stream.makeConnection(StringTransport())
    stream.dataReceived(open_header())
    assert stream.state is BackendStreamState.DIALING and limits.pending == 1
    stream.connectionLost(Failure(error.ConnectionLost()))
    assert stream.state is BackendStreamState.GONE and limits.pending == 0
    assert dialer.dials[0].called, "the dial was cancelled"
    with pytest.raises(StateError, match="BackendStream: event LOST is not allowed in state GONE"):
        stream.connectionLost(Failure(error.ConnectionLost()))
    assert limits.pending == 0

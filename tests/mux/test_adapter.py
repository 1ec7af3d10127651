"""The Twisted adapter over an in-memory connection: streams behave like TCP transports.

No sockets: two MuxProtocols are joined by twisted.test.iosim and a fake clock, so every test is
deterministic and the 64 MiB backpressure run takes a few seconds at most.
"""

from __future__ import annotations

import hashlib

import pytest
from twisted.internet import error
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from shield.mux.config import MuxConfig
from shield.mux.errors import GoingAwayError
from shield.mux.frames import HEADER_SIZE, FrameType, decode_header
from shield.mux.protocol import MuxProtocol
from shield.mux.stream import MuxStream

MiB = 1024 * 1024
WINDOW = 256 * 1024


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    """Keeps everything it receives and how the stream ended."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.digest = hashlib.sha256()
        self.count = 0
        self.keep = True
        self.read_closed = False
        self.write_closed = False
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)
        self.digest.update(data)
        if self.keep:
            self.received += data

    def readConnectionLost(self) -> None:
        self.read_closed = True

    def writeConnectionLost(self) -> None:
        self.write_closed = True

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = reason


class PlainRecorder(Protocol):
    """A protocol that cannot half-close (like most)."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = reason


@implementer(IPushProducer)
class PatternSource:
    """A streaming producer writing ``total`` bytes of a known pattern, then half-closing."""

    def __init__(self, transport: MuxStream, total: int, chunk: int = 64 * 1024) -> None:
        self.transport = transport
        self.total = total
        self.chunk = chunk
        self.produced = 0
        self.paused = False
        self.stopped = False
        self.digest = hashlib.sha256()

    def start(self) -> None:
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def block(self) -> bytes:
        n = min(self.chunk, self.total - self.produced)
        seed = (self.produced // self.chunk).to_bytes(8, "big")
        return (seed * (n // 8 + 1))[:n]

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and not self.stopped and self.produced < self.total:
            block = self.block()
            self.produced += len(block)
            self.digest.update(block)
            self.transport.write(block)
        if self.produced >= self.total and not self.stopped:
            self.stopped = True
            self.transport.unregisterProducer()
            self.transport.loseWriteConnection()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.stopped = True


class Link:
    """Two MuxProtocols over an in-memory pump with one fake clock."""

    def __init__(
        self,
        server_factory: Factory | None = None,
        client_factory: Factory | None = None,
        config: MuxConfig | None = None,
    ) -> None:
        self.clock = MemoryReactorClock()
        config = config or MuxConfig(keepalive_interval=0)
        self.client = MuxProtocol(True, config, client_factory, self.clock)
        self.server = MuxProtocol(False, config, server_factory, self.clock)
        self.client_io = iosim.FakeTransport(self.client, isServer=False)
        self.server_io = iosim.FakeTransport(self.server, isServer=True)
        self.pump = iosim.connect(
            self.server, self.server_io, self.client, self.client_io, greet=False, clock=self.clock
        )

    def run(self, rounds: int = 100_000) -> int:
        """Pump until nothing moves; returns the number of rounds that moved data."""
        moved = 0
        for _ in range(rounds):
            if not self.pump.pump():
                self.clock.advance(0)
                if not self.pump.pump():
                    return moved
            moved += 1
        raise AssertionError("link never went quiet")


def collecting_factory(kind: type[Protocol] = Recorder) -> tuple[Factory, list[Protocol]]:
    built: list[Protocol] = []

    class _Factory(Factory):
        def buildProtocol(self, addr: object) -> Protocol:
            protocol = kind()
            built.append(protocol)
            return protocol

    return _Factory(), built


def frames_on_wire(data: bytes) -> list[tuple[FrameType, int]]:
    """(type, length) of each frame in a captured byte string."""
    frames, pos = [], 0
    while pos < len(data):
        header = decode_header(data, pos)
        frames.append((header.type, header.length))
        pos += HEADER_SIZE + (header.length if header.type is FrameType.DATA else 0)
    return frames


def test_paused_consumer_bounds_buffers_and_loses_nothing() -> None:
    factory, accepted = collecting_factory()
    link = Link(server_factory=factory)
    sender = Recorder()
    stream = link.client.open_stream(sender)
    source = PatternSource(stream, 64 * MiB)
    link.run()
    (receiver,) = accepted
    assert isinstance(receiver, Recorder)
    receiver.keep = False
    receiving_stream = receiver.transport
    assert isinstance(receiving_stream, MuxStream)
    receiving_stream.pauseProducing()  # the consumer stops reading

    source.start()
    link.run()

    # Stalled: the receiver holds at most one window, the sender at most its high-water mark
    # plus one chunk, and the producer is paused instead of piling data up.
    assert receiving_stream.buffered_inbound <= WINDOW
    assert receiver.count == 0
    assert source.paused
    assert stream.buffered_outbound <= link.client.config.write_buffer_high_water + source.chunk
    assert source.produced < 64 * MiB // 16

    receiving_stream.resumeProducing()
    link.run()

    assert source.produced == 64 * MiB
    assert receiver.count == 64 * MiB
    assert receiver.digest.hexdigest() == source.digest.hexdigest()
    assert receiver.read_closed


def test_many_small_writes_become_few_frames() -> None:
    factory, accepted = collecting_factory()
    link = Link(server_factory=factory)
    stream = link.client.open_stream(Recorder())
    link.run()
    for i in range(1000):
        stream.write(b"%09d\n" % i)
    link.clock.advance(0)
    wire = link.client_io.getOutBuffer()
    data_frames = [length for kind, length in frames_on_wire(wire) if kind is FrameType.DATA]
    assert sum(data_frames) == 10_000
    assert len(data_frames) <= 2
    link.server_io.bufferReceived(wire)
    link.run()
    assert bytes(accepted[0].received) == b"".join(b"%09d\n" % i for i in range(1000))


def test_half_close_both_ways() -> None:
    factory, accepted = collecting_factory()
    link = Link(server_factory=factory)
    client = Recorder()
    stream = link.client.open_stream(client)
    stream.write(b"request")
    stream.loseWriteConnection()
    link.run()
    server = accepted[0]
    assert bytes(server.received) == b"request"
    assert server.read_closed and client.write_closed
    assert client.lost is None and server.lost is None

    server.transport.write(b"response after the client's FIN")
    server.transport.loseWriteConnection()
    link.run()
    assert bytes(client.received) == b"response after the client's FIN"
    assert client.read_closed
    assert client.lost is not None and client.lost.check(error.ConnectionDone)
    assert server.lost is not None and server.lost.check(error.ConnectionDone)
    assert link.client.streams == {} and link.server.streams == {}


def test_fin_closes_a_protocol_that_cannot_half_close() -> None:
    factory, accepted = collecting_factory(PlainRecorder)
    link = Link(server_factory=factory)
    client = Recorder()
    stream = link.client.open_stream(client)
    stream.write(b"bye")
    stream.loseWriteConnection()
    link.run()
    server = accepted[0]
    assert bytes(server.received) == b"bye"
    assert server.lost is not None and server.lost.check(error.ConnectionDone)
    assert client.read_closed
    assert client.lost is not None and client.lost.check(error.ConnectionDone)


def test_lose_connection_flushes_then_closes() -> None:
    factory, accepted = collecting_factory(PlainRecorder)
    link = Link(server_factory=factory)
    client = Recorder()
    stream = link.client.open_stream(client)
    stream.write(b"x" * (3 * WINDOW))  # more than one window: needs window updates to finish
    stream.loseConnection()
    link.run()
    server = accepted[0]
    assert bytes(server.received) == b"x" * (3 * WINDOW)
    assert client.lost is not None and client.lost.check(error.ConnectionDone)
    assert server.lost is not None and server.lost.check(error.ConnectionDone)


def test_abort_resets_both_sides() -> None:
    factory, accepted = collecting_factory()
    link = Link(server_factory=factory)
    client = Recorder()
    stream = link.client.open_stream(client)
    stream.write(b"partial")
    link.run()
    stream.abortConnection()
    link.run()
    assert client.lost is not None and client.lost.check(error.ConnectionAborted)
    server = accepted[0]
    assert server.lost is not None and server.lost.check(error.ConnectionLost)
    assert "reset" in server.lost.getErrorMessage()
    assert link.server.streams == {}


def test_stream_refused_without_a_stream_factory() -> None:
    link = Link(server_factory=None)
    client = Recorder()
    link.client.open_stream(client)
    link.run()
    assert client.lost is not None and "reset" in client.lost.getErrorMessage()


def test_keepalive_ends_a_silent_link() -> None:
    config = MuxConfig(keepalive_interval=5.0, keepalive_missed_limit=3)
    factory, _ = collecting_factory()
    link = Link(server_factory=factory, config=config)
    client = Recorder()
    link.client.open_stream(client)
    link.run()
    closed: list[str] = []
    link.client.when_closed().addCallback(closed.append)

    # A live peer answers: many intervals pass and the link stays up.
    for _ in range(10):
        link.clock.advance(5.0)
        link.run()
    assert closed == [] and client.lost is None

    # The peer goes silent (nothing is pumped): three pings unanswered, then the link is cut.
    for _ in range(3):
        link.clock.advance(5.0)
    assert closed == []
    link.clock.advance(5.0)
    assert link.client_io.disconnecting
    link.run()
    assert closed and "keepalive" in closed[0]
    assert client.lost is not None and "keepalive" in client.lost.getErrorMessage()


def test_keepalive_timeout_cuts_the_link_even_with_frames_queued() -> None:
    """A silent partition: a stream opened at the last moment can never be sent; no graceful wait."""
    config = MuxConfig(keepalive_interval=5.0, keepalive_missed_limit=3)
    factory, _ = collecting_factory()
    link = Link(server_factory=factory, config=config)
    link.run()
    aborted: list[bool] = []
    link.client_io.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    for _ in range(3):
        link.clock.advance(5.0)
    link.client.session.ping(link.clock.seconds())  # a frame still queued when the timeout hits
    link.clock.advance(5.0)
    assert aborted == [True]


def test_ping_reports_round_trip() -> None:
    link = Link()
    rtts: list[float] = []
    link.client.ping().addCallback(rtts.append)
    link.clock.advance(0.25)
    link.run()
    assert len(rtts) == 1 and rtts[0] >= 0.25


def test_graceful_go_away_lets_open_streams_finish() -> None:
    factory, accepted = collecting_factory()
    link = Link(server_factory=factory)
    client = Recorder()
    stream = link.client.open_stream(client)
    stream.write(b"before")
    link.run()
    peer_code: list[int] = []
    link.server.when_peer_goes_away().addCallback(peer_code.append)
    closed: list[str] = []
    link.client.go_away().addCallback(closed.append)
    link.run()
    assert peer_code == [0]
    with pytest.raises(GoingAwayError):
        link.client.open_stream(Recorder())
    with pytest.raises(GoingAwayError):
        link.server.open_stream(Recorder())

    server = accepted[0]
    stream.write(b" and after go-away")
    server.transport.write(b"reply")
    link.run()
    assert bytes(server.received) == b"before and after go-away"
    assert bytes(client.received) == b"reply"
    assert closed == []

    stream.loseWriteConnection()
    server.transport.loseWriteConnection()
    link.run()
    assert client.lost is not None and client.lost.check(error.ConnectionDone)
    assert len(closed) == 1


def test_protocol_error_ends_session_and_streams_with_reason() -> None:
    factory, accepted = collecting_factory()
    link = Link(server_factory=factory)
    client = Recorder()
    link.client.open_stream(client)
    link.run()
    closed: list[str] = []
    link.server.when_closed().addCallback(closed.append)
    link.server.dataReceived(b"\x07" + b"\x00" * 11)  # yamux version 7
    server = accepted[0]
    assert server.lost is not None and "version 7" in server.lost.getErrorMessage()
    wire = link.server_io.getOutBuffer()
    assert wire[-12:] == bytes([0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])  # GoAway(protocol error)
    link.client_io.bufferReceived(wire)
    link.run()
    assert closed and "version 7" in closed[0]
    assert client.lost is not None


def test_window_larger_than_default_lets_one_stream_send_more_per_round_trip() -> None:
    config = MuxConfig(stream_window=4 * MiB, keepalive_interval=0)
    factory, accepted = collecting_factory()
    link = Link(server_factory=factory, config=config)
    stream = link.client.open_stream(Recorder())
    link.run()
    stream.write(b"y" * (4 * MiB))
    link.clock.advance(0)
    wire = link.client_io.getOutBuffer()
    sent = sum(length for kind, length in frames_on_wire(wire) if kind is FrameType.DATA)
    assert sent == 4 * MiB  # the whole window, without waiting for an update
    link.server_io.bufferReceived(wire)
    link.run()
    assert len(accepted[0].received) == 4 * MiB


def test_batched_reads_are_parsed_once_and_survive_a_close_in_the_same_read() -> None:
    factory, accepted = collecting_factory()
    link = Link(server_factory=factory)
    stream = link.client.open_stream(Recorder())
    link.run()
    for i in range(16):  # one window, written in one turn: four 64 KiB frames
        stream.write(b"%04d" % i * 4096)
    link.clock.advance(0)
    wire = link.client_io.getOutBuffer()
    pieces = [wire[i : i + 16384] for i in range(0, len(wire), 16384)]  # like TLS records
    server = link.server
    delivered: list[int] = []
    receiver = accepted[0]
    original = receiver.dataReceived
    receiver.dataReceived = lambda data: (delivered.append(len(data)), original(data))  # type: ignore[method-assign]
    server.begin_batch()
    for piece in pieces:
        server.dataReceived(piece)
    assert delivered == []  # nothing parsed until the read is over
    server.connectionLost(Failure(error.ConnectionDone()))  # the close came in the same read
    assert sum(delivered) == 16 * 16384
    assert len(delivered) == 4  # one per frame, not one per record
    assert bytes(receiver.received) == b"".join(b"%04d" % i * 4096 for i in range(16))

"""The memory budget in process: what a stalled reader may cost, window growth only into room.

Two MuxProtocols over iosim share one ``BufferBudget`` (as all links of a gateway do). The
receiving stream's protocol plays a relay writing into a socket: a kernel send buffer of fixed
capacity that a reader drains (or not), and whatever does not fit stays in "user space" and pauses
the stream, as ``shield.reactor``'s eager transports do.
"""

from __future__ import annotations

import hashlib

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim

from shield.mux.budget import BufferBudget
from shield.mux.config import MuxConfig
from shield.mux.protocol import MuxProtocol
from shield.mux.stream import MuxStream

KiB = 1024
MiB = 1024 * KiB
BASE = 256 * KiB
CONFIG = MuxConfig(stream_window=BASE, max_stream_window=4 * MiB, keepalive_interval=0)


class SocketLikeConsumer(Protocol):
    """Writes what the stream delivers into a kernel buffer of ``capacity`` bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.kernel = 0
        self.user: list[bytes] = []
        self.read = 0
        self.digest = hashlib.sha256()

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)
        take = min(len(data), self.capacity - self.kernel)
        self.kernel += take
        if take < len(data):
            self.user.append(data[take:])
            self.transport.pauseProducing()  # a socket that keeps bytes pauses its producer

    def room(self) -> int:
        return self.capacity - self.kernel if not self.user else 0

    @property
    def user_bytes(self) -> int:
        return sum(map(len, self.user))

    def drain(self) -> None:
        """The reader reads everything the kernel holds."""
        self.read += self.kernel
        self.kernel = 0
        while self.user and self.kernel < self.capacity:
            chunk = self.user.pop(0)
            take = min(len(chunk), self.capacity - self.kernel)
            self.kernel += take
            if take < len(chunk):
                self.user.insert(0, chunk[take:])
        if not self.user:
            self.transport.resumeProducing()


class Source:
    """Writes a known pattern into a stream as a streaming producer, ``chunk`` bytes at a time."""

    def __init__(self, stream: MuxStream, chunk: int = 128 * KiB) -> None:
        self.stream = stream
        self.chunk = chunk
        self.paused = False
        self.produced = 0
        self.digest = hashlib.sha256()
        stream.registerProducer(self, True)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.paused = True

    def produce(self, limit: int) -> None:
        while not self.paused and self.produced < limit:
            block = bytes([self.produced // self.chunk % 251]) * self.chunk
            self.digest.update(block)
            self.produced += len(block)
            self.stream.write(block)


class Pair:
    def __init__(self, budget: BufferBudget, capacity: int, follow: bool = True) -> None:
        self.clock = MemoryReactorClock()
        self.budget = budget
        self.consumers: list[SocketLikeConsumer] = []
        pair = self

        class Accepting(Factory):
            def buildProtocol(self, addr: object) -> SocketLikeConsumer:
                consumer = SocketLikeConsumer(capacity)
                pair.consumers.append(consumer)
                return consumer

        self.sender = MuxProtocol(True, CONFIG, None, self.clock, budget)
        self.receiver = MuxProtocol(False, CONFIG, Accepting(), self.clock, budget)
        self.follow = follow
        self.pump = iosim.connect(
            self.receiver, iosim.FakeTransport(self.receiver, True),
            self.sender, iosim.FakeTransport(self.sender, False),
            greet=False, clock=self.clock,
        )  # fmt: skip

    def open(self) -> tuple[Source, SocketLikeConsumer, MuxStream]:
        stream = self.sender.open_stream(Protocol())
        self.settle()
        consumer = self.consumers[-1]
        receiving = consumer.transport
        assert isinstance(receiving, MuxStream)
        if self.follow:
            receiving.follow_consumer(consumer.room)
        return Source(stream), consumer, receiving

    def settle(self) -> None:
        for _ in range(1000):
            if not self.pump.pump():
                self.clock.advance(0)
                if not self.pump.pump():
                    return
        raise AssertionError("never settled")

    def run(self, source: Source, consumer: SocketLikeConsumer, limit: int, reading: bool) -> None:
        for _ in range(10_000):
            source.produce(limit)
            self.settle()
            if reading:
                consumer.drain()
                self.settle()
            if source.produced >= limit or (not reading and source.paused):
                self.settle()
                return
        raise AssertionError("did not finish")


def test_a_fast_reader_grows_its_window_into_kernel_room_and_a_stall_holds_at_most_the_base() -> None:
    budget = BufferBudget(64 * MiB)
    pair = Pair(budget, capacity=4 * MiB)
    source, consumer, receiving = pair.open()

    pair.run(source, consumer, 24 * MiB, reading=True)  # fast: reads everything at once
    grown = pair.receiver.session.window(receiving.stream_id)
    assert grown > BASE, "a reader that keeps up grows its window"
    assert budget.lent == grown - BASE

    pair.run(source, consumer, 200 * MiB, reading=False)  # the reader stops
    held_here = receiving.held
    assert consumer.user_bytes + receiving.buffered_inbound <= BASE, "at most the base window in user space"
    assert held_here <= BASE
    assert source.paused and source.produced < 40 * MiB  # the producer was held back
    assert budget.held == held_here + source.stream.buffered_outbound
    # The sender holds at most its high-water mark plus the chunk that crossed it: 256 KiB.
    assert source.stream.buffered_outbound <= CONFIG.write_buffer_high_water + source.chunk <= BASE

    for _ in range(1000):  # reading again: everything arrives, in order
        consumer.drain()
        pair.settle()
        source.produce(source.produced)
        if consumer.read + consumer.kernel == source.produced and not consumer.user and not receiving.buffered_inbound:
            break
    assert consumer.read + consumer.kernel == source.produced
    assert consumer.digest.hexdigest() == source.digest.hexdigest()


def test_without_kernel_room_the_window_never_grows() -> None:
    budget = BufferBudget(64 * MiB)
    pair = Pair(budget, capacity=4 * MiB, follow=False)  # the consumer cannot say how much room it has
    source, consumer, receiving = pair.open()
    pair.run(source, consumer, 16 * MiB, reading=True)
    assert pair.receiver.session.window(receiving.stream_id) == BASE
    assert budget.lent == 0
    pair.run(source, consumer, 100 * MiB, reading=False)
    assert receiving.held <= BASE


def test_growth_stays_within_the_budget_and_shrinks_back_when_it_is_short() -> None:
    budget = BufferBudget(1 * MiB)
    pair = Pair(budget, capacity=8 * MiB)
    source, consumer, receiving = pair.open()
    pair.run(source, consumer, 16 * MiB, reading=True)
    window = pair.receiver.session.window(receiving.stream_id)
    assert BASE < window <= BASE + budget.limit
    assert budget.held + budget.lent <= budget.limit + BASE + source.chunk

    # Another stream stalls and holds its data: the budget gets short, the grown window shrinks.
    stalled_source, stalled_consumer, stalled = pair.open()
    pair.run(stalled_source, stalled_consumer, 100 * MiB, reading=False)
    budget.limit = budget.held + 64 * KiB  # as a reload to a smaller budget would
    pair.run(source, consumer, source.produced + 8 * MiB, reading=True)
    assert pair.receiver.session.window(receiving.stream_id) == BASE
    assert budget.lent == 0


def test_the_budget_counts_to_zero_when_streams_end() -> None:
    budget = BufferBudget(64 * MiB)
    pair = Pair(budget, capacity=2 * MiB)
    source, consumer, receiving = pair.open()
    pair.run(source, consumer, 8 * MiB, reading=True)
    pair.run(source, consumer, 50 * MiB, reading=False)
    assert budget.held > 0
    source.stream.abortConnection()
    pair.settle()
    assert (budget.held, budget.lent) == (0, 0)


def test_exhausted_when_streams_hold_the_whole_budget() -> None:
    budget = BufferBudget(2 * BASE)
    assert not budget.exhausted
    pair = Pair(budget, capacity=64 * KiB)
    for _ in range(3):
        source, consumer, _ = pair.open()
        pair.run(source, consumer, 50 * MiB, reading=False)
    assert budget.exhausted
    assert budget.room_for_growth() == 0

"""ShieldReactor: eager socket writes, direct dispatch and the end-of-turn queue, on real sockets.

Each test runs a private ``ShieldReactor`` (never the global one) on 127.0.0.1 until its scenario
says it is done, with a deadline so a hang fails instead of blocking the suite.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import Callable

import pytest
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure

from shield.reactor import EagerTCPClient, EagerTCPServer, ShieldReactor, describe, install

DEADLINE = 30.0


def run(reactor: ShieldReactor, start: Callable[[], None]) -> None:
    """Run ``reactor`` until something calls ``reactor.stop()``; fail after the deadline."""
    timed_out: list[bool] = []

    def too_slow() -> None:
        timed_out.append(True)
        reactor.stop()

    reactor.callWhenRunning(start)
    watchdog = reactor.callLater(DEADLINE, too_slow)
    reactor.run(installSignalHandlers=False)
    if watchdog.active():
        watchdog.cancel()
    assert not timed_out, "the scenario did not finish within the deadline"


class Collect(Protocol):
    def __init__(self, want: int, done: Callable[["Collect"], None]) -> None:
        self.want = want
        self.done = done
        self.chunks: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size >= self.want:
            self.done(self)


class Sender(Protocol):
    def __init__(self, on_connect: Callable[["Sender"], None]) -> None:
        self.on_connect = on_connect

    def connectionMade(self) -> None:
        self.on_connect(self)


def pair(
    reactor: ShieldReactor, server: Callable[[], Protocol], client: Callable[[], Protocol]
) -> None:
    port = reactor.listenTCP(0, Factory.forProtocol(server), interface="127.0.0.1")
    factory = ClientFactory.forProtocol(client)
    reactor.connectTCP("127.0.0.1", port.getHost().port, factory)


def test_a_small_write_goes_out_without_a_reactor_turn() -> None:
    reactor = ShieldReactor()
    seen: dict[str, object] = {}

    def connected(sender: Sender) -> None:
        transport = sender.transport
        seen["class"] = type(transport)
        transport.write(b"hello")
        # Sent at once: nothing queued, no interest in writability registered.
        seen["queued"] = transport._tempDataLen + len(transport.dataBuffer) - transport.offset  # type: ignore[attr-defined]
        seen["writer"] = transport in reactor.getWriters()

    def received(collector: Collect) -> None:
        seen["data"] = b"".join(collector.chunks)
        seen["server_class"] = type(collector.transport)
        reactor.stop()

    run(reactor, lambda: pair(reactor, lambda: Collect(5, received), lambda: Sender(connected)))
    assert seen == {
        "class": EagerTCPClient,
        "queued": 0,
        "writer": False,
        "data": b"hello",
        "server_class": EagerTCPServer,
    }


def test_what_the_kernel_does_not_take_is_queued_and_arrives_in_order() -> None:
    """32 MiB in writes of mixed sizes while the reader is paused: the kernel takes part, the
    rest is queued by Twisted, and every byte arrives once, in order."""
    reactor = ShieldReactor()
    total = 32 * 1024 * 1024
    chunks = [os.urandom(size) for size in (1, 700, 65536, 1 << 20, 3)]
    payload: list[bytes] = []
    while sum(map(len, payload)) < total:
        payload.extend(chunks)
    expected = hashlib.sha256(b"".join(payload)).hexdigest()
    size = sum(map(len, payload))
    seen: dict[str, object] = {}
    receivers: list[Collect] = []

    def connected(sender: Sender) -> None:
        for chunk in payload:
            sender.transport.write(chunk)
        transport = sender.transport
        seen["queued_after_writes"] = transport._tempDataLen + len(transport.dataBuffer) - transport.offset > 0  # type: ignore[attr-defined]
        # Only now let the receiver read.
        reactor.callLater(0.05, lambda: [r.transport.resumeProducing() for r in receivers])

    def received(collector: Collect) -> None:
        seen["digest"] = hashlib.sha256(b"".join(collector.chunks)).hexdigest()
        seen["size"] = collector.size
        reactor.stop()

    def receiver() -> Collect:
        collector = Collect(size, received)
        original = collector.makeConnection

        def paused(transport: object) -> None:
            original(transport)  # type: ignore[arg-type]
            collector.transport.pauseProducing()

        collector.makeConnection = paused  # type: ignore[method-assign]
        receivers.append(collector)
        return collector

    run(reactor, lambda: pair(reactor, receiver, lambda: Sender(connected)))
    assert seen == {"queued_after_writes": True, "digest": expected, "size": size}


def test_a_write_to_a_reset_connection_is_reported_as_a_lost_connection() -> None:
    """The eager path must not raise at the writer: the error surfaces through Twisted."""
    reactor = ShieldReactor()
    seen: dict[str, object] = {}

    class Writer(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"first")

        def dataReceived(self, data: bytes) -> None:
            # The peer has aborted by now (it answered and reset): keep writing.
            for _ in range(50):
                self.transport.write(b"x" * 65536)

        def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
            seen["lost"] = reason.type.__name__
            reactor.stop()

    class Resetter(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(b"bye")
            self.transport.abortConnection()

    run(reactor, lambda: pair(reactor, Resetter, Writer))
    assert seen["lost"] in {"ConnectionLost", "ConnectionDone"}


def test_turn_end_calls_run_after_the_events_of_their_turn() -> None:
    reactor = ShieldReactor()
    order: list[str] = []

    class Reader(Protocol):
        def dataReceived(self, data: bytes) -> None:
            order.append("event")
            reactor.call_at_turn_end(lambda: order.append("turn end"))
            cancelled = reactor.call_at_turn_end(lambda: order.append("cancelled"))
            cancelled.cancel()
            assert not cancelled.active()
            order.append("event done")
            reactor.callLater(0.05, reactor.stop)

    def connected(sender: Sender) -> None:
        sender.transport.write(b"x")

    run(reactor, lambda: pair(reactor, Reader, lambda: Sender(connected)))
    assert order == ["event", "event done", "turn end"]


def test_a_turn_end_call_queued_by_a_timed_call_does_not_wait_for_an_event() -> None:
    """Queued outside a poll (from callLater), it runs at once, not when some socket next fires."""
    reactor = ShieldReactor()
    ran: list[float] = []
    start: list[float] = []

    def timed() -> None:
        start.append(reactor.seconds())
        reactor.call_at_turn_end(lambda: (ran.append(reactor.seconds()), reactor.stop()))

    run(reactor, lambda: reactor.callLater(0.01, timed))
    assert ran and ran[0] - start[0] < 5.0  # the deadline is 30 s: a blocked poll would show


def test_a_failing_turn_end_call_is_logged_and_the_others_still_run() -> None:
    from twisted.logger import globalLogPublisher

    reactor = ShieldReactor()
    ran: list[str] = []
    failures: list[dict[str, object]] = []

    def observe(event: dict[str, object]) -> None:
        if event.get("log_namespace") == "shield.reactor" and "log_failure" in event:
            failures.append(event)

    def boom() -> None:
        raise RuntimeError("boom")

    def queue() -> None:
        reactor.call_at_turn_end(boom)
        reactor.call_at_turn_end(lambda: (ran.append("after"), reactor.stop()))

    globalLogPublisher.addObserver(observe)
    try:
        run(reactor, lambda: reactor.callLater(0, queue))
    finally:
        globalLogPublisher.removeObserver(observe)
    assert ran == ["after"]
    assert len(failures) == 1


def test_install_leaves_an_installed_reactor_alone() -> None:
    assert "twisted.internet.reactor" in sys.modules  # the test run's own
    assert install() is False


@pytest.mark.parametrize(
    "reactor, words", [(ShieldReactor(), "eager socket writes"), (object(), "start without --reactor")]
)
def test_the_start_up_line_says_which_reactor_runs(reactor: object, words: str) -> None:
    assert words in describe(reactor)


"""The relay over two in-memory sockets: both directions, backpressure, half-close, ends.

Each end is a ``RelayedProtocol`` on a ``Pipe`` (a StringTransport that, like a socket transport,
pauses its registered producer once ``limit`` unread bytes wait in its send buffer, and resumes
it when they have been read). The relay registers each socket as the producer of the other, so a
reader that does not keep up stops the reading of the far socket.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address

from dmz_world_inprocess import Pipe
from shield.relay import ByteTally, Relay, RelayedProtocol


class Splice:
    def __init__(self, limit_a: int | None = None, limit_b: int | None = None) -> None:
        self.a = Pipe(IPv4Address("TCP", "198.51.100.7", 50000), limit_a)  # the client's socket
        self.b = Pipe(IPv4Address("TCP", "10.0.0.5", 7000), limit_b)  # the backend's socket
        self.pa, self.pb = RelayedProtocol(), RelayedProtocol()
        self.a.connect(self.pa)
        self.b.connect(self.pb)
        self.a_to_b, self.b_to_a = ByteTally(), ByteTally()
        self.finished: list[str] = []
        self.relay: Relay = self.pa.join(
            lambda side_a: self.pb.join(lambda side_b: Relay(side_a, side_b, self.a_to_b, self.b_to_a, self.finished.append))
        )

    def settle(self) -> None:
        while self.a.settle() | self.b.settle():
            pass


def test_bytes_go_both_ways_intact_in_order_and_are_counted() -> None:
    s = Splice()
    ups = [bytes([i % 256]) * (i + 1) for i in range(200)]
    downs = [f"<{i}>".encode() for i in range(300)]
    for up, down in zip(ups, downs):
        s.a.feed(up)
        s.b.feed(down)
    for down in downs[len(ups) :]:
        s.b.feed(down)
    assert s.b.read() == b"".join(ups)
    assert s.a.read() == b"".join(downs)
    assert (s.a_to_b.total, s.b_to_a.total) == (sum(map(len, ups)), sum(map(len, downs)))
    assert s.relay.moved() == s.a_to_b.total + s.b_to_a.total
    # Each socket is the producer of the other.
    assert s.b.producer is s.a and s.a.producer is s.b


def test_a_full_buffer_on_one_side_pauses_reading_on_the_other() -> None:
    s = Splice(limit_b=1000)
    fed = 0
    while s.a.producerState == "producing":
        s.a.feed(b"x" * 300)
        fed += 300
        assert fed < 10_000, "the writer was never paused"
    assert fed == 1200, "paused once the backend's buffer held its limit"
    assert s.b.unread == 1200

    # The other direction is not held up by it.
    s.b.feed(b"reply")
    assert s.a.read() == b"reply"

    # The backend reads: the client's socket is read again, and nothing was lost.
    assert s.b.read() == b"x" * 1200
    assert s.a.producerState == "producing"
    s.a.feed(b"y" * 10)
    assert s.b.read() == b"y" * 10


def test_backpressure_holds_both_ways_at_once() -> None:
    s = Splice(limit_a=500, limit_b=500)
    while s.a.producerState == "producing":
        s.a.feed(b"u" * 100)
    while s.b.producerState == "producing":
        s.b.feed(b"d" * 100)
    assert (s.a.producerState, s.b.producerState) == ("paused", "paused")
    assert s.a.read() == b"d" * 500
    assert s.b.producerState == "producing" and s.a.producerState == "paused"
    assert s.b.read() == b"u" * 500
    assert s.a.producerState == "producing"


def test_half_close_passes_eof_and_the_other_direction_goes_on() -> None:
    s = Splice()
    s.a.feed(b"request")
    s.a.feed_eof()  # the client has sent everything (shutdown SHUT_WR)
    assert s.b.read() == b"request"
    assert s.b.write_closed and not s.b.disconnecting
    assert s.finished == []

    s.b.feed(b"response, after the client's EOF")
    assert s.a.read() == b"response, after the client's EOF"
    s.b.feed_eof()
    s.settle()
    assert s.a.lost and s.b.lost
    assert not s.a.aborted and not s.b.aborted
    assert s.finished == ["both sides finished"]
    # Neither socket keeps the other as its producer (a socket would not finish its close).
    assert s.a.producer is None and s.b.producer is None


def test_an_abortive_end_aborts_the_other_side() -> None:
    s = Splice()
    s.a.feed(b"half a request")
    s.b.drop(clean=False)  # the backend reset the connection
    s.settle()
    assert s.a.aborted and s.a.lost
    (reason,) = s.finished
    assert "abort" in reason.lower()
    assert s.b.read() == b"half a request"


def test_a_clean_end_closes_the_other_side_cleanly_after_its_bytes() -> None:
    s = Splice()
    s.b.feed(b"last words")
    s.b.drop(clean=True)
    s.settle()
    assert s.a.read() == b"last words"
    assert s.a.lost and not s.a.aborted


def test_an_abort_after_eof_still_ends_the_other_side_cleanly() -> None:
    """Everything the side said before its EOF has been passed on: a reset would discard it."""
    s = Splice()
    s.b.feed(b"the whole answer")
    s.b.feed_eof()
    s.b.drop(clean=False)
    s.settle()
    assert s.a.read() == b"the whole answer"
    assert s.a.lost and not s.a.aborted


def test_bytes_that_arrived_before_the_join_go_first() -> None:
    a, b = Pipe(), Pipe()
    pa, pb = RelayedProtocol(), RelayedProtocol()
    a.connect(pa)
    b.connect(pb)
    pb.dataReceived(b"greeting ")  # a backend that speaks first, before the tunnel is joined
    pb.dataReceived(b"from the backend")
    pa.join(lambda side_a: pb.join(lambda side_b: Relay(side_a, side_b)))
    b.feed(b"; then more")
    assert a.read() == b"greeting from the backend; then more"

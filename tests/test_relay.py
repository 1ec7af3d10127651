"""The relay in process: bytes both ways, half-close, clean and abortive ends, producers let go."""

from __future__ import annotations

from dataclasses import dataclass, field

from shield.relay import ByteTally, Relay


@dataclass
class FakeConsumer:
    registered: list[object] = field(default_factory=list)
    unregistered: int = 0

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.registered.append(producer)

    def unregisterProducer(self) -> None:
        self.unregistered += 1


@dataclass
class FakeSide:
    name: str
    producer: object = field(default_factory=object)
    consumer: FakeConsumer = field(default_factory=FakeConsumer)
    sent: list[bytes] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def send_eof(self) -> None:
        self.events.append("eof")

    def close(self) -> None:
        self.events.append("close")

    def abort(self, reason: str) -> None:
        self.events.append(f"abort: {reason}")

    def room(self) -> int:
        return 0

    def follow(self, room: object) -> None:
        self.events.append("follow")


def relay() -> tuple[Relay, FakeSide, FakeSide, ByteTally, ByteTally, list[str]]:
    a, b = FakeSide("a"), FakeSide("b")
    up, down = ByteTally(), ByteTally()
    finished: list[str] = []
    return Relay(a, b, up, down, finished.append), a, b, up, down, finished


def test_bytes_go_across_and_are_counted_each_way() -> None:
    r, a, b, up, down, _ = relay()
    r.received(a, b"hello")
    r.received(b, b"world!")
    assert (b.sent, a.sent) == ([b"hello"], [b"world!"])
    assert (up.total, down.total, r.moved()) == (5, 6, 11)
    # Each side's producer feeds the other side's consumer.
    assert a.consumer.registered == [b.producer] and b.consumer.registered == [a.producer]


def test_half_close_then_both_eofs_close_both_sides() -> None:
    r, a, b, _, _, finished = relay()
    r.eof(a)
    assert b.events == ["follow", "eof"] and not finished
    r.received(b, b"late reply")
    assert a.sent == [b"late reply"]
    r.eof(b)
    assert "close" in a.events and "close" in b.events
    assert finished == ["both sides finished"]


def test_an_abortive_loss_aborts_the_other_side_with_the_reason() -> None:
    r, a, b, _, _, finished = relay()
    r.lost(b, clean=False, reason="connector link lost")
    assert a.events[-1] == "abort: connector link lost"
    assert finished == ["connector link lost"]
    r.received(a, b"too late")
    assert b.sent == []


def test_when_the_relay_ends_no_side_keeps_the_other_as_its_producer() -> None:
    """A socket that keeps a (paused) producer registered would not finish its close."""
    r, a, b, _, _, _ = relay()
    r.lost(a, clean=True, reason="closed")
    assert (a.consumer.unregistered, b.consumer.unregistered) == (1, 1)


def test_reports_after_the_end_change_nothing() -> None:
    """Once both directions finished, the sides' own losses (and a repeated EOF) are only late news."""
    r, a, b, _, _, finished = relay()
    r.eof(a)
    r.eof(a)
    assert b.events == ["follow", "eof"]
    r.eof(b)
    ends = (list(a.events), list(b.events))
    r.lost(a, clean=False, reason="reset")
    r.lost(b, clean=True, reason="closed")
    r.eof(b)
    assert (a.events, b.events) == ends, "nothing is closed, aborted or half-closed twice"
    assert finished == ["both sides finished"]
    assert (a.consumer.unregistered, b.consumer.unregistered) == (1, 1)
    r.received(a, b"late")
    assert b.sent == []

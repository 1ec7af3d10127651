"""The lifecycle pieces both gateways share, on a memory reactor: ``Once``, ``PortService``, the
grace period, the stop in reverse and the SIGTERM skeleton (shield/ops/)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dmz"))
from dmz_world_inprocess import RecordingReactor  # (the in-process DMZ world's test reactor)
from shield.config.model import Uri
from shield.ops.drain import within_grace
from shield.ops.lifecycle import stop_gateway, stop_in_reverse
from shield.ops.once import Once
from shield.ops.port import PortService


def outcome(deferred: Deferred[Any]) -> list[object]:
    seen: list[object] = []
    deferred.addBoth(seen.append)
    return seen


# -- Once ----------------------------------------------------------------------------------------


def test_once_fires_every_waiter_and_later_ones_at_once() -> None:
    once = Once()
    early, other = outcome(once.wait()), outcome(once.wait())
    assert early == [] and not once.happened
    once.succeed()
    assert early == [None] and other == [None] and once.happened
    assert outcome(once.wait()) == [None]
    once.fail(Failure(RuntimeError("too late")))  # it has happened: nothing changes
    assert outcome(once.wait()) == [None]


def test_once_that_fails_fails_each_waiter() -> None:
    once = Once()
    early = outcome(once.wait())
    once.follow(fail(CannotListenError("0.0.0.0", 80, OSError("in use"))))
    assert isinstance(early[0], Failure) and early[0].check(CannotListenError)
    late = outcome(once.wait())
    assert isinstance(late[0], Failure) and late[0].check(CannotListenError) and not once.happened


# -- PortService ---------------------------------------------------------------------------------


def port_service(reactor: RecordingReactor, port: int, said: list[str], after: Any = None) -> PortService:
    factory = Factory.forProtocol(Protocol)
    say = lambda: said.append(f"up {port}")  # noqa: E731
    uri = Uri("tcp", "127.0.0.1", port)
    if after is None:
        return PortService(cast(Any, reactor), [(uri, factory)], say)
    return PortService(cast(Any, reactor), [(uri, factory)], say, after)


def test_a_port_listens_once_what_it_comes_after_is_up_and_says_so() -> None:
    reactor, said = RecordingReactor(), []
    before: Deferred[None] = Deferred()
    port = port_service(reactor, 9100, said, lambda: before)
    started = outcome(port.when_started())
    port.startService()
    assert reactor.events == [] and started == []
    before.callback(None)
    assert reactor.events == ["listen 9100"] and said == ["up 9100"] and started == [None]


def test_a_port_that_cannot_listen_fails_its_start() -> None:
    reactor, said = RecordingReactor(), []
    reactor.refuse.add(9100)
    port = port_service(reactor, 9100, said)
    port.startService()
    (failure,) = outcome(port.when_started())
    assert isinstance(failure, Failure) and failure.check(CannotListenError)
    assert said == []


def test_a_port_closes_once_whether_the_drain_or_the_stop_comes_first() -> None:
    reactor, said = RecordingReactor(), []
    port = port_service(reactor, 9100, said)
    port.startService()
    assert outcome(port.close()) == [None]
    assert outcome(port.stopService()) == [None]
    assert reactor.events == ["listen 9100", "stop 9100"]


def test_a_port_closed_before_it_listened_does_not_stay_open() -> None:
    reactor, said = RecordingReactor(), []
    before: Deferred[None] = Deferred()
    port = port_service(reactor, 9100, said, lambda: before)
    port.startService()
    port.close()
    before.callback(None)
    assert reactor.events == ["listen 9100", "stop 9100"] and said == []


# -- stopping ------------------------------------------------------------------------------------


class Part(Service):
    def __init__(self, name: str, events: list[str], stopping: Deferred[None] | None = None, broken: bool = False) -> None:
        self.name = name
        self.events = events
        self.stopping = stopping
        self.broken = broken

    def stopService(self) -> Deferred[None] | None:
        self.events.append(f"stop {self.name}")
        if self.broken:
            raise RuntimeError("cannot stop")
        return self.stopping


def test_stop_in_reverse_waits_for_each_part_before_the_one_started_before_it() -> None:
    events: list[str] = []
    slow: Deferred[None] = Deferred()
    parts = [Part("admin", events), Part("member", events, broken=True), Part("public", events, slow)]
    stopped = outcome(stop_in_reverse(parts))
    assert events == ["stop public"] and stopped == []
    slow.callback(None)
    assert events == ["stop public", "stop member", "stop admin"], "a failed stop does not stop the rest"
    assert stopped == [None]


def test_within_grace_fires_with_the_closing_and_cancels_its_timer() -> None:
    clock = MemoryReactorClock()
    closing: Deferred[None] = Deferred()
    expired: list[str] = []
    done = outcome(within_grace(closing, 30.0, clock, lambda: expired.append("cut")))
    clock.advance(10.0)
    closing.callback(None)
    assert done == [None] and expired == [] and clock.getDelayedCalls() == []


def test_within_grace_cuts_what_is_left_when_the_grace_period_ends() -> None:
    clock = MemoryReactorClock()
    closing: Deferred[None] = Deferred()
    done = outcome(within_grace(closing, 30.0, clock, lambda: closing.callback(None)))
    clock.advance(29.9)
    assert done == []
    clock.advance(0.1)
    assert done == [None]


@pytest.mark.parametrize("drained", [True, False])
def test_stop_gateway_drains_then_stops_the_rest_then_exits_cleanly(drained: bool) -> None:
    reactor = MemoryReactorClock()
    reactor._exitSignal = signal.SIGTERM  # type: ignore[attr-defined]  # what twistd would re-raise
    events: list[str] = []
    draining: Deferred[None] = Deferred()
    stopped = outcome(stop_gateway(cast(Any, reactor), lambda: draining, lambda: succeed(events.append("rest"))))
    assert events == [] and stopped == []
    if drained:
        draining.callback(None)
        assert events == ["rest"] and stopped == [None]
        assert reactor._exitSignal is None  # type: ignore[attr-defined]  # exit 0, not 'killed by SIGTERM'
    else:
        assert reactor._exitSignal == signal.SIGTERM  # type: ignore[attr-defined]  # still draining

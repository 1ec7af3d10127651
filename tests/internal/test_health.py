"""Backend health: the rise/fall counter (sans-IO, hypothesis) and the monitor's checks (in process).

The counter is the whole policy: an up backend goes down only after ``fall`` failures in a row,
a down one comes back only after ``rise`` successes in a row. The monitor runs real checks
against real listening sockets on 127.0.0.1 with a fake clock driving its timer.
"""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol

from shield.config.model import InternalService, Uri
from shield.internal.health import BackendMonitor, Health, HealthBoard, HealthCounter, Transition


# -- the counter ----------------------------------------------------------------------------------


def reference(rise: int, fall: int, results: list[bool]) -> list[Health]:
    """The state after each result, computed the slow and obvious way: the last run of equal
    results decides, once it is long enough."""
    states = []
    state = Health.UP
    for index in range(len(results)):
        run = 0
        for earlier in reversed(results[: index + 1]):
            if earlier != results[index]:
                break
            run += 1
        if state is Health.UP and not results[index] and run >= fall:
            state = Health.DOWN
        elif state is Health.DOWN and results[index] and run >= rise:
            state = Health.UP
        states.append(state)
    return states


@given(st.integers(1, 5), st.integers(1, 5), st.lists(st.booleans(), max_size=60))
def test_the_counter_follows_rise_and_fall_exactly(rise: int, fall: int, results: list[bool]) -> None:
    counter = HealthCounter(rise, fall)
    transitions: list[Transition] = []
    states = []
    for ok in results:
        transition = counter.record(ok, "check")
        if transition is not None:
            transitions.append(transition)
        states.append(counter.state)
    assert states == reference(rise, fall, results)
    # Every transition is a real change, and changes alternate.
    assert all(a.to != b.to for a, b in zip(transitions, transitions[1:]))
    assert all(t.streak == (rise if t.to is Health.UP else fall) for t in transitions)


@given(st.integers(2, 5), st.integers(2, 5), st.integers(1, 200))
def test_a_backend_that_alternates_never_flaps(rise: int, fall: int, n: int) -> None:
    counter = HealthCounter(rise, fall)
    assert all(counter.record(i % 2 == 0, "check") is None for i in range(n))
    assert counter.state is Health.UP


def test_rise_and_fall_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HealthCounter(0, 3)


# -- the monitor, against real sockets -----------------------------------------------------------


def service(port: int, **health: object) -> InternalService:
    base = InternalService(
        name="echo", connect=Uri("tcp", "127.0.0.1", port), health_interval=0.05, health_timeout=1.0,
        health_rise=2, health_fall=2,
    )  # fmt: skip
    return replace(base, **health)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Recorder:
    def __init__(self) -> None:
        self.up: dict[str, bool] = {}
        self.changes: list[tuple[str, bool]] = []

    def set_up(self, service: str, up: bool) -> None:
        self.up[service] = up

    def transition(self, service: str, up: bool) -> None:
        self.up[service] = up
        self.changes.append((service, up))

    def forget(self, service: str) -> None:
        self.up.pop(service, None)


def wait(condition, seconds: float = 10.0) -> defer.Deferred:  # type: ignore[no-untyped-def]
    """Poll ``condition`` on the real reactor."""
    from twisted.internet.task import deferLater

    @defer.inlineCallbacks
    def loop():  # type: ignore[no-untyped-def]
        deadline = reactor.seconds() + seconds
        while not condition():
            assert reactor.seconds() < deadline, "condition not met in time"
            yield deferLater(reactor, 0.02, lambda: None)

    return loop()


@pytest_twisted.inlineCallbacks
def test_a_refusing_backend_goes_down_and_comes_back_when_it_listens() -> None:
    port = free_port()
    metrics = Recorder()
    announcements: list[tuple[str, ...]] = []
    board = HealthBoard((service(port),), reactor, metrics, lambda: announcements.append(board.up_services()))
    board.start()
    try:
        yield wait(lambda: metrics.changes == [("echo", False)])
        assert board.up_services() == ()
        assert "connection refused" in board.problems()[0]
        listening = reactor.listenTCP(port, Factory.forProtocol(Protocol), interface="127.0.0.1")
        try:
            yield wait(lambda: metrics.changes == [("echo", False), ("echo", True)])
            assert board.up_services() == ("echo",)
            assert board.problems() == []
            yield wait(lambda: announcements == [(), ("echo",)])
        finally:
            yield listening.stopListening()
    finally:
        board.stop()


@pytest_twisted.inlineCallbacks
def test_http_checks_need_the_expected_status() -> None:
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Status(Resource):
        isLeaf = True
        code = 500

        def render_GET(self, request):  # type: ignore[no-untyped-def]
            request.setResponseCode(self.code)
            return b"ok"

    resource = Status()
    listening = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    port = listening.getHost().port
    metrics = Recorder()
    board = HealthBoard(
        (service(port, health_check="http", health_path="/healthz", health_status=204),), reactor, metrics, lambda: None
    )
    board.start()
    try:
        yield wait(lambda: metrics.changes == [("echo", False)])
        assert "GET /healthz answered 500, expected 204" in board.problems()[0]
        resource.code = 204
        yield wait(lambda: metrics.changes == [("echo", False), ("echo", True)])
    finally:
        board.stop()
        yield listening.stopListening()


def test_passive_evidence_counts_like_checks() -> None:
    metrics = Recorder()
    board = HealthBoard((service(1, health_fall=3),), reactor, metrics, lambda: None)  # not started
    for _ in range(2):
        board.observe("echo", False, "a client's connection failed: connection refused")
    assert board.up_services() == ("echo",)
    board.observe("echo", False, "a client's connection failed: connection refused")
    assert board.up_services() == ()
    assert metrics.changes == [("echo", False)]


def test_health_off_always_offers_and_ignores_evidence() -> None:
    metrics = Recorder()
    board = HealthBoard((service(1, health_check="off"),), reactor, metrics, lambda: None)
    for _ in range(10):
        board.observe("echo", False, "refused")
    assert board.up_services() == ("echo",)
    assert metrics.changes == []


def test_a_reload_keeps_the_state_and_removes_what_is_gone() -> None:
    metrics = Recorder()
    a, b = service(1), replace(service(2), name="other")
    board = HealthBoard((a, b), reactor, metrics, lambda: None)
    for _ in range(2):
        board.observe("echo", False, "refused")
    board.reconfigure((replace(a, health_rise=5),))
    assert board.up_services() == ()  # still down, with its new settings
    assert board.monitors["echo"].service.health_rise == 5
    assert "other" not in board.monitors and "other" not in metrics.up


def test_monitors_do_not_exist_for_nothing() -> None:
    assert BackendMonitor(service(1), reactor, lambda s, t: None).up

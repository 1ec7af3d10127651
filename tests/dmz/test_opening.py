"""Opening a tunnel, in process: the router's order, and trying another connector before failing.

Each connector is a MuxProtocol over iosim whose streams answer OPEN from a script, so every
case is deterministic: a connector whose backend refuses, hangs or is unknown is skipped for the
next one by priority and load; the client's error names every connector tried.
"""

from __future__ import annotations

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim

from shield.dmz.links import ConnectorLink, LinkRegistry
from shield.dmz.tunnel import OpenFailed, TunnelOpener, TunnelStream
from shield.link.wire import MessageReader, OpenReply, OpenRequest, OpenStatus, encode
from shield.mux.config import MuxConfig
from shield.mux.protocol import MuxProtocol

CONFIG = MuxConfig(keepalive_interval=0)


class ScriptedStream(Protocol):
    """The connector's end of one stream: answers OPEN with ``status`` (None: never answers)."""

    def __init__(self, status: OpenStatus | None, seen: list[str]) -> None:
        self.status = status
        self.seen = seen
        self.reader = MessageReader((OpenRequest,))

    def dataReceived(self, data: bytes) -> None:
        request, _ = self.reader.feed(data)
        if request is None:
            return
        self.seen.append(request.service)
        if self.status is None:
            return
        reason = "" if self.status == OpenStatus.OK else f"backend of {request.service!r}: {self.status.name.lower()}"
        self.transport.write(encode(OpenReply(self.status, reason)))


class World:
    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.registry = LinkRegistry()
        self.opener = TunnelOpener(self.registry, self.clock)
        self.pumps: list[iosim.IOPump] = []
        self.seen: dict[str, list[str]] = {}

    def connector(self, name: str, priority: int, status: OpenStatus | None, links: int = 1) -> None:
        seen = self.seen.setdefault(name, [])
        for _ in range(links):

            class Answering(Factory):
                def buildProtocol(self, addr: object) -> Protocol:
                    return ScriptedStream(status, seen)

            dmz_side = MuxProtocol(False, CONFIG, None, self.clock)
            connector_side = MuxProtocol(True, CONFIG, Answering(), self.clock)
            self.pumps.append(
                iosim.connect(
                    dmz_side, iosim.FakeTransport(dmz_side, True), connector_side,
                    iosim.FakeTransport(connector_side, False), greet=False, clock=self.clock,
                )  # fmt: skip
            )
            self.registry.add(ConnectorLink(dmz_side, name, "127.0.0.1:1", priority, frozenset({"echo"})))

    def open(self, timeout: float = 10.0) -> TunnelStream | OpenFailed:
        outcome: list[object] = []
        opening = self.opener.open("echo", "198.51.100.7:4000", (), timeout)
        opening.addBoth(outcome.append)
        for _ in range(50):
            for pump in self.pumps:
                pump.pump()
            self.clock.advance(0)
            if outcome:
                break
        if not outcome:
            self.clock.advance(timeout)
            for pump in self.pumps:
                pump.pump()
        (result,) = outcome
        if isinstance(result, Failure):
            assert isinstance(result.value, OpenFailed), result
            return result.value
        assert isinstance(result, TunnelStream)
        return result


def test_a_refusing_backend_behind_the_active_connector_costs_the_client_nothing() -> None:
    world = World()
    world.connector("internal1", 200, OpenStatus.BACKEND_REFUSED, links=2)
    world.connector("internal2", 100, OpenStatus.OK)
    tunnel = world.open()
    assert isinstance(tunnel, TunnelStream)
    assert tunnel.link.connector == "internal2"
    # One try of internal1 (not one per link: its backend is the same), then internal2.
    assert world.seen == {"internal1": ["echo"], "internal2": ["echo"]}


def test_equal_priorities_skip_the_broken_connector() -> None:
    world = World()
    world.connector("internal1", 100, OpenStatus.BACKEND_UNREACHABLE)
    world.connector("internal2", 100, OpenStatus.OK)
    world.connector("internal3", 100, OpenStatus.BACKEND_TIMEOUT)
    for _ in range(6):
        tunnel = world.open()
        assert isinstance(tunnel, TunnelStream) and tunnel.link.connector == "internal2"


def test_when_no_connector_reaches_a_backend_the_error_names_each() -> None:
    world = World()
    world.connector("internal1", 200, OpenStatus.BACKEND_REFUSED)
    world.connector("internal2", 100, OpenStatus.BACKEND_TIMEOUT)
    problem = world.open()
    assert isinstance(problem, OpenFailed)
    assert problem.status == 502
    assert problem.label == "no_backend"
    assert "no connector could serve 'echo'" in problem.reason
    assert "connector 'internal1': backend of 'echo': backend_refused" in problem.reason
    assert "connector 'internal2': backend of 'echo': backend_timeout" in problem.reason


def test_a_single_connector_s_refusal_is_passed_on_as_it_was() -> None:
    world = World()
    world.connector("internal1", 100, OpenStatus.BACKEND_REFUSED)
    problem = world.open()
    assert isinstance(problem, OpenFailed)
    assert (problem.status, problem.label) == (502, "backend_refused")


def test_the_open_timeout_bounds_every_try_together() -> None:
    """A connector that never answers uses the whole deadline: 504, and no second try after it."""
    world = World()
    world.connector("internal1", 200, None)
    world.connector("internal2", 100, OpenStatus.OK)
    problem = world.open(timeout=5.0)
    assert isinstance(problem, OpenFailed)
    assert problem.status == 504
    assert world.seen["internal2"] == []

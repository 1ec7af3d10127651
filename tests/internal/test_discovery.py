"""Discovery by DNS: re-resolving backplane ``connect`` hosts, sans-IO (a fake resolver and a Clock).

First ``Discovery`` on its own (what it reports, when it looks up, what it logs), then the
connector (``InternalGateway``) driving its pool from it, on a ``MemoryReactorClock``: no socket,
no thread, no DNS.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from shield.config.model import InternalBackplane, InternalConfig, InternalService, Uri
from shield.dns import UNRESOLVED_RETRY, Change, Discovery, describe_lookup_failure, resolve
from shield.internal.gateway import InternalGateway

NXDOMAIN = socket.gaierror(socket.EAI_NONAME, "Name or service not known")


class FakeResolver:
    """Answers with ``answer`` (a list of addresses, or an exception to fail with); counts calls.

    With ``hold`` set, look-ups return Deferreds the test fires itself (``pending``).
    """

    def __init__(self, answer: list[str] | BaseException) -> None:
        self.answer = answer
        self.calls = 0
        self.hold = False
        self.pending: list[Deferred[list[str]]] = []

    def __call__(self) -> Deferred[list[str]]:
        self.calls += 1
        if self.hold:
            waiting: Deferred[list[str]] = Deferred()
            self.pending.append(waiting)
            return waiting
        if isinstance(self.answer, BaseException):
            return fail(self.answer)
        return succeed(list(self.answer))


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """The formatted lines shield.internal and shield.dns logged during the test, with their level."""
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        if str(event.get("log_namespace", "")).startswith(("shield.internal", "shield.dns")):
            lines.append(f"{event['log_level'].name}: {formatEvent(event)}")

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def follow(
    resolver: FakeResolver, interval: float = 30.0, clock: Clock | None = None
) -> tuple[Discovery, list[Change], Clock]:
    clock = clock or Clock()
    changes: list[Change] = []
    discovery = Discovery("dmz.example", resolver, clock, interval, changes.append, where="connect tls://dmz.example:5941")
    return discovery, changes, clock


# -- Discovery ---------------------------------------------------------------------------------


def test_the_first_answer_reports_every_address() -> None:
    resolver = FakeResolver(["10.0.0.1", "10.0.0.2"])
    discovery, changes, _ = follow(resolver)
    started = discovery.start()
    assert started.called
    assert changes == [Change(added=("10.0.0.1", "10.0.0.2"), removed=(), addresses=("10.0.0.1", "10.0.0.2"), first=True)]
    assert discovery.resolved and discovery.addresses == ("10.0.0.1", "10.0.0.2")


def test_looks_up_again_every_interval_and_reports_only_changes() -> None:
    resolver = FakeResolver(["10.0.0.1", "10.0.0.2"])
    discovery, changes, clock = follow(resolver, interval=30.0)
    discovery.start()
    clock.advance(29.9)
    assert resolver.calls == 1
    clock.advance(0.1)
    assert resolver.calls == 2
    assert len(changes) == 1  # unchanged: nothing reported

    resolver.answer = ["10.0.0.2", "10.0.0.1", "10.0.0.3"]  # order does not matter; .3 is new
    clock.advance(30.0)
    assert changes[-1] == Change(
        added=("10.0.0.3",), removed=(), addresses=("10.0.0.2", "10.0.0.1", "10.0.0.3"), first=False
    )

    resolver.answer = ["10.0.0.3"]
    clock.advance(30.0)
    assert changes[-1] == Change(added=(), removed=("10.0.0.2", "10.0.0.1"), addresses=("10.0.0.3",), first=False)

    resolver.answer = ["10.0.0.4"]  # one answer can add and remove
    clock.advance(30.0)
    assert changes[-1] == Change(added=("10.0.0.4",), removed=("10.0.0.3",), addresses=("10.0.0.4",), first=False)
    assert resolver.calls == 5 and len(changes) == 4


def test_repeated_addresses_in_one_answer_count_once() -> None:
    resolver = FakeResolver(["10.0.0.1", "10.0.0.1", "::1", "10.0.0.1"])
    discovery, changes, _ = follow(resolver)
    discovery.start()
    assert changes[0].added == ("10.0.0.1", "::1")


def test_a_failed_look_up_keeps_the_addresses_and_warns_once_per_streak(logged: list[str]) -> None:
    resolver = FakeResolver(["10.0.0.1", "10.0.0.2"])
    discovery, changes, clock = follow(resolver, interval=30.0)
    discovery.start()

    resolver.answer = NXDOMAIN
    for _ in range(4):
        clock.advance(30.0)
    assert resolver.calls == 5  # still every interval, not faster
    assert discovery.addresses == ("10.0.0.1", "10.0.0.2")
    assert len(changes) == 1  # nothing removed
    assert discovery.failure == "Name or service not known" and discovery.failures == 4
    warnings = [line for line in logged if line.startswith("warn")]
    assert warnings == [
        "warn: connect tls://dmz.example:5941: host dmz.example does not resolve: Name or service not known;"
        " keeping 10.0.0.1, 10.0.0.2; looking up again every 30 s"
    ]

    resolver.answer = ["10.0.0.1", "10.0.0.2"]
    clock.advance(30.0)
    assert discovery.failure is None
    assert logged[-1] == (
        "info: connect tls://dmz.example:5941: host dmz.example resolves again after 4 failed look-ups:"
        " 10.0.0.1, 10.0.0.2"
    )
    assert len(changes) == 1  # the same addresses: nothing to report

    resolver.answer = OSError("resolver thread died")  # a new streak: a new warning
    clock.advance(30.0)
    clock.advance(30.0)
    assert len([line for line in logged if line.startswith("warn")]) == 2
    assert "resolver thread died" in logged[-1]


def test_an_empty_answer_is_a_failure_not_a_removal() -> None:
    resolver = FakeResolver(["10.0.0.1"])
    discovery, changes, clock = follow(resolver)
    discovery.start()
    resolver.answer = []
    clock.advance(30.0)
    assert discovery.addresses == ("10.0.0.1",) and discovery.failure == "no addresses"
    assert len(changes) == 1


def test_a_host_that_does_not_resolve_at_start_is_retried_sooner(logged: list[str]) -> None:
    resolver = FakeResolver(NXDOMAIN)
    discovery, changes, clock = follow(resolver, interval=30.0)
    started = discovery.start()
    assert started.called  # the start is not held up (nor failed) by DNS
    assert not discovery.resolved and changes == []
    assert logged == [
        "warn: connect tls://dmz.example:5941: host dmz.example does not resolve: Name or service not known;"
        " no endpoints yet; retrying every 5 s"
    ]
    clock.advance(UNRESOLVED_RETRY)
    clock.advance(UNRESOLVED_RETRY)
    assert resolver.calls == 3 and len(logged) == 1

    resolver.answer = ["10.0.0.1"]
    clock.advance(UNRESOLVED_RETRY)
    assert changes == [Change(added=("10.0.0.1",), removed=(), addresses=("10.0.0.1",), first=True)]
    clock.advance(UNRESOLVED_RETRY)
    assert resolver.calls == 4  # resolved: back to every 30 s
    clock.advance(30.0 - UNRESOLVED_RETRY)
    assert resolver.calls == 5


def test_the_retry_before_the_first_answer_is_never_longer_than_the_interval() -> None:
    resolver = FakeResolver(NXDOMAIN)
    discovery, _, clock = follow(resolver, interval=2.0)
    discovery.start()
    clock.advance(2.0)
    assert resolver.calls == 2


def test_interval_zero_resolves_once() -> None:
    resolver = FakeResolver(["10.0.0.1"])
    discovery, changes, clock = follow(resolver, interval=0.0)
    discovery.start()
    clock.advance(3600.0)
    assert resolver.calls == 1 and len(changes) == 1
    assert clock.getDelayedCalls() == []


def test_interval_zero_still_retries_until_the_first_answer() -> None:
    resolver = FakeResolver(NXDOMAIN)
    discovery, changes, clock = follow(resolver, interval=0.0)
    discovery.start()
    clock.advance(UNRESOLVED_RETRY)
    resolver.answer = ["10.0.0.1"]
    clock.advance(UNRESOLVED_RETRY)
    assert resolver.calls == 3 and changes[0].first
    clock.advance(3600.0)
    assert resolver.calls == 3


def test_stop_cancels_the_next_look_up() -> None:
    resolver = FakeResolver(["10.0.0.1"])
    discovery, _, clock = follow(resolver)
    discovery.start()
    assert len(clock.getDelayedCalls()) == 1
    discovery.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(3600.0)
    assert resolver.calls == 1


def test_a_slow_look_up_never_overlaps_the_next_and_stop_ignores_its_answer() -> None:
    resolver = FakeResolver(["10.0.0.1"])
    resolver.hold = True
    discovery, changes, clock = follow(resolver, interval=1.0)
    started = discovery.start()
    clock.advance(60.0)
    assert resolver.calls == 1 and not started.called  # waiting for the answer, not piling up
    resolver.pending[0].callback(["10.0.0.1"])
    assert started.called and len(changes) == 1
    clock.advance(1.0)
    assert resolver.calls == 2

    discovery.stop()  # while the second look-up is in flight
    resolver.pending[1].callback(["10.0.0.9"])
    assert len(changes) == 1 and discovery.addresses == ("10.0.0.1",)
    assert clock.getDelayedCalls() == []


def test_a_resolver_that_raises_is_a_failed_look_up() -> None:
    def broken() -> Deferred[list[str]]:
        raise RuntimeError("no thread pool")

    clock = Clock()
    discovery = Discovery("dmz.example", broken, clock, 30.0, lambda change: None)
    discovery.start()
    assert discovery.failure == "no thread pool"
    assert len(clock.getDelayedCalls()) == 1


def test_a_failing_callback_does_not_stop_the_look_ups(logged: list[str]) -> None:
    def explode(change: Change) -> None:
        raise ValueError("bug")

    resolver = FakeResolver(["10.0.0.1"])
    clock = Clock()
    discovery = Discovery("dmz.example", resolver, clock, 30.0, explode)
    discovery.start()
    clock.advance(30.0)
    assert resolver.calls == 2
    assert any(line.startswith("critical") and "applying the new addresses" in line for line in logged)


def test_lookup_failures_are_described_without_errno() -> None:
    from twisted.python.failure import Failure

    assert describe_lookup_failure(Failure(NXDOMAIN)) == "Name or service not known"
    assert describe_lookup_failure(Failure(LookupError("no addresses"))) == "no addresses"


def test_ip_literals_resolve_to_themselves_without_a_look_up() -> None:
    assert resolve(Uri("tls", "10.1.2.3", 5941)).result == ["10.1.2.3"]  # type: ignore[attr-defined]
    assert resolve(Uri("tls", "::1", 5941)).result == ["::1"]  # type: ignore[attr-defined]


# -- the connector's pool following DNS ---------------------------------------------------------


class GatewayResolver:
    """A resolver for the gateway: host name -> answer (list or exception); counts calls per host."""

    def __init__(self, answers: dict[str, list[str] | BaseException]) -> None:
        self.answers = answers
        self.calls: dict[str, int] = {}

    def __call__(self, uri: Uri) -> Deferred[list[str]]:
        self.calls[uri.host] = self.calls.get(uri.host, 0) + 1
        answer = self.answers[uri.host]
        if isinstance(answer, BaseException):
            return fail(answer)
        return succeed(list(answer))


class FakeMux:
    """Stands in for the mux of a link that is up: records GoAway, closes when told."""

    def __init__(self) -> None:
        self.transport: object | None = object()
        self.went_away = False
        self.closed: Deferred[str] = Deferred()
        self.streams: dict[int, object] = {}
        self.is_open = True

    def go_away(self) -> Deferred[str]:
        self.went_away = True
        return self.closed


class FakeLink:
    """Stands in for a ``ConnectorLinkEnd`` whose DMZ accepted it."""

    def __init__(self) -> None:
        self.mux = FakeMux()
        self.tunnels = 0

    @property
    def went_away(self) -> bool:
        return self.mux.went_away


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shield.tls.devcerts import generate_dev_certs

    folder = tmp_path_factory.mktemp("certs")
    generate_dev_certs(folder, ["dmz1"], ["internal1"])
    return folder


def connector(
    certs: Path, resolver: GatewayResolver, *hosts: str, links: int = 2, interval: float = 30.0
) -> tuple[InternalGateway, MemoryReactorClock]:
    config = InternalConfig(
        name="internal1",
        backplane=InternalBackplane(
            connect=tuple(Uri("tls", host, 5941) for host in hosts),
            server_name="dmz1",
            cert=certs / "internal1.pem",
            ca=certs / "ca.pem",
            links=links,
            resolve_interval=interval,
        ),
        services=(InternalService("echo", Uri("tcp", "127.0.0.1", 7000), health_check="off"),),  # only backplane dials here
        grace_period=5.0,
    )
    reactor = MemoryReactorClock()
    gateway = InternalGateway(config, reactor, resolver=resolver)
    gateway.startService()
    return gateway, reactor


def dialled(reactor: MemoryReactorClock) -> list[tuple[str, int]]:
    return [(host, port) for host, port, *_ in reactor.tcpClients]


def links_up(gateway: InternalGateway, label: str) -> float | None:
    return gateway.metrics.registry.get_sample_value("shield_links_up", {"endpoint": label})


def bring_up(gateway: InternalGateway, label: str) -> list[FakeLink]:
    """Pretend every slot of ``label`` has an announced link."""
    links = []
    for slot in gateway.endpoints[label].slots:
        link = FakeLink()
        slot._current = link  # type: ignore[assignment]  # as if the slot's reconnecting client had dialled it
        slot.link_up(link)  # type: ignore[arg-type]
        links.append(link)
    return links


def test_the_pool_follows_the_addresses_of_a_connect_host(certs: Path, logged: list[str]) -> None:
    resolver = GatewayResolver({"dmz.example": ["10.0.0.1"]})
    gateway, reactor = connector(certs, resolver, "dmz.example", links=2)
    assert list(gateway.endpoints) == ["10.0.0.1:5941"]
    assert dialled(reactor) == [("10.0.0.1", 5941)] * 2
    old = bring_up(gateway, "10.0.0.1:5941")
    assert links_up(gateway, "10.0.0.1:5941") == 2
    assert gateway.readiness() == (True, [])

    # A DMZ member joins: links to it, a series for it, one line.
    resolver.answers["dmz.example"] = ["10.0.0.1", "10.0.0.2"]
    reactor.advance(30.0)
    assert list(gateway.endpoints) == ["10.0.0.1:5941", "10.0.0.2:5941"]
    assert dialled(reactor)[2:] == [("10.0.0.2", 5941)] * 2
    assert links_up(gateway, "10.0.0.2:5941") == 0
    assert gateway.readiness() == (False, ["endpoint 10.0.0.2:5941: no live link"])
    assert [line for line in logged if "added" in line] == [
        "info: connector internal1: endpoint 10.0.0.2:5941 added (host dmz.example now resolves to 10.0.0.1, 10.0.0.2)"
    ]
    bring_up(gateway, "10.0.0.2:5941")

    # The first member leaves: GoAway on its links, its series goes, readiness forgets it.
    resolver.answers["dmz.example"] = ["10.0.0.2"]
    reactor.advance(30.0)
    assert list(gateway.endpoints) == ["10.0.0.2:5941"]
    assert all(link.went_away for link in old)
    assert links_up(gateway, "10.0.0.1:5941") is None
    assert gateway.readiness() == (True, [])
    assert [line for line in logged if "removed" in line] == [
        "info: connector internal1: endpoint 10.0.0.1:5941 removed (host dmz.example now resolves to 10.0.0.2);"
        " draining its 2 links"
    ]
    retired = [slot for slot in gateway.slots if slot.endpoint == "10.0.0.1:5941"]
    assert len(retired) == 2 and gateway.retiring == set(retired)  # still draining: open tunnels finish

    # Their links close once their tunnels are done: no redial, no series comes back.
    for slot, link in zip(retired, old):
        link.mux.transport = None
        link.mux.is_open = False
        slot.link_lost(link, 60.0, "closed after GoAway")  # type: ignore[arg-type]
        link.mux.closed.callback("closed after GoAway")
    assert gateway.retiring == set()
    assert len(dialled(reactor)) == 4
    assert links_up(gateway, "10.0.0.1:5941") is None
    assert reactor.getDelayedCalls() and all(call.getTime() == 90.0 for call in reactor.getDelayedCalls())


def test_one_address_behind_two_connect_hosts_gets_one_set_of_slots(certs: Path, logged: list[str]) -> None:
    resolver = GatewayResolver({"dmz.example": ["10.0.0.1"], "alias.example": ["10.0.0.1", "10.0.0.1"]})
    gateway, reactor = connector(certs, resolver, "dmz.example", "alias.example", links=3)
    assert list(gateway.endpoints) == ["10.0.0.1:5941"]
    assert len(gateway.slots) == 3 and len(dialled(reactor)) == 3

    # alias moves away: 10.0.0.1 stays, dmz.example still leads there.
    resolver.answers["alias.example"] = ["10.0.0.5"]
    reactor.advance(30.0)
    assert list(gateway.endpoints) == ["10.0.0.1:5941", "10.0.0.5:5941"]
    assert not gateway.retiring and not any("removed" in line for line in logged)

    # dmz.example moves to alias's address: 10.0.0.1 goes, 10.0.0.5 is not doubled.
    resolver.answers["dmz.example"] = ["10.0.0.5"]
    reactor.advance(30.0)
    assert list(gateway.endpoints) == ["10.0.0.5:5941"]
    assert len(gateway.endpoints["10.0.0.5:5941"].slots) == 3
    assert len(dialled(reactor)) == 6
    assert sum("removed" in line for line in logged) == 1


def test_a_connector_whose_host_does_not_resolve_starts_and_says_why(certs: Path, logged: list[str]) -> None:
    resolver = GatewayResolver({"dmz.example": NXDOMAIN, "10.0.0.7": ["10.0.0.7"]})
    gateway, reactor = connector(certs, resolver, "dmz.example", "10.0.0.7", links=1)
    assert gateway._started is not None and gateway._started.called  # not fatal
    assert not reactor.triggers  # no exit scheduled
    assert list(gateway.endpoints) == ["10.0.0.7:5941"]
    bring_up(gateway, "10.0.0.7:5941")
    ready, why = gateway.readiness()
    assert not ready
    assert why == [
        "connect tls://dmz.example:5941: host dmz.example does not resolve: Name or service not known"
        " (retrying every 5 s)"
    ]
    assert sum(line.startswith("warn") for line in logged) == 1

    resolver.answers["dmz.example"] = ["10.0.0.1"]
    reactor.advance(UNRESOLVED_RETRY)
    assert list(gateway.endpoints) == ["10.0.0.7:5941", "10.0.0.1:5941"]
    assert any("endpoint 10.0.0.1:5941 added" in line for line in logged)
    bring_up(gateway, "10.0.0.1:5941")
    assert gateway.readiness() == (True, [])
    assert resolver.calls["10.0.0.7"] == 1  # an IP literal is never looked up again
    reactor.advance(300.0)
    assert resolver.calls["10.0.0.7"] == 1


def test_stopping_the_connector_cancels_the_look_ups(certs: Path) -> None:
    resolver = GatewayResolver({"dmz.example": ["10.0.0.1"]})
    gateway, reactor = connector(certs, resolver, "dmz.example")
    assert len(reactor.getDelayedCalls()) == 1
    stopped = gateway.stopService()
    assert stopped.called  # nothing was connected: drained at once
    assert reactor.getDelayedCalls() == []
    reactor.advance(3600.0)
    assert resolver.calls["dmz.example"] == 1


def test_a_removed_endpoint_still_draining_is_aborted_when_the_grace_period_ends(certs: Path) -> None:
    resolver = GatewayResolver({"dmz.example": ["10.0.0.1"]})
    gateway, reactor = connector(certs, resolver, "dmz.example", links=1)
    (link,) = bring_up(gateway, "10.0.0.1:5941")
    aborted: list[str] = []
    link.mux.abort = aborted.append  # type: ignore[attr-defined]
    resolver.answers["dmz.example"] = ["10.0.0.2"]
    reactor.advance(30.0)
    assert link.went_away and len(gateway.retiring) == 1

    stopping = gateway.stopService()
    assert not stopping.called  # the retired link still has a tunnel open
    reactor.advance(5.0)  # grace period
    assert aborted == ["shutting down: grace period over"]


def test_an_address_back_while_its_old_links_still_drain_gets_new_ones(certs: Path) -> None:
    resolver = GatewayResolver({"dmz.example": ["10.0.0.1"]})
    gateway, reactor = connector(certs, resolver, "dmz.example", links=1)
    (old,) = bring_up(gateway, "10.0.0.1:5941")
    resolver.answers["dmz.example"] = ["10.0.0.2"]
    reactor.advance(30.0)
    resolver.answers["dmz.example"] = ["10.0.0.1", "10.0.0.2"]
    reactor.advance(30.0)
    (retired,) = gateway.retiring
    (fresh,) = gateway.endpoints["10.0.0.1:5941"].slots
    assert fresh is not retired and old.went_away
    assert links_up(gateway, "10.0.0.1:5941") == 0  # the draining link does not count
    assert dialled(reactor).count(("10.0.0.1", 5941)) == 2
    bring_up(gateway, "10.0.0.1:5941")
    old.transport = None
    retired.link_lost(old, 60.0, "closed after GoAway")  # type: ignore[arg-type]
    assert links_up(gateway, "10.0.0.1:5941") == 1
